"""Where the teacher comes from: trained by each backend, trained once by one
backend and loaded by all (teacher.shared_from), or a checkpoint file
(kdbench export-teacher, teacher.checkpoint)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_kdbench, tiny_spec

from kdbench.architectures import resolve
from kdbench.backends.base import is_installed
from kdbench.checkpoint import load_teacher, save_teacher
from kdbench.errors import KdbenchError
from kdbench.initial_weights import init_weights
from kdbench.plan import rng_for
from kdbench.spec import load_spec

needs_torch_and_jax = pytest.mark.skipif(
    not (is_installed("pytorch") and is_installed("jax")), reason="needs pytorch and jax"
)


def _records(run) -> dict[str, dict]:
    lines = (run / "results.jsonl").read_text().splitlines()
    return {r["backend"]: r for r in map(json.loads, lines)}


def _spec(tmp_path, name: str, teacher_line: str) -> str:
    text = tiny_spec(name).replace("[teacher]\n", f"[teacher]\n{teacher_line}\n")
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.torch
@pytest.mark.jax
@needs_torch_and_jax
def test_a_shared_teacher_gives_every_backend_the_same_distillation_start(tmp_path) -> None:
    spec = _spec(tmp_path, "shared", 'shared_from = "jax"')
    run = tmp_path / "run"
    done = run_kdbench("run", spec, "--backend", "pytorch,jax", "--out", str(run))
    assert done.returncode == 0, done.stderr
    records = _records(run)
    assert {r["status"] for r in records.values()} == {"ok"}
    assert {r["settings"]["teacher_source"] for r in records.values()} == {"shared:jax"}
    assert records["pytorch"]["phases"]["teacher"]["from_cache"] is True
    assert records["pytorch"]["metrics"]["teacher_acc"] == records["jax"]["metrics"]["teacher_acc"]
    # measure.best_epoch off: nothing evaluated between epochs
    assert records["jax"]["metrics"].get("distilled_best_epoch") is None
    assert records["jax"]["phases"]["distill"].get("val_acc_epochs") is None
    step0 = [records[b]["phases"]["distill"]["loss_step0"] for b in ("pytorch", "jax")]
    assert abs(step0[0] - step0[1]) <= 1e-5 * abs(step0[1])

    # The same teacher, exported and loaded from a file by another backend.
    out = tmp_path / "teachers" / "t.safetensors"
    done = run_kdbench(
        "export-teacher", spec, "--backend", "jax", "--run", str(run), "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    file_spec = _spec(tmp_path, "from-file", 'checkpoint = "teachers/t.safetensors"')
    run2 = tmp_path / "run2"
    done = run_kdbench("run", file_spec, "--backend", "pytorch", "--out", str(run2))
    assert done.returncode == 0, done.stderr
    record = _records(run2)["pytorch"]
    assert record["settings"]["teacher_source"].startswith("file:t.safetensors@")
    assert record["metrics"]["teacher_acc"] == records["jax"]["metrics"]["teacher_acc"]
    assert record["phases"]["distill"]["loss_step0"] == pytest.approx(step0[0], rel=1e-5)
    assert (run2 / "specs" / "teachers" / "t.safetensors").is_file()  # the run carries it
    assert "was trained at seed" not in done.stdout + done.stderr
    # Seed 1 splits the data otherwise: the seed-0 teacher may have trained on
    # seed 1's test images, and the run says so.
    done = run_kdbench(
        "run", file_spec, "--backend", "pytorch", "--seeds", "2", "--first-seed", "1",
        "--out", str(tmp_path / "run3"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = " ".join((done.stdout + done.stderr).split())
    assert "t.safetensors was trained at seed 0, on that seed's split; seed 1" in said


@pytest.mark.torch
@needs_torch_and_jax
def test_shared_from_a_backend_outside_the_run_is_refused(tmp_path) -> None:
    spec = _spec(tmp_path, "shared", 'shared_from = "jax"')
    done = run_kdbench("run", spec, "--backend", "pytorch", "--out", str(tmp_path / "r"))
    assert done.returncode == 2
    assert "this run has no jax cells" in done.stderr and "Traceback" not in done.stderr


def test_checkpoints_keep_weights_and_refuse_another_net(tmp_path) -> None:
    arch = resolve("resnet8", None, (32, 32, 3), 10)
    weights = init_weights(arch, rng_for(0, "t"))
    weights["1.mean"] = np.arange(16, dtype=np.float32)  # running statistics travel too
    path = tmp_path / "r8.safetensors"
    save_teacher(path, weights, arch, {"backend": "pytorch", "seed": 0})
    loaded, meta = load_teacher(path, arch)
    assert meta["backend"] == "pytorch" and meta["arch"] == "resnet8"
    for name, value in weights.items():
        np.testing.assert_array_equal(loaded[name], value)
    with pytest.raises(KdbenchError, match="holds a resnet8 .* spec's teacher is a resnet14"):
        load_teacher(path, resolve("resnet14", None, (32, 32, 3), 10))
    with pytest.raises(KdbenchError, match="for input \\[32, 32, 3\\] and 10 classes"):
        load_teacher(path, resolve("resnet8", None, (32, 32, 3), 100))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(KdbenchError, match="not a safetensors teacher checkpoint"):
        load_teacher(tmp_path / "junk.safetensors", arch)


@pytest.mark.parametrize(
    ("teacher_line", "message"),
    [
        ('checkpoint = "missing.safetensors"', "teacher.checkpoint: no file"),
        (
            'shared_from = "jax"\ncheckpoint = "x.safetensors"',
            "shared_from or checkpoint, not both",
        ),
        ('shared_from = "mxnet"', "shared_from"),
    ],
)
def test_bad_teacher_sources_are_refused(tmp_path, teacher_line: str, message: str) -> None:
    with pytest.raises(KdbenchError, match=message):
        load_spec(_spec(tmp_path, "bad", teacher_line))
