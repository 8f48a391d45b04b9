"""The float64 numpy oracle of every distillation method (kdbench.methods).

method_loss() gives the loss of one batch and its analytic gradient with
respect to the student logits, the student's tapped features and the
connectors; test_method_oracles.py checks each gradient against central
finite differences. train() runs whole float64 trajectories of a method,
backpropagating the feature gradients through backward.backward.

The references: RepDistiller's HintLoss (nn.MSELoss: mean over every
element) and Attention (F.normalize(f.pow(p).mean(1).view(B, -1)), then
(a_s - a_t).pow(2).mean()), mdistiller's DKD (the target class masked out of
the non-target softmax by subtracting 1000 from its logit, both KLs summed
over classes, divided by the batch and multiplied by T^2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kdbench.architectures import Architecture
from kdbench.backends.base import LossConfig

from . import backward, network
from .losses import log_softmax
from .optimizers import ReferenceOptimizer

MASK = 1000.0  # mdistiller's: exp(-1000) is 0 in float32 and float64 alike


def _f64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def ce_term(s: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    b, c = s.shape
    logp = log_softmax(s)
    value = -np.mean(logp[np.arange(b), labels])
    return float(value), (np.exp(logp) - np.eye(c)[labels]) / b


def kd_term(s: np.ndarray, t: np.ndarray, temp: float) -> tuple[float, np.ndarray]:
    log_s, log_t = log_softmax(s / temp), log_softmax(t / temp)
    value = np.mean(np.sum(np.exp(log_t) * (log_t - log_s), axis=-1)) * temp**2
    return float(value), temp * (np.exp(log_s) - np.exp(log_t)) / len(s)


def tckd_term(
    s: np.ndarray, t: np.ndarray, labels: np.ndarray, temp: float
) -> tuple[float, np.ndarray]:
    """KL between the binary (target, non-target) splits of softmax(./T)."""
    b, c = s.shape
    rows = np.arange(b)
    log_s, log_t = log_softmax(s / temp), log_softmax(t / temp)
    p_s, p_t = np.exp(log_s[rows, labels]), np.exp(log_t[rows, labels])
    a_s, a_t = log_s[rows, labels], log_t[rows, labels]
    r_s, r_t = np.log1p(-p_s), np.log1p(-p_t)  # log(1 - p), the non-target mass
    kl = p_t * (a_t - a_s) + (1 - p_t) * (r_t - r_s)
    value = np.sum(kl) / b * temp**2
    onehot = np.eye(c)[labels]
    factor = (1 - p_t) * p_s / (1 - p_s) - p_t
    grad_z = (onehot - np.exp(log_s)) * factor[:, None]
    return float(value), grad_z * temp / b


def nckd_term(
    s: np.ndarray, t: np.ndarray, labels: np.ndarray, temp: float
) -> tuple[float, np.ndarray]:
    """KL over the non-target classes: the target logit pushed down by MASK first."""
    b, c = s.shape
    onehot = np.eye(c)[labels]
    log_s = log_softmax(s / temp - MASK * onehot)
    log_t = log_softmax(t / temp - MASK * onehot)
    q_t = np.exp(log_t)
    value = np.sum(q_t * (log_t - log_s)) / b * temp**2
    return float(value), (np.exp(log_s) - q_t) * temp / b


def hint_term(
    fs: np.ndarray, ft: np.ndarray, kernel: np.ndarray, bias: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """mean((fs @ kernel + bias - ft)^2); gradients for fs, kernel, bias."""
    r = fs @ kernel + bias - ft
    n = r.size
    value = float(np.sum(r * r) / n)
    g = 2.0 * r / n
    c_s, c_t = kernel.shape
    return (
        value,
        g @ kernel.T,
        fs.reshape(-1, c_s).T @ g.reshape(-1, c_t),
        g.reshape(-1, c_t).sum(axis=0),
    )


def attention(f: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised map (B, HW), the map before normalising, its norms (B, 1))."""
    b = f.shape[0]
    a = np.mean(np.abs(f) ** p, axis=-1).reshape(b, -1)
    norm = np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    return a / norm, a, norm


def at_term(fs: np.ndarray, ft: np.ndarray, p: float) -> tuple[float, np.ndarray]:
    n_s, _, norm = attention(fs, p)
    n_t, _, _ = attention(ft, p)
    d = n_s - n_t
    value = float(np.mean(d * d))
    g_n = 2.0 * d / d.size
    g_a = (g_n - n_s * np.sum(n_s * g_n, axis=1, keepdims=True)) / norm
    c = fs.shape[-1]
    g_a = g_a.reshape(fs.shape[:-1])[..., None]
    g_f = g_a * p * np.abs(fs) ** (p - 1) * np.sign(fs) / c
    return value, g_f


def ensemble_logits(
    teacher_logits: Sequence[np.ndarray], weights: Sequence[float], temperature: float
) -> np.ndarray:
    """T * log(sum_k w_k softmax(t_k / T)): softened by T, the weighted mean of
    the members' softened outputs (kdbench.methods)."""
    mean = sum(
        w * np.exp(log_softmax(_f64(t) / temperature))
        for t, w in zip(teacher_logits, weights, strict=True)
    )
    return temperature * np.log(mean)


