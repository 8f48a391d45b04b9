"""The float64 numpy oracle, and the PyTorch losses held to it.

The TensorFlow and JAX losses are held to the same oracle through the parity
suite (test_parity.py), which runs every backend's real loss path.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from oracles.losses import cross_entropy, distill_loss, distill_loss_grad, kl_soft
from scipy.special import log_softmax as sp_log_softmax
from scipy.special import rel_entr

from kdbench.backends.base import is_installed

METHODS = ("none", "soft", "hard")


def logits_strategy(batch: int, classes: int, bound: float) -> st.SearchStrategy[np.ndarray]:
    return arrays(
        np.float64,
        (batch, classes),
        elements=st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=32),
    )


@st.composite
def loss_inputs(draw: st.DrawFn, bound: float = 50.0):
    batch = draw(st.integers(1, 8))
    classes = draw(st.integers(2, 12))
    s = draw(logits_strategy(batch, classes, bound))
    t = draw(logits_strategy(batch, classes, bound))
    y = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch)))
    temperature = draw(st.floats(0.5, 20.0))
    alpha = draw(st.floats(0.0, 1.0))
    return s, t, y, temperature, alpha


# --- the oracle against independent formulas (scipy) -------------------------


@settings(max_examples=200, deadline=None)
@given(loss_inputs())
def test_oracle_matches_scipy(inputs) -> None:
    s, t, y, temperature, alpha = inputs
    ce = -np.mean(sp_log_softmax(s, axis=-1)[np.arange(len(y)), y])
    p_t = np.exp(sp_log_softmax(t / temperature, axis=-1))
    p_s = np.exp(sp_log_softmax(s / temperature, axis=-1))
    kl = np.mean(np.sum(rel_entr(p_t, p_s), axis=-1))
    assert cross_entropy(s, y) == pytest.approx(ce, rel=1e-9, abs=1e-12)
    if np.all(p_s > 0):  # scipy's rel_entr needs the probabilities themselves
        assert kl_soft(s, t, temperature) == pytest.approx(kl, rel=1e-6, abs=1e-9)
    expected = alpha * temperature**2 * kl_soft(s, t, temperature) + (1 - alpha) * ce
    assert distill_loss("soft", s, y, t, temperature, alpha) == pytest.approx(expected, rel=1e-12)


def test_kl_properties() -> None:
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    assert kl_soft(s, s, 3.0) == pytest.approx(0.0, abs=1e-15)
    assert kl_soft(s, t, 3.0) > 0
    # alpha = 1 keeps the distillation term alone, scaled by T^2.
    y = np.zeros(5, dtype=int)
    assert distill_loss("soft", s, y, t, 3.0, 1.0) == pytest.approx(9.0 * kl_soft(s, t, 3.0))
    assert distill_loss("soft", s, y, t, 3.0, 0.0) == pytest.approx(cross_entropy(s, y))
    assert distill_loss("hard", s, y, t, 3.0, 1.0) == pytest.approx(cross_entropy(s, t.argmax(-1)))


def test_extreme_logits_stay_finite() -> None:
    s = np.array([[1e4, -1e4, 0.0], [-3e38, 3e38, 1.0]])
    t = np.array([[-1e4, 1e4, 0.0], [3e38, -3e38, 0.0]])
    y = np.array([1, 0])
    for method in METHODS:
        assert np.isfinite(distill_loss(method, s, y, t, 2.0, 0.5))


@settings(max_examples=50, deadline=None)
@given(loss_inputs(bound=5.0), st.sampled_from(METHODS))
def test_analytic_gradient_matches_finite_differences(inputs, method: str) -> None:
    s, t, y, temperature, alpha = inputs
    grad = distill_loss_grad(method, s, y, t, temperature, alpha)
    h = 1e-6
    numeric = np.zeros_like(s)
    for index in np.ndindex(s.shape):
        up, down = s.copy(), s.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (
            distill_loss(method, up, y, t, temperature, alpha)
            - distill_loss(method, down, y, t, temperature, alpha)
        ) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-7)


# --- the PyTorch losses against the oracle ------------------------------------

# Only these tests need torch: the oracle's own tests above run everywhere.
needs_torch = pytest.mark.skipif(not is_installed("pytorch"), reason="torch is not installed")
if is_installed("pytorch"):
    import torch


def torch_loss(method, s, t, y, temperature, alpha, dtype):
    from kdbench.backends.base import LossConfig
    from kdbench.backends.pytorch.losses import distill_loss as torch_distill

    st_ = torch.tensor(s, dtype=dtype, requires_grad=True)
    tt = torch.tensor(t, dtype=dtype)
    value = torch_distill(LossConfig(method, temperature, alpha), st_, torch.tensor(y), tt)
    value.backward()
    return float(value.detach()), st_.grad.numpy().astype(np.float64)


@needs_torch
@pytest.mark.torch
@settings(max_examples=150, deadline=None)
@given(loss_inputs(bound=1e4), st.sampled_from(METHODS))
def test_torch_loss_matches_oracle_in_float64(inputs, method: str) -> None:
    """The formula is the same: float64 in, agreement to 1e-6 relative
    (plus a 1e-12 floor for losses that are exactly zero)."""
    s, t, y, temperature, alpha = inputs
    value, grad = torch_loss(method, s, t, y, temperature, alpha, torch.float64)
    expected = distill_loss(method, s, y, t, temperature, alpha)
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-12)
    np.testing.assert_allclose(
        grad, distill_loss_grad(method, s, y, t, temperature, alpha), rtol=1e-6, atol=1e-12
    )


@needs_torch
@pytest.mark.torch
@settings(max_examples=150, deadline=None)
@given(loss_inputs(bound=30.0), st.sampled_from(METHODS))
def test_torch_loss_matches_oracle_in_float32(inputs, method: str) -> None:
    """What the benchmark runs: float32 logits. The oracle gets the same
    float32 values; agreement within 1e-6 relative of the loss plus 1e-6
    absolute (float32 rounds at about 6e-8 per operation, and a KL near zero
    is a difference of nearly equal terms)."""
    s, t, y, temperature, alpha = inputs
    s32, t32 = s.astype(np.float32), t.astype(np.float32)
    value, _ = torch_loss(method, s32, t32, y, temperature, alpha, torch.float32)
    expected = distill_loss(method, s32, y, t32, temperature, alpha)
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-6 * max(1.0, temperature**2))


@needs_torch
@pytest.mark.torch
@pytest.mark.parametrize("method", METHODS)
def test_torch_loss_with_extreme_logits(method: str) -> None:
    s = np.array([[1e30, -1e30, 0.0], [-3e37, 3e37, 1.0], [0.0, 0.0, 0.0]])
    t = np.array([[-1e30, 1e30, 0.0], [3e37, -3e37, 0.0], [1e-30, 0.0, 0.0]])
    y = np.array([1, 0, 2])
    for dtype in (torch.float32, torch.float64):
        value, grad = torch_loss(method, s, t, y, 2.0, 0.5, dtype)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
        assert value == pytest.approx(distill_loss(method, s, y, t, 2.0, 0.5), rel=1e-6)
