"""Matrices, resuming, interruption, the teacher cache and deterministic mode."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import backend_params, run_kdbench

from kdbench.backends.base import is_installed
from kdbench.errors import KdbenchError
from kdbench.runner.matrix import builtin_matrices, load_matrix

needs_torch = pytest.mark.skipif(not is_installed("pytorch"), reason="torch is not installed")

MATRIX = """
name = "m"
specs = ["quick"]
seeds = {seeds}
backends = ["pytorch"]
[axes]
{axes}
"""


def write_matrix(tmp_path: Path, seeds: int = 1, axes: str = "") -> Path:
    path = tmp_path / "m.toml"
    path.write_text(MATRIX.format(seeds=seeds, axes=axes))
    return path


kdbench = run_kdbench


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_builtin_matrices_expand() -> None:
    assert {"quick", "default", "full", "compile"} <= set(builtin_matrices())
    assert len(load_matrix("default").expand()) == 1
    modes = [combo.runtime["compile"] for _, combo in load_matrix("compile").expand()]
    assert modes == ["eager", "default", "compiled"]
    full = load_matrix("full").expand()
    assert len(full) == 2 * 2 * 2 * 2  # specs x compile x batch sizes x temperatures
    hashes = {
        loaded.content_hash for loaded, combo in full if combo.runtime["compile"] == "default"
    }
    assert len(hashes) == 2 * 2 * 2  # every spec-changing point has its own hash


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ('colour = ["red"]', "unknown axis 'colour'; allowed: compile, precision"),
        (
            'compile = ["fast"]',
            "axis 'compile': 'fast' is not allowed; allowed: default, eager, compiled",
        ),
        ('threads = ["two"]', "axis 'threads': 'two' is not allowed; allowed: int"),
        (
            '"distill.temperature" = [-1.0]',
            "(spec quick, distill.temperature=-1.0): distill.temperature: Input should be greater than 0",
        ),
        ('"student.optimiser" = [1]', "student.optimiser: unknown key; did you mean 'optimizer'?"),
    ],
)
def test_bad_matrices_are_one_line_errors(tmp_path: Path, axes: str, message: str) -> None:
    path = write_matrix(tmp_path, axes=axes)
    with pytest.raises(KdbenchError) as info:
        load_matrix(str(path)).expand()
    assert str(path) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_matrix_name() -> None:
    with pytest.raises(KdbenchError, match="no matrix named 'nope'; built-in matrices: "):
        load_matrix("nope")


@needs_torch
@pytest.mark.torch
@pytest.mark.slow
def test_interrupt_then_resume_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kdbench",
            "run",
            "--matrix",
            str(write_matrix(tmp_path, seeds=3)),
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    results = out / "results.jsonl"
    deadline = time.time() + 240
    while not (results.exists() and results.read_text().count("\n") >= 1):
        assert time.time() < deadline and proc.poll() is None, "the first cell never finished"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "continue with: kdbench run --resume" in err
    first = records(out)
    assert 1 <= len(first) < 3 and all(r["status"] == "ok" for r in first)
    # No cell process of this run is left behind.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out) not in ps

    resumed = kdbench("run", "--resume", str(out), timeout=400)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{3 - len(first)} of 3 cells to run" in resumed.stdout
    final = records(out)
    ids = [r["cell_id"] for r in final]
    assert sorted(ids) == ["quick/pytorch/seed0", "quick/pytorch/seed1", "quick/pytorch/seed2"]
    assert final[: len(first)] == first  # nothing rewritten


@needs_torch
@pytest.mark.torch
@pytest.mark.slow
def test_teacher_cache_trains_each_teacher_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    path = write_matrix(tmp_path, axes='"distill.temperature" = [2.0, 8.0]')
    proc = kdbench("run", "--matrix", str(path), "--out", str(out), timeout=400)
    assert proc.returncode == 0, proc.stderr
    first, second = records(out)
    assert first["metrics"]["teacher_from_cache"] is False
    assert second["metrics"]["teacher_from_cache"] is True
    assert second["phases"]["teacher"]["from_cache"] is True
    assert second["metrics"]["teacher_acc"] == first["metrics"]["teacher_acc"]
    assert first["spec"]["hash"] != second["spec"]["hash"]
    assert first["label"] == "distill.temperature=2.0" and second["settings"]["temperature"] == 8.0
    assert len(list((out / "teachers").glob("*.npz"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", backend_params())
def test_deterministic_mode_repeats_a_cell_exactly(tmp_path: Path, name: str) -> None:
    results = []
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"
        proc = kdbench(
            "run", "quick", "--backend", name, "--deterministic", "--out", str(out), timeout=400
        )
        assert proc.returncode == 0, proc.stderr
        (rec,) = records(out)
        assert rec["settings"]["deterministic"] is True and rec["environment"]["deterministic"]
        results.append(rec)
    a, b = results
    for key in ("teacher_acc", "scratch_acc", "distilled_acc", "agreement"):
        assert a["metrics"][key] == b["metrics"][key], key
    assert a["phases"]["distill"]["loss_epochs"] == b["phases"]["distill"]["loss_epochs"]