def method_loss(
    config: LossConfig,
    student: np.ndarray,
    labels: np.ndarray,
    teacher: np.ndarray | None = None,
    student_feats: Sequence[np.ndarray] = (),
    teacher_feats: Sequence[np.ndarray] = (),
    connectors: dict[str, np.ndarray] | None = None,
    kd_scale: float = 1.0,
) -> tuple[float, np.ndarray, list[np.ndarray], dict[str, np.ndarray]]:
    """(loss, d/d logits, d/d each student feature, d/d each connector parameter)."""
    s = _f64(student)
    t = None if teacher is None else _f64(teacher)
    temp = config.temperature
    total = 0.0
    g_logits = np.zeros_like(s)
    g_feats = [np.zeros_like(_f64(f)) for f in student_feats]
    g_conn = {name: np.zeros_like(_f64(v)) for name, v in (connectors or {}).items()}
    for term, weight in config.terms().items():
        scale = weight * (1.0 if term == "ce" else kd_scale)
        if term == "ce":
            value, g = ce_term(s, labels)
        elif term == "kd":
            value, g = kd_term(s, t, temp)
        elif term == "hard":
            value, g = ce_term(s, np.argmax(t, axis=-1))
        elif term == "tckd":
            value, g = tckd_term(s, t, labels, temp)
        elif term == "nckd":
            value, g = nckd_term(s, t, labels, temp)
        elif term in ("hint", "at"):
            value = 0.0
            for k, (fs, ft) in enumerate(zip(student_feats, teacher_feats, strict=True)):
                fs, ft = _f64(fs), _f64(ft)
                if term == "hint":
                    kernel, bias = (
                        _f64(connectors[f"hint{k}.kernel"]),
                        _f64(connectors[f"hint{k}.bias"]),
                    )
                    v, g_f, g_k, g_b = hint_term(fs, ft, kernel, bias)
                    g_conn[f"hint{k}.kernel"] += scale * g_k
                    g_conn[f"hint{k}.bias"] += scale * g_b
                else:
                    v, g_f = at_term(fs, ft, config.at_p)
                g_feats[k] += scale * g_f
                value += v
            total += scale * value
            continue
        else:
            raise ValueError(f"no oracle for term {term!r}")
        total += scale * value
        g_logits += scale * g
    return total, g_logits, g_feats, g_conn


def features(
    arch: Architecture, weights: dict, x: np.ndarray, layers: Sequence[int]
) -> list[np.ndarray]:
    """The outputs of the given layers (float64)."""
    trace = backward.forward_trace(arch, weights, x)
    return [trace[index + 1] for index in layers]


def loss_and_grads(
    arch: Architecture,
    weights: dict,
    x: np.ndarray,
    y: np.ndarray,
    config: LossConfig,
    teacher: tuple[Architecture, dict] | list[tuple[Architecture, dict]] | None = None,
    connectors: dict[str, np.ndarray] | None = None,
    kd_scale: float = 1.0,
) -> tuple[float, dict[str, np.ndarray]]:
    """The loss and the float64 gradient of every student and connector parameter.

    teacher: (arch, weights), or a list of them for an ensemble."""
    trace = backward.forward_trace(arch, weights, x)
    s_feats = [trace[i + 1] for i in config.student_taps]
    t_logits, t_feats = None, []
    if isinstance(teacher, list):
        members = [network.forward(a, w, x) for a, w in teacher]
        t_logits = ensemble_logits(members, config.ensemble_weights, config.temperature)
    elif teacher is not None:
        t_trace = backward.forward_trace(teacher[0], teacher[1], x, train=False)
        t_logits = t_trace[-1]
        t_feats = [t_trace[i + 1] for i in config.teacher_taps]
    loss, g_logits, g_feats, g_conn = method_loss(
        config, trace[-1], y, t_logits, s_feats, t_feats, connectors, kd_scale
    )
    injected: dict[int, np.ndarray] = {}
    for index, g in zip(config.student_taps, g_feats, strict=True):
        injected[index] = injected.get(index, 0.0) + g
    grads = backward.backward(arch, weights, x, g_logits, injected)
    return loss, {**grads, **g_conn}


def train(
    arch: Architecture,
    weights: dict,
    connectors: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    indices: Sequence[np.ndarray],
    lrs: Sequence[float],
    optimizer: dict[str, Any],
    config: LossConfig,
    teacher: tuple[Architecture, dict] | list[tuple[Architecture, dict]],
    kd_scales: Sequence[float] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A float64 run of a method: per-step losses, then final student + connector weights."""
    current = {k: _f64(v) for k, v in {**weights, **connectors}.items()}
    opt = ReferenceOptimizer(optimizer)
    scales = kd_scales if kd_scales is not None else [1.0] * len(lrs)
    losses = []
    for idx, lr, scale in zip(indices, lrs, scales, strict=True):
        student = {k: current[k] for k in weights}
        conn = {k: current[k] for k in connectors}
        loss, grads = loss_and_grads(arch, student, x[idx], y[idx], config, teacher, conn, scale)
        stats = backward.running_stats(arch, student, x[idx])  # batch norm's
        trainable = {k: v for k, v in current.items() if k not in stats}
        current = {**opt.step(trainable, grads, float(lr)), **stats}
        losses.append(loss)
    return np.array(losses), current


__all__ = ["method_loss", "loss_and_grads", "train", "features", "network"]
