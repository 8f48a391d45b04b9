"""The distillation terms in jax, in log space (oracle: tests/oracles/methods.py).

The loss is sum over LossConfig.terms() of weight * term, every term but
"ce" also multiplied by kd_scale (the warm-up factor, a traced scalar in the
train step, so a new factor does not recompile). KLs are summed over classes
and averaged over the batch ('batchmean') from log_softmax of both sides.
Everything here runs in float32, also under bf16 compute: the model returns
float32 logits and features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from kdbench.backends.base import LossConfig

MASK = 1000.0  # mdistiller's DKD: the target logit pushed down this far; exp(-1000) is 0
TEACHER_TERMS = ("kd", "hard", "tckd", "nckd", "hint", "at")


def needs_teacher(config: LossConfig) -> bool:
    """Whether any weighted term reads the teacher (so 'none' never runs it)."""
    return any(term in TEACHER_TERMS for term in config.terms())


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean over the batch of -log p(label)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def kd_term(student: jax.Array, teacher: jax.Array, temp: float) -> jax.Array:
    """Hinton: T^2 * KL(softmax(t/T) || softmax(s/T)), batchmean."""
    kl = optax.losses.kl_divergence_with_log_targets(
        jax.nn.log_softmax(student / temp, axis=-1),
        jax.nn.log_softmax(teacher / temp, axis=-1),
    )
    return (temp * temp) * kl.mean()


def ensemble_logits(
    members: Sequence[jax.Array], weights: Sequence[float], temp: float
) -> jax.Array:
    """T * logsumexp_k(log w_k + log_softmax(t_k / T)) = T * log(sum_k w_k softmax(t_k / T)).

    Softened by T these give the weighted mean of the members' softened
    outputs, so kd against them matches the student to that mean (kdbench.methods).
    In log space, so a member's tiny probabilities neither underflow nor lose
    precision; members weighted zero drop out (log 0 would be -inf).
    """
    if len(members) != len(weights):
        raise ValueError(f"{len(members)} ensemble members but {len(weights)} weights")
    parts = [
        jax.nn.log_softmax(t / temp, axis=-1) + jnp.log(jnp.float32(w))
        for t, w in zip(members, weights, strict=True)
        if w != 0.0
    ]
    if not parts:
        raise ValueError(f"every ensemble weight is zero: {tuple(weights)}")
    if len(parts) == 1:
        return temp * parts[0]
    return temp * jax.nn.logsumexp(jnp.stack(parts), axis=0)


def _dkd_parts(logits: jax.Array, onehot: jax.Array, temp: float) -> tuple[jax.Array, ...]:
    """(log p_target, log(1 - p_target), log_softmax without the target) of softmax(z/T).

    log(1 - p) is the log-sum-exp of the masked logits minus that of all of
    them: exact where p is close to 1 (log1p(-p) would lose it), and without
    the NaN gradients a where/-inf mask gives.
    """
    z = logits / temp
    masked = z - MASK * onehot
    lse = jax.nn.logsumexp(z, axis=-1)
    lse_rest = jax.nn.logsumexp(masked, axis=-1)
    log_target = jnp.sum(z * onehot, axis=-1) - lse
    return log_target, lse_rest - lse, masked - lse_rest[:, None]


def tckd_term(student: jax.Array, teacher: jax.Array, labels: jax.Array, temp: float) -> jax.Array:
    """DKD target-class term: T^2 * KL of the binary (target, rest) splits, batchmean."""
    onehot = jax.nn.one_hot(labels, student.shape[-1], dtype=student.dtype)
    a_s, r_s, _ = _dkd_parts(student, onehot, temp)
    a_t, r_t, _ = _dkd_parts(teacher, onehot, temp)
    kl = jnp.exp(a_t) * (a_t - a_s) + jnp.exp(r_t) * (r_t - r_s)
    return (temp * temp) * kl.mean()


def nckd_term(student: jax.Array, teacher: jax.Array, labels: jax.Array, temp: float) -> jax.Array:
    """DKD non-target term: T^2 * KL over the non-target classes, batchmean."""
    onehot = jax.nn.one_hot(labels, student.shape[-1], dtype=student.dtype)
    _, _, log_s = _dkd_parts(student, onehot, temp)
    _, _, log_t = _dkd_parts(teacher, onehot, temp)
    kl = optax.losses.kl_divergence_with_log_targets(log_s, log_t)
    return (temp * temp) * kl.mean()


def hint_term(
    student_feat: jax.Array, teacher_feat: jax.Array, kernel: jax.Array, bias: jax.Array
) -> jax.Array:
    """FitNet: mean over every element of (f_s @ kernel + bias - f_t)^2 (channels last)."""
    residual = student_feat @ kernel + bias - teacher_feat
    return jnp.mean(residual * residual)


def attention_map(feat: jax.Array, p: float) -> jax.Array:
    """mean_c |f|^p flattened to (B, H*W), divided by max(its L2 norm, 1e-12).

    The norm is sqrt(max(sum a^2, 1e-24)): the same value, but a zero map
    gets a zero gradient instead of linalg.norm's 0/0.
    """
    power = int(p) if float(p).is_integer() else p  # integer powers: integer_pow
    a = jnp.mean(jnp.abs(feat) ** power, axis=-1).reshape(feat.shape[0], -1)
    norm = jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=1, keepdims=True), 1e-24))
    return a / norm


def at_term(student_feat: jax.Array, teacher_feat: jax.Array, p: float) -> jax.Array:
    """Attention transfer: mean over (batch, H*W) of the squared map difference."""
    d = attention_map(student_feat, p) - attention_map(teacher_feat, p)
    return jnp.mean(d * d)


def _feature_term(
    term: str,
    config: LossConfig,
    student_feats: Sequence[jax.Array],
    teacher_feats: Sequence[jax.Array],
    connectors: Mapping[str, jax.Array],
) -> jax.Array:
    """hint or at, summed over the pairs."""
    if len(student_feats) != len(config.pairs) or len(teacher_feats) != len(config.pairs):
        raise ValueError(f"term {term!r} needs the features of every pair {config.pairs}")
    total = jnp.float32(0.0)
    for k, (fs, ft) in enumerate(zip(student_feats, teacher_feats, strict=True)):
        if term == "hint":
            kernel, bias = f"hint{k}.kernel", f"hint{k}.bias"
            if kernel not in connectors or bias not in connectors:
                raise ValueError(f"term 'hint' needs connectors {kernel} and {bias}")
            total = total + hint_term(fs, ft, connectors[kernel], connectors[bias])
        else:
            total = total + at_term(fs, ft, config.at_p)
    return total


def distill_loss(
    config: LossConfig,
    student: jax.Array,
    labels: jax.Array,
    teacher: jax.Array | None = None,
    *,
    student_feats: Sequence[jax.Array] = (),
    teacher_feats: Sequence[jax.Array] = (),
    connectors: Mapping[str, jax.Array] | None = None,
    kd_scale: float | jax.Array = 1.0,
) -> jax.Array:
    """The method's loss: sum of weight * term, kd_scale on all but ce.

    teacher and the teacher features are expected under stop_gradient.
    """
    total = None
    for term, weight in config.terms().items():
        if term == "ce":
            value = cross_entropy(student, labels)
        elif teacher is None and term in ("kd", "hard", "tckd", "nckd"):
            raise ValueError(f"term {term!r} of method {config.method!r} needs teacher logits")
        elif term == "kd":
            value = kd_term(student, teacher, config.temperature)
        elif term == "hard":
            value = cross_entropy(student, jnp.argmax(teacher, axis=-1))
        elif term == "tckd":
            value = tckd_term(student, teacher, labels, config.temperature)
        elif term == "nckd":
            value = nckd_term(student, teacher, labels, config.temperature)
        elif term in ("hint", "at"):
            value = _feature_term(term, config, student_feats, teacher_feats, connectors or {})
        else:
            raise ValueError(f"unknown term {term!r} (method {config.method!r})")
        scale = weight if term == "ce" else weight * kd_scale
        total = scale * value if total is None else total + scale * value
    if total is None:
        raise ValueError(f"method {config.method!r} weighs no term")
    return total
