"""The distillation losses in jax, in log space (oracle: tests/oracles/losses.py).

KL is summed over classes and averaged over the batch ('batchmean'), from
log_softmax of both sides; alpha weighs the distillation term and
(1 - alpha) the label cross-entropy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from kdbench.backends.base import LossConfig


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean over the batch of -log p(label)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def distill_loss(
    config: LossConfig,
    student: jax.Array,
    labels: jax.Array,
    teacher: jax.Array | None = None,
) -> jax.Array:
    ce = cross_entropy(student, labels)
    if config.method == "none":
        return ce
    if teacher is None:
        raise ValueError(f"method {config.method!r} needs teacher logits")
    if config.method == "soft":
        t = config.temperature
        kl = optax.losses.kl_divergence_with_log_targets(
            jax.nn.log_softmax(student / t, axis=-1),
            jax.nn.log_softmax(teacher / t, axis=-1),
        ).mean()
        return config.alpha * (t * t) * kl + (1.0 - config.alpha) * ce
    if config.method == "hard":
        pseudo = cross_entropy(student, jnp.argmax(teacher, axis=-1))
        return config.alpha * pseudo + (1.0 - config.alpha) * ce
    raise ValueError(f"unknown method {config.method!r}")
