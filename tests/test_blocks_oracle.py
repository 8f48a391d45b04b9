"""The float64 oracle of batch norm, residual blocks, explicit padding and
global average pooling, checked against central finite differences and
against the running-statistics rule written out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from blocks_checks import block_nets, data, trained_weights
from oracles import backward, blocks, network

from kdbench.architectures import BatchNorm, Conv2D

NETS = block_nets()


@pytest.mark.parametrize("name", sorted(NETS))
def test_training_gradients_match_finite_differences(name: str) -> None:
    arch = NETS[name]
    w = {k: v.astype(np.float64) for k, v in trained_weights(arch).items()}
    x, _ = data(arch, n=6)
    probe = np.random.default_rng(1).normal(size=(6, arch.classes))

    def objective(weights: dict) -> float:
        return float((backward.forward_trace(arch, weights, x)[-1] * probe).sum())

    grads = backward.backward(arch, w, x, probe)
    rng = np.random.default_rng(2)
    for pname in arch.param_shapes():
        flat = w[pname].reshape(-1)
        for i in rng.choice(flat.size, size=min(3, flat.size), replace=False):
            bumped = {k: v.copy() for k, v in w.items()}
            eps = 1e-6
            bumped[pname].reshape(-1)[i] += eps
            up = objective(bumped)
            bumped[pname].reshape(-1)[i] -= 2 * eps
            numeric = (up - objective(bumped)) / (2 * eps)
            analytic = grads[pname].reshape(-1)[i]
            assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-7), f"{name} {pname}[{i}]"


def test_running_statistics_follow_pytorchs_rule() -> None:
    rng = np.random.default_rng(0)
    h = rng.normal(2.0, 3.0, size=(5, 4, 4, 3))
    layer = BatchNorm()
    w = {
        "0.scale": np.ones(3),
        "0.shift": np.zeros(3),
        "0.mean": np.full(3, 0.5),
        "0.var": np.full(3, 2.0),
    }
    state: dict = {}
    out = blocks.run([layer], w, h, train=True, state=state)[-1]
    flat = h.reshape(-1, 3)
    np.testing.assert_allclose(state["0.mean"], 0.9 * 0.5 + 0.1 * flat.mean(0))
    np.testing.assert_allclose(state["0.var"], 0.9 * 2.0 + 0.1 * flat.var(0, ddof=1))
    # Normalised with the biased variance: zero mean, unit (biased) variance.
    np.testing.assert_allclose(out.reshape(-1, 3).var(0), 1.0, rtol=1e-4)
    inference = blocks.run([layer], w, h, train=False)[-1]
    np.testing.assert_allclose(inference, (h - 0.5) / np.sqrt(2.0 + 1e-5))


def test_explicit_padding_is_symmetric_at_stride_two() -> None:
    """The trap: on an even input, stride 2 with one zero per side is not
    TensorFlow's 'SAME' (no zero before, one after); the outputs differ."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 3))
    k = rng.normal(size=(3, 3, 3, 4))
    layer = Conv2D(filters=4, kernel=3, stride=2, padding=1, bias=False)
    ours = network.conv2d(x, k, 0.0, layer.stride, layer.pad)
    xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # TF 'SAME' at stride 2, even input
    tf_same = network.conv2d(xp, k, 0.0, 2, 0)
    assert ours.shape == tf_same.shape == (2, 4, 4, 4)
    assert np.abs(ours - tf_same).max() > 0.1
    xs = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    np.testing.assert_allclose(ours[:, 1, 2], np.einsum("nijc,ijco->no", xs[:, 2:5, 4:7], k))
