"""`kdbench run`, `show` and `list` end to end, in real processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import conftest
import pytest

from kdbench.backends.base import is_installed
from kdbench.records import SCHEMA_VERSION

needs_torch = pytest.mark.skipif(not is_installed("pytorch"), reason="torch is not installed")


kdbench = conftest.run_kdbench


def tiny_spec(
    tmp_path: Path, name: str = "tiny.toml", student_epochs: int = 2, student_batch: int = 32
) -> Path:
    path = tmp_path / name
    path.write_text(
        conftest.tiny_spec(
            Path(name).stem, student_epochs=student_epochs, student_batch=student_batch
        )
    )
    return path


@needs_torch
@pytest.mark.torch
@pytest.mark.slow
def test_run_writes_records_and_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = kdbench(
        "run", str(tiny_spec(tmp_path)), "--backend", "pytorch", "--seeds", "2", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for seed, line in enumerate(lines):
        rec = json.loads(line)
        assert rec["status"] == "ok" and rec["seed"] == seed and rec["backend"] == "pytorch"
        assert rec["schema_version"] == SCHEMA_VERSION == 2 and len(rec["spec"]["hash"]) == 16
        assert rec["framework"] == "torch" and rec["device"] == "cpu"
        for key in ("precision", "compile_mode", "threads", "teacher_batch_size", "seed"):
            assert key in rec["settings"] or key in rec
        m = rec["metrics"]
        assert m["gain"] == pytest.approx(m["distilled_acc"] - m["scratch_acc"])
        assert 0.0 <= m["agreement"] <= 1.0 and m["teacher_acc"] > 0.5
        for phase in ("teacher", "scratch", "distill"):
            p = rec["phases"][phase]
            assert p["steps"] == len(p["step_times_s"]) and p["samples"] == p["steps"] * 32
            assert len(p["loss_epochs"]) == 2 and p["loss_step0"] > 0
            assert p["warmup_steps"] == 2 and p["steady_steps"] == p["steps"] - 2
            assert p["throughput_samples_per_s"] == pytest.approx(32 / p["step_time_median_s"])
        assert rec["host"]["git_commit"] is None or len(rec["host"]["git_commit"]) == 40
    # Each seed draws its own split, weights and batches.
    recs = [json.loads(line) for line in lines]
    assert recs[0]["phases"]["scratch"]["loss_step0"] != recs[1]["phases"]["scratch"]["loss_step0"]
    assert "pytorch" in proc.stdout and "distilled acc %" in proc.stdout
    assert (out / "run.json").is_file() and (out / "specs" / "tiny.toml").is_file()

    shown = kdbench("show", str(out))
    assert shown.returncode == 0 and "pytorch" in shown.stdout and "2/2" in shown.stdout

    again = kdbench("run", str(tiny_spec(tmp_path)), "--backend", "pytorch", "--out", str(out))
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert len((out / "results.jsonl").read_text().splitlines()) == 2  # nothing lost


@needs_torch
@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_a_failing_cell_becomes_a_record_and_the_run_goes_on(tmp_path: Path) -> None:
    good = tiny_spec(tmp_path, "good.toml")
    bad = tiny_spec(tmp_path, "bad.toml")
    # A mistake only the cell can find (the run checks data, batch sizes and
    # warm-up before any cell): a GPU asked for on a machine without one.
    bad.write_text(bad.read_text().replace("[measure]\n", '[measure]\ndevice = "gpu"\n'))
    out = tmp_path / "run"
    proc = kdbench("run", str(bad), str(good), "--backend", "pytorch", "--out", str(out))
    assert proc.returncode == 1
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in recs] == ["failed", "ok"]
    assert "device 'gpu' was asked for but torch sees no CUDA device" in recs[0]["error"]
    assert "failed" in proc.stdout


@needs_torch
@pytest.mark.torch
@pytest.mark.slow
def test_a_cell_past_its_time_limit_is_stopped(tmp_path: Path) -> None:
    out = tmp_path / "run"
    spec = tiny_spec(tmp_path, student_epochs=2000)
    proc = kdbench(
        "run", str(spec), "--backend", "pytorch", "--cell-timeout", "4", "--out", str(out)
    )
    assert proc.returncode == 1
    rec = json.loads((out / "results.jsonl").read_text())
    assert rec["status"] == "timeout" and "time limit of 4 s" in rec["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "--backend", "mxnet"],
            "unknown backend 'mxnet'; allowed: pytorch, tensorflow, jax",
        ),
        (["run", "missing.toml"], "spec file missing.toml does not exist"),
        (["run", "--seeds", "0"], "--seeds must be at least 1"),
        (["show", "no-such-run"], "run folder no-such-run does not exist"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run", "--compile", "fast"], "argument --compile: invalid choice: 'fast'"),
        # the hint names the verb's own help, not "kdbench kdbench"
        (["run", "--dry-run"], "unrecognized arguments: --dry-run (see 'kdbench run --help')"),
        (["show", "--bogus", "x"], "(see 'kdbench show --help')"),
    ],
)
def test_bad_command_lines_are_one_line_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    proc = kdbench(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdbench: error: ") and message in lines[0]
    assert not (tmp_path / "results").exists()  # nothing started


def test_a_backend_that_is_not_installed_is_a_one_line_error(
    monkeypatch, capsys, tmp_path: Path
) -> None:
    import kdbench.backends.registry
    from kdbench.commands import main

    monkeypatch.setattr(kdbench.backends.registry, "is_installed", lambda name: name != "jax")
    # the quick spec: were the check ever to let this through, it runs seconds, not a matrix
    assert main(["run", "quick", "--backend", "pytorch,jax", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "kdbench: error: backend 'jax' is not installed here; "
        "install it with pip install 'kdbench[jax]'"
    )


def test_list_names_everything() -> None:
    proc = kdbench("list")
    assert proc.returncode == 0
    for word in (
        "mnist5k",
        "digits",
        "cifar100",
        "cnn-small",
        "mlp-64",
        "soft",
        "hard",
        "pytorch",
        "jax",
    ):
        assert word in proc.stdout
    executors = proc.stdout.split("executors")[1].splitlines()[1:4]
    assert [line.split()[0] for line in executors] == ["local", "ray", "slurm"]
