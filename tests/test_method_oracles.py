"""The method oracle (oracles/methods.py) against central finite differences,
and against the published formulas it claims to follow, so the backends are
held to something checked."""

from __future__ import annotations

import numpy as np
import pytest
from oracles import methods as oracle
from parity_checks import parity_architectures, weights

from kdbench.backends.base import LossConfig
from kdbench.methods import connector_shapes, init_connectors, resolve_pairs

RNG = np.random.default_rng(7)
B, C = 6, 5
S = RNG.normal(size=(B, C)) * 3
T = RNG.normal(size=(B, C)) * 3
Y = RNG.integers(0, C, size=B)
FS = np.abs(RNG.normal(size=(B, 4, 3, 2)))
FT = np.abs(RNG.normal(size=(B, 4, 3, 5)))
KERNEL = RNG.normal(size=(2, 5))
BIAS = RNG.normal(size=(5,))


def numeric(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = f()
        x[i] = old - eps
        down = f()
        x[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


@pytest.mark.parametrize("term", ["ce", "kd", "hard", "tckd", "nckd"])
def test_logit_terms_match_finite_differences(term: str) -> None:
    s = S.copy()
    fns = {
        "ce": lambda: oracle.ce_term(s, Y),
        "kd": lambda: oracle.kd_term(s, T, 4.0),
        "hard": lambda: oracle.ce_term(s, np.argmax(T, axis=-1)),
        "tckd": lambda: oracle.tckd_term(s, T, Y, 4.0),
        "nckd": lambda: oracle.nckd_term(s, T, Y, 4.0),
    }
    _, analytic = fns[term]()
    assert np.allclose(analytic, numeric(lambda: fns[term]()[0], s), atol=1e-8)


def test_hint_term_matches_finite_differences() -> None:
    fs, kernel, bias = FS.copy(), KERNEL.copy(), BIAS.copy()
    _, g_f, g_k, g_b = oracle.hint_term(fs, FT, kernel, bias)
    value = lambda: oracle.hint_term(fs, FT, kernel, bias)[0]  # noqa: E731
    assert np.allclose(g_f, numeric(value, fs), atol=1e-8)
    assert np.allclose(g_k, numeric(value, kernel), atol=1e-8)
    assert np.allclose(g_b, numeric(value, bias), atol=1e-8)


def test_at_term_matches_finite_differences() -> None:
    fs = RNG.normal(size=(B, 4, 3, 2))  # signed: |f|^p's gradient carries the sign
    ft = FT
    _, g_f = oracle.at_term(fs, ft, 2.0)
    assert np.allclose(g_f, numeric(lambda: oracle.at_term(fs, ft, 2.0)[0], fs), atol=1e-8)


def test_dkd_splits_kd_as_the_paper_says() -> None:
    """DKD's identity (Zhao et al. 2022, eq. 4): KD = TCKD + (1 - p_t^gt) * NCKD per sample."""
    for b in range(B):
        s, t, y = S[b : b + 1], T[b : b + 1], Y[b : b + 1]
        kd, _ = oracle.kd_term(s, t, 4.0)
        tckd, _ = oracle.tckd_term(s, t, y, 4.0)
        nckd, _ = oracle.nckd_term(s, t, y, 4.0)
        p_t = np.exp(oracle.log_softmax(t / 4.0))[0, y[0]]
        assert kd == pytest.approx(tckd + (1 - p_t) * nckd, rel=1e-10)


def test_at_is_scale_free_and_hint_is_zero_on_a_perfect_connector() -> None:
    assert oracle.at_term(FT[..., :2] * 7.0, FT[..., :2], 2.0)[0] == pytest.approx(0.0, abs=1e-20)
    ft = FS @ KERNEL + BIAS
    assert oracle.hint_term(FS, ft, KERNEL, BIAS)[0] == pytest.approx(0.0, abs=1e-20)


@pytest.mark.parametrize(
    "method,teacher,student,pairs",
    [
        ("fitnet", "cnn-small", "cnn-tiny", [("conv2", "conv2")]),
        ("fitnet", "cnn-small", "mlp-64", [("pre_logits", "dense1")]),
        ("at", "cnn-small", "cnn-tiny", [("conv1", "conv1"), ("conv2", "conv2")]),
        ("dkd", "cnn-small", "mlp-32", []),
    ],
)
def test_whole_network_gradient_matches_finite_differences(method, teacher, student, pairs) -> None:
    """backward() with feature gradients injected is the derivative of the loss."""
    archs = parity_architectures()
    t_arch, s_arch = archs[teacher], archs[student]
    resolved = resolve_pairs(method, pairs, t_arch, s_arch)
    config = LossConfig(
        method=method,
        temperature=4.0,
        pairs=tuple((p.teacher, p.student) for p in resolved),
        weights=(("ce", 0.5), ("kd", 0.3), ("hint", 2.0), ("at", 50.0))
        if method != "dkd"
        else (("ce", 1.0), ("tckd", 1.0), ("nckd", 8.0)),
    )
    config = LossConfig(
        **{
            **config.__dict__,
            "weights": tuple((k, v) for k, v in config.weights if k in _terms(method)),
        }
    )
    w = {k: v.astype(np.float64) for k, v in weights(s_arch).items()}
    tw = weights(t_arch, "teacher", scale=2.0)
    conn = init_connectors(connector_shapes(method, resolved, t_arch, s_arch), RNG)
    conn = {k: v.astype(np.float64) + 0.1 for k, v in conn.items()}
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, *s_arch.input_shape))
    y = rng.integers(0, 10, size=3)
    _, grads = oracle.loss_and_grads(s_arch, w, x, y, config, (t_arch, tw), conn, kd_scale=0.5)
    for name in [*list(w)[-4:], *conn]:
        target = w if name in w else conn
        value = target[name]
        flat = value.reshape(-1)
        picks = rng.choice(flat.size, size=min(6, flat.size), replace=False)
        for i in picks:
            old = flat[i]
            flat[i] = old + 1e-6
            up = oracle.loss_and_grads(s_arch, w, x, y, config, (t_arch, tw), conn, 0.5)[0]
            flat[i] = old - 1e-6
            down = oracle.loss_and_grads(s_arch, w, x, y, config, (t_arch, tw), conn, 0.5)[0]
            flat[i] = old
            num = (up - down) / 2e-6
            assert grads[name].reshape(-1)[i] == pytest.approx(num, rel=1e-4, abs=1e-7), name


def _terms(method: str) -> tuple[str, ...]:
    from kdbench.methods import METHODS

    return METHODS[method].terms
