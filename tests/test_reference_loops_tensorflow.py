"""The TensorFlow reference loop (benchmarks/reference/tensorflow.py) computes kdbench's step.

A reference that computed a cheaper or different step would make the
TensorFlow ratio a lie, so the ratio tool checks the losses of each pair, and
these tests pin that it does: same weights, batches and learning rates give
the same losses as kdbench's TensorFlow backend, and a reference that drifts
(its distillation term scaled by T instead of T^2) does not pass.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "reference"

pytest.importorskip("tensorflow", reason="tensorflow is not installed")


def load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"reference_under_test_tf_{name}", REFERENCE / f"{name}.py"
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

    backend = get_backend("tensorflow")
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


def test_the_tensorflow_reference_takes_kdbenchs_steps(cell) -> None:
    module = load("tensorflow")
    ours, theirs = kdbench_losses(cell, 20), reference_losses(module, cell, 20)
    assert theirs.dtype == np.float64 and theirs.shape == (20,)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5)
    assert ours[-1] < ours[0]  # it learns: the steps are real updates


def test_a_reference_with_the_temperature_not_squared_is_caught(cell, monkeypatch) -> None:
    """The KL term scaled by T, not T^2: still runs, different step."""
    module = load("tensorflow")
    tf = module.tf

    def unsquared(loss, logits, labels, teacher):
        t = loss.temperature
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        log_s, log_t = tf.nn.log_softmax(logits / t), tf.nn.log_softmax(teacher / t)
        kl = tf.reduce_mean(tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=-1))
        return loss.alpha * t * kl + (1.0 - loss.alpha) * ce

    monkeypatch.setattr(module, "loss_of", unsquared)
    ours, theirs = kdbench_losses(cell, 5), reference_losses(module, cell, 5)
    assert not np.allclose(theirs, ours, rtol=1e-5)


@pytest.mark.parametrize("phase", ["distill", "teacher"])
def test_the_ratio_tool_pairs_tensorflow_blocks_and_checks_their_losses(phase: str) -> None:
    ratio = load("ratio")
    figures = ratio.measure("tensorflow", "mnist5k", repeats=1, steps=54, threads=1, phase=phase)
    assert figures["phase"] == phase
    assert figures["pairs"] == 1 and figures["steps_per_block"] == 54
    assert figures["loss_max_rel_diff"] < 1e-5
    assert 0.2 < figures["ratio"] < 5.0  # a throughput ratio, not a placeholder
    assert figures["compile_mode"] == "tf.function"
