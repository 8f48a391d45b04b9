"""The distillation losses in TensorFlow, in log space (oracle: tests/oracles/methods.py).

The loss is the weighted sum of the terms LossConfig.terms() names
(kdbench.methods); every term but ce is also multiplied by kd_scale, the
harness's warm-up factor. KLs are summed over classes and averaged over the
batch ('batchmean'), from log_softmax on both sides. keras.losses.KLDivergence
is not used: it takes probabilities and clips them at 1e-7, which changes the
loss (and zeroes the gradient) wherever the teacher is confident.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from kdbench.backends.base import LossConfig

MASK = 1000.0  # mdistiller's DKD: the target logit pushed down by this (exp(-1000) is 0)
FEATURE_TERMS = ("hint", "at")


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of -log_softmax(logits)[label].

    Written as torch's F.cross_entropy is (nll of log_softmax) and as the
    oracle is, rather than with the fused sparse_softmax_cross_entropy op, so
    the gradient goes through the same log_softmax backward and rounds alike.
    """
    log_p = tf.nn.log_softmax(logits, axis=-1)
    return -tf.reduce_mean(tf.gather(log_p, labels, axis=-1, batch_dims=1))


def kd_term(student: tf.Tensor, teacher: tf.Tensor, temp: float) -> tf.Tensor:
    """Hinton: T^2 * KL(softmax(t/T) || softmax(s/T)), batchmean."""
    log_s = tf.nn.log_softmax(student / temp, axis=-1)
    log_t = tf.nn.log_softmax(teacher / temp, axis=-1)
    kl = tf.reduce_mean(tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=-1))
    return (temp * temp) * kl


def ensemble_logits(
    members: Sequence[tf.Tensor], weights: Sequence[float], temp: float
) -> tf.Tensor:
    """T * log(sum_k w_k softmax(t_k / T)): softened by T, the weighted mean of the
    members' softened outputs (kdbench.methods), so the usual kd term matches it.

    Summed in log space (logsumexp over log w_k + log_softmax(t_k / T)): a
    member's tiny probabilities neither underflow nor lose their digits.
    Every weight must be positive (leave zero-weighted members out).
    """
    log_w = tf.constant(np.log(np.asarray(weights, np.float64)), tf.float32)[:, None, None]
    stacked = tf.stack([tf.nn.log_softmax(t / temp, axis=-1) for t in members])
    return temp * tf.reduce_logsumexp(stacked + log_w, axis=0)


