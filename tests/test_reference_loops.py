"""The expert-written reference loops (benchmarks/reference/) compute kdbench's step.

A reference that computed a cheaper step would make every ratio a lie, so
the ratio tool checks the losses of each pair, and these tests pin that it
does: same weights, batches and learning rates give the same losses, and a
reference that drifts (its flatten order left unpermuted) does not pass.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "reference"

pytest.importorskip("torch", reason="torch is not installed")


def load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"reference_under_test_{name}", REFERENCE / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cell():
    from kdbench.harness.prepare import prepare_cell
    from kdbench.spec import load_spec

    return prepare_cell(load_spec("mnist5k"), seed=0)


def kdbench_losses(cell, steps: int) -> np.ndarray:
    from kdbench.backends.base import Settings, get_backend
    from kdbench.plan import BatchPlan, learning_rates

    backend = get_backend("pytorch")
    backend.setup(Settings(threads=1))
    data = backend.put_dataset(cell.data.x_train, cell.data.y_train)
    teacher = backend.build(cell.loaded.teacher_arch, cell.teacher_weights, seed=cell.teacher_seed)
    student = backend.build(cell.loaded.student_arch, cell.student_weights, seed=cell.student_seed)
    state = backend.init_train(student, cell.student_optimizer, cell.loss, teacher)
    plan = BatchPlan(cell.student_plan.indices[:1, :steps])
    lrs = learning_rates(cell.spec.student, cell.student_plan)[:steps]
    losses = []
    for idx, lr in zip(plan.indices[0], lrs, strict=True):
        state, loss = backend.train_step(state, data, idx, float(lr))
        losses.append(float(backend.to_numpy(loss)))
    return np.array(losses)


def reference_losses(module, cell, steps: int) -> np.ndarray:
    from kdbench.plan import learning_rates

    run = module.setup(
        cell.data.x_train, cell.data.y_train,
        cell.loaded.teacher_arch, cell.teacher_weights,
        cell.loaded.student_arch, cell.student_weights,
        cell.student_optimizer, cell.loss, seed=cell.student_seed,
    )  # fmt: skip
    lrs = learning_rates(cell.spec.student, cell.student_plan)[:steps]
    return module.train(run, cell.student_plan.indices[0, :steps], lrs)


def test_the_pytorch_reference_takes_kdbenchs_steps(cell) -> None:
    ours, theirs = kdbench_losses(cell, 20), reference_losses(load("pytorch"), cell, 20)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5)
    assert ours[-1] < ours[0]  # it learns: the steps are real updates


def test_a_reference_with_the_flatten_order_wrong_is_caught(cell, monkeypatch) -> None:
    """The teacher's first dense rows unpermuted: still runs, different step."""
    module = load("pytorch")
    real = module.network

    def unpermuted(arch, weights):
        if not any(layer.type == "conv2d" for layer in arch.layers):
            return real(arch, weights)
        net = real(arch, weights)
        for index, layer in enumerate(arch.layers):
            if layer.type == "dense":
                rows = weights[f"{index}.kernel"]
                net[index].weight.data.copy_(module.torch.from_numpy(np.ascontiguousarray(rows.T)))
                break
        return net

    monkeypatch.setattr(module, "network", unpermuted)
    ours, theirs = kdbench_losses(cell, 5), reference_losses(module, cell, 5)
    assert not np.allclose(theirs, ours, rtol=1e-5)


@pytest.mark.parametrize("phase", ["distill", "teacher"])
def test_the_ratio_tool_pairs_blocks_and_checks_their_losses(phase: str) -> None:
    ratio = load("ratio")
    figures = ratio.measure("pytorch", "mnist5k", repeats=1, steps=54, threads=1, phase=phase)
    assert figures["phase"] == phase
    assert figures["pairs"] == 1 and figures["steps_per_block"] == 54
    assert figures["loss_max_rel_diff"] < 1e-5
    assert 0.2 < figures["ratio"] < 5.0  # a throughput ratio, not a placeholder
    assert figures["memory_format"] == "channels_last"


def test_the_ratio_script_imports_the_frameworks_not_its_namesakes(tmp_path: Path) -> None:
    """Run as a script, benchmarks/reference/ heads sys.path, where jax.py would shadow jax."""
    import subprocess

    pytest.importorskip("jax", reason="jax is not installed")
    proc = subprocess.run(
        [sys.executable, str(REFERENCE / "ratio.py"), "--backends", "jax", "--phases", "distill",
         "--specs", "no-such-spec", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1  # a failed child fails the command
    (result,) = json.loads((tmp_path / "r.json").read_text())
    assert "no-such-spec" in result["error"], result[
        "error"
    ]  # got as far as the spec: jax imported
