"""The distillation losses in TensorFlow, in log space (oracle: tests/oracles/losses.py).

KL is summed over classes and averaged over the batch ('batchmean'), from
log_softmax on both sides. keras.losses.KLDivergence is not used: it takes
probabilities and clips them at 1e-7, which changes the loss (and zeroes the
gradient) wherever the teacher is confident. alpha weighs the distillation
term, (1 - alpha) the label cross-entropy.
"""

from __future__ import annotations

import tensorflow as tf

from kdbench.backends.base import LossConfig


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of -log_softmax(logits)[label].

    Written as torch's F.cross_entropy is (nll of log_softmax) and as the
    oracle is, rather than with the fused sparse_softmax_cross_entropy op, so
    the gradient goes through the same log_softmax backward and rounds alike.
    """
    log_p = tf.nn.log_softmax(logits, axis=-1)
    return -tf.reduce_mean(tf.gather(log_p, labels, axis=-1, batch_dims=1))


def distill_loss(
    config: LossConfig,
    student: tf.Tensor,
    labels: tf.Tensor,
    teacher: tf.Tensor | None = None,
) -> tf.Tensor:
    ce = cross_entropy(student, labels)
    if config.method == "none":
        return ce
    if teacher is None:
        raise ValueError(f"method {config.method!r} needs teacher logits")
    teacher = tf.stop_gradient(teacher)  # frozen, whatever the caller's tape watches
    if config.method == "soft":
        t = config.temperature
        log_s = tf.nn.log_softmax(student / t, axis=-1)
        log_t = tf.nn.log_softmax(teacher / t, axis=-1)
        kl = tf.reduce_mean(tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=-1))
        return config.alpha * (t * t) * kl + (1.0 - config.alpha) * ce
    if config.method == "hard":
        pseudo = cross_entropy(student, tf.argmax(teacher, axis=-1, output_type=labels.dtype))
        return config.alpha * pseudo + (1.0 - config.alpha) * ce
    raise ValueError(f"unknown method {config.method!r}")
