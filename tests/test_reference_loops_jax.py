"""The JAX reference loop (benchmarks/reference/jax.py) computes kdbench's step.

A reference that computed a cheaper step would make every ratio a lie, so
the ratio tool checks the losses of each pair, and these tests pin that it
does: same weights, batches and learning rates give the same losses (with
every optimizer variant kdbench's JAX backend supports), and a reference
that drifts (a flatten order or a temperature scaling wrong) does not pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reference_loops import (
    REFERENCE,
    assert_same_steps,
    kdbench_losses,
    load,
    mnist5k_cell,
    ratio_figures,
    reference_losses,
)

pytest.importorskip("jax", reason="jax is not installed")
pytest.importorskip("flax.nnx", reason="flax is not installed")


@pytest.fixture(scope="module")
def cell():
    return mnist5k_cell()


def test_the_jax_reference_takes_kdbenchs_steps(cell) -> None:
    assert_same_steps("jax", cell)


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
    ours = kdbench_losses("jax", cell, 6, optimizer)
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
    ours, theirs = kdbench_losses("jax", cell, 5), reference_losses(module, cell, 5)
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
    assert ratio_figures("jax", phase)["compile_mode"] == "jax.jit"


def test_the_ratio_script_imports_the_frameworks_not_its_namesakes(tmp_path: Path) -> None:
    """Run as a script, benchmarks/reference/ heads sys.path, where jax.py would shadow jax."""
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
