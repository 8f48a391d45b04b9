"""The TensorFlow reference loop (benchmarks/reference/tensorflow.py) computes kdbench's step.

A reference that computed a cheaper or different step would make the
TensorFlow ratio a lie, so the ratio tool checks the losses of each pair, and
these tests pin that it does: same weights, batches and learning rates give
the same losses as kdbench's TensorFlow backend, and a reference that drifts
(its distillation term scaled by T instead of T^2) does not pass.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference_loops import (
    assert_same_steps,
    kdbench_losses,
    load,
    mnist5k_cell,
    ratio_figures,
    reference_losses,
)

pytest.importorskip("tensorflow", reason="tensorflow is not installed")


@pytest.fixture(scope="module")
def cell():
    return mnist5k_cell()


def test_the_tensorflow_reference_takes_kdbenchs_steps(cell) -> None:
    assert_same_steps("tensorflow", cell)


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
    ours, theirs = kdbench_losses("tensorflow", cell, 5), reference_losses(module, cell, 5)
    assert not np.allclose(theirs, ours, rtol=1e-5)


@pytest.mark.parametrize("phase", ["distill", "teacher"])
def test_the_ratio_tool_pairs_tensorflow_blocks_and_checks_their_losses(phase: str) -> None:
    assert ratio_figures("tensorflow", phase)["compile_mode"] == "tf.function"
