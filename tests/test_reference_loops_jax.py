"""The JAX reference loop (benchmarks/reference/jax.py) computes kdbench's step.

A reference that computed a cheaper step would make every ratio a lie, so
the ratio tool checks the losses of each pair, and these tests pin that it
does: same weights, batches and learning rates give the same losses (with
every optimizer variant kdbench's JAX backend supports), and a reference
that drifts (a flatten order or a temperature scaling wrong) does not pass.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax", reason="jax is not installed")
pytest.importorskip("flax.nnx", reason="flax is not installed")

REFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "reference"


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


def kdbench_losses(cell, steps: int, optimizer: dict | None = None) -> np.ndarray:
    from kdbench.backends.base import Settings, get_backend
    from kdbench.plan import BatchPlan, learning_rates

    backend = get_backend("jax")
    backend.setup(Settings(threads=1))
    data = backend.put_dataset(cell.data.x_train, cell.data.y_train)
    teacher = backend.build(cell.loaded.teacher_arch, cell.teacher_weights, seed=cell.teacher_seed)
    student = backend.build(cell.loaded.student_arch, cell.student_weights, seed=cell.student_seed)
    state = backend.init_train(student, optimizer or cell.student_optimizer, cell.loss, teacher)
    plan = BatchPlan(cell.student_plan.indices[:1, :steps])
    lrs = learning_rates(cell.spec.student, cell.student_plan)[:steps]
    losses = []
    for idx, lr in zip(plan.indices[0], lrs, strict=True):
        state, loss = backend.train_step(state, data, idx, float(lr))
        losses.append(float(backend.to_numpy(loss)))
    return np.array(losses)


def reference_losses(module, cell, steps: int, optimizer: dict | None = None) -> np.ndarray:
    from kdbench.plan import learning_rates

    run = module.setup(
        cell.data.x_train, cell.data.y_train,
        cell.loaded.teacher_arch, cell.teacher_weights,
        cell.loaded.student_arch, cell.student_weights,
        optimizer or cell.student_optimizer, cell.loss, seed=cell.student_seed,
    )  # fmt: skip
    lrs = learning_rates(cell.spec.student, cell.student_plan)[:steps]
    return module.train(run, cell.student_plan.indices[0, :steps], lrs)


def test_the_jax_reference_takes_kdbenchs_steps(cell) -> None:
    ours, theirs = kdbench_losses(cell, 20), reference_losses(load("jax"), cell, 20)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5)
    assert ours[-1] < ours[0]  # it learns: the steps are real updates


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "adam", "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 1e-2},
        {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-3},
        {"name": "sgd", "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    ],
    ids=["adam-l2", "sgd-nesterov-l2", "sgd-plain"],
)
def test_the_reference_optimizers_are_kdbenchs(cell, optimizer: dict) -> None:
    """PyTorch's coupled L2, momentum buffer and Adam eps, as kdbench's optim.py has them."""
    ours = kdbench_losses(cell, 6, optimizer)
    theirs = reference_losses(load("jax"), cell, 6, optimizer)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5)


def chw_flatten(x):
    """The mistake a port from PyTorch makes: flatten NCHW order on NHWC data."""
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def loss_with_t_unsquared(loss, logits, labels, teacher):
    """Hinton's loss without the T^2 on the distillation term."""
    import jax
    import optax

    t = loss.temperature
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    kl = optax.losses.kl_divergence_with_log_targets(
        jax.nn.log_softmax(logits / t), jax.nn.log_softmax(teacher / t)
    ).mean()
    return loss.alpha * t * kl + (1.0 - loss.alpha) * ce


@pytest.mark.parametrize(
    ("name", "wrong"),
    [("flatten", chw_flatten), ("loss_of", loss_with_t_unsquared)],
    ids=["teacher-flatten-chw", "temperature-unsquared"],
)
def test_a_reference_that_drifts_is_caught(cell, monkeypatch, name: str, wrong) -> None:
    """Still runs, different step: the teacher's flatten (its conv output has
    64 channels; the MLP student's 1-channel input flattens alike either way)
    or the loss's T scaling."""
    module = load("jax")
    monkeypatch.setattr(module, name, wrong)
    ours, theirs = kdbench_losses(cell, 5), reference_losses(module, cell, 5)
    assert not np.allclose(theirs, ours, rtol=1e-5)


def test_dropout_in_the_trained_net_is_refused(cell) -> None:
    """Its masks could not be kdbench's, so the losses could not be checked."""
    from kdbench.architectures import Architecture, Dropout

    arch = cell.loaded.student_arch
    layers = (*arch.layers[:-1], Dropout(rate=0.5), arch.layers[-1])
    with_dropout = Architecture(arch.name, layers, arch.input_shape, arch.classes)
    with pytest.raises(ValueError, match="dropout"):
        load("jax").network(with_dropout, cell.student_weights, train=True)


@pytest.mark.parametrize("phase", ["distill", "teacher"])
def test_the_ratio_tool_pairs_jax_blocks_and_checks_their_losses(phase: str) -> None:
    ratio = load("ratio")
    figures = ratio.measure("jax", "mnist5k", repeats=1, steps=54, threads=1, phase=phase)
    assert figures["phase"] == phase
    assert figures["pairs"] == 1 and figures["steps_per_block"] == 54
    assert figures["loss_max_rel_diff"] < 1e-5
    assert 0.2 < figures["ratio"] < 5.0  # a throughput ratio, not a placeholder
    assert figures["compile_mode"] == "jax.jit"