def _dkd_parts(
    logits: tf.Tensor, onehot: tf.Tensor, temp: float
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(log p_target, log(1 - p_target), log_softmax over the non-target classes).

    Both come from two logsumexps, so log(1 - p) stays accurate where p is
    near 1 (float32's 1 - p would round to 0 there).
    """
    z = logits / temp
    masked = z - MASK * onehot
    lse_all = tf.reduce_logsumexp(z, axis=-1)
    lse_rest = tf.reduce_logsumexp(masked, axis=-1)
    log_target = tf.reduce_sum(z * onehot, axis=-1) - lse_all
    return log_target, lse_rest - lse_all, masked - lse_rest[:, None]


def dkd_terms(
    student: tf.Tensor, teacher: tf.Tensor, labels: tf.Tensor, temp: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """DKD (mdistiller): (tckd, nckd), each a KL summed over the batch / B * T^2."""
    onehot = tf.one_hot(labels, tf.shape(student)[-1], dtype=student.dtype)
    a_s, r_s, log_q_s = _dkd_parts(student, onehot, temp)
    a_t, r_t, log_q_t = _dkd_parts(teacher, onehot, temp)
    tckd = tf.exp(a_t) * (a_t - a_s) + tf.exp(r_t) * (r_t - r_s)
    nckd = tf.reduce_sum(tf.exp(log_q_t) * (log_q_t - log_q_s), axis=-1)
    scale = temp * temp
    return scale * tf.reduce_mean(tckd), scale * tf.reduce_mean(nckd)


def hint_term(
    student: tf.Tensor, teacher: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor
) -> tf.Tensor:
    """FitNet: mean over every element of (f_s @ K + b - f_t)^2, K on the channel axis."""
    c_s, c_t = kernel.shape
    mapped = tf.matmul(tf.reshape(student, [-1, c_s]), kernel) + bias
    return tf.reduce_mean(tf.square(mapped - tf.reshape(teacher, [-1, c_t])))


def attention(feature: tf.Tensor, p: float) -> tf.Tensor:
    """mean_c |f|^p per position, flattened per sample and L2-normalised (eps 1e-12)."""
    powered = tf.square(feature) if p == 2.0 else tf.pow(tf.abs(feature), p)
    a = tf.reduce_mean(powered, axis=-1)
    a = tf.reshape(a, [tf.shape(a)[0], -1])
    # sqrt(max(|a|^2, eps^2)) = max(|a|, eps) with a finite gradient at a = 0.
    norm = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(a), axis=1, keepdims=True), 1e-24))
    return a / norm


def at_term(student: tf.Tensor, teacher: tf.Tensor, p: float) -> tf.Tensor:
    """Attention transfer: mean over (batch, H*W) of the squared map difference."""
    return tf.reduce_mean(tf.square(attention(student, p) - attention(teacher, p)))


def _scaled(weight: float, kd_scale: float | tf.Tensor) -> float | tf.Tensor:
    """weight * kd_scale in float64 (as torch's Python floats are), then float32."""
    if isinstance(kd_scale, tf.Tensor):
        return tf.cast(weight * tf.cast(kd_scale, tf.float64), tf.float32)
    return weight * kd_scale


def distill_loss(
    config: LossConfig,
    student: tf.Tensor,
    labels: tf.Tensor,
    teacher: tf.Tensor | None = None,
    student_feats: Sequence[tf.Tensor] = (),
    teacher_feats: Sequence[tf.Tensor] = (),
    connectors: Mapping[str, tf.Tensor] | None = None,
    kd_scale: float | tf.Tensor = 1.0,
) -> tf.Tensor:
    """sum over config.terms() of weight * term, the distillation terms times kd_scale."""
    terms = config.terms()
    if teacher is None and any(term != "ce" for term in terms):
        raise ValueError(f"method {config.method!r} needs teacher logits")
    if teacher is not None:
        teacher = tf.stop_gradient(teacher)  # frozen, whatever the caller's tape watches
    teacher_feats = [tf.stop_gradient(f) for f in teacher_feats]
    temp = config.temperature
    dkd: tuple[tf.Tensor, tf.Tensor] | None = None
    total: tf.Tensor | None = None
    for term, weight in terms.items():
        if term == "ce":
            value = cross_entropy(student, labels)
        elif term == "kd":
            value = kd_term(student, teacher, temp)
        elif term == "hard":
            value = cross_entropy(student, tf.argmax(teacher, axis=-1, output_type=labels.dtype))
        elif term in ("tckd", "nckd"):
            dkd = dkd or dkd_terms(student, teacher, labels, temp)
            value = dkd[0] if term == "tckd" else dkd[1]
        elif term in FEATURE_TERMS:
            value = _feature_term(config, term, student_feats, teacher_feats, connectors or {})
        else:
            raise ValueError(f"unknown loss term {term!r}")
        part = (weight if term == "ce" else _scaled(weight, kd_scale)) * value
        total = part if total is None else total + part
    if total is None:
        raise ValueError(f"method {config.method!r}: every term is weighted zero")
    return total


def _feature_term(
    config: LossConfig,
    term: str,
    student_feats: Sequence[tf.Tensor],
    teacher_feats: Sequence[tf.Tensor],
    connectors: Mapping[str, tf.Tensor],
) -> tf.Tensor:
    """hint or at, summed over the pairs."""
    if len(student_feats) != len(config.pairs) or len(teacher_feats) != len(config.pairs):
        raise ValueError(f"term {term!r} needs the features of {len(config.pairs)} pair(s)")
    values = []
    for k, (fs, ft) in enumerate(zip(student_feats, teacher_feats, strict=True)):
        if term == "hint":
            values.append(
                hint_term(fs, ft, connectors[f"hint{k}.kernel"], connectors[f"hint{k}.bias"])
            )
        else:
            values.append(at_term(fs, ft, config.at_p))
    return tf.add_n(values)
