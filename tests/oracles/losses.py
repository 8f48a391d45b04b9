"""The float64 numpy oracle for the distillation losses.

Each backend writes the same losses in its own framework; the tests hold
them to these functions. Everything is in log space so extreme logits give
finite losses. alpha weighs the distillation term, (1 - alpha) the labels.
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the batch of -log p(label)."""
    logp = log_softmax(logits)
    return float(-np.mean(logp[np.arange(len(labels)), labels]))


def kl_soft(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """KL(softmax(t/T) || softmax(s/T)), summed over classes, mean over the batch."""
    log_t = log_softmax(np.asarray(teacher, np.float64) / temperature)
    log_s = log_softmax(np.asarray(student, np.float64) / temperature)
    return float(np.mean(np.sum(np.exp(log_t) * (log_t - log_s), axis=-1)))


def distill_loss(
    method: str,
    student: np.ndarray,
    labels: np.ndarray,
    teacher: np.ndarray | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> float:
    """The training loss of the student under a distillation method.

    none: CE(s, y). soft (Hinton): alpha * T^2 * KL + (1 - alpha) * CE(s, y).
    hard: alpha * CE(s, argmax t) + (1 - alpha) * CE(s, y).
    """
    if method == "none":
        return cross_entropy(student, labels)
    assert teacher is not None, f"method {method!r} needs teacher logits"
    if method == "soft":
        soft = kl_soft(student, teacher, temperature) * temperature**2
        return alpha * soft + (1.0 - alpha) * cross_entropy(student, labels)
    if method == "hard":
        pseudo = np.argmax(teacher, axis=-1)
        return alpha * cross_entropy(student, pseudo) + (1.0 - alpha) * cross_entropy(
            student, labels
        )
    raise ValueError(f"unknown method {method!r}")


def distill_loss_grad(
    method: str,
    student: np.ndarray,
    labels: np.ndarray,
    teacher: np.ndarray | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> np.ndarray:
    """Analytic gradient of distill_loss with respect to the student logits."""
    s = np.asarray(student, np.float64)
    batch, classes = s.shape
    p_s = np.exp(log_softmax(s))
    onehot = np.eye(classes)[labels]
    ce_grad = (p_s - onehot) / batch
    if method == "none":
        return ce_grad
    assert teacher is not None
    if method == "soft":
        p_s_t = np.exp(log_softmax(s / temperature))
        p_t_t = np.exp(log_softmax(np.asarray(teacher, np.float64) / temperature))
        soft_grad = temperature * (p_s_t - p_t_t) / batch
        return alpha * soft_grad + (1.0 - alpha) * ce_grad
    if method == "hard":
        pseudo = np.eye(classes)[np.argmax(teacher, axis=-1)]
        return alpha * (p_s - pseudo) / batch + (1.0 - alpha) * ce_grad
    raise ValueError(f"unknown method {method!r}")
