"""Optimizers from the neutral description, in PyTorch's conventions, in tf ops.

Keras's optimizers are not used because their conventions differ from the
reference (torch.optim, oracle: tests/oracles/optimizers.py):
- Keras SGD keeps v = mu * v - lr * g (lr folded into the velocity), which
  differs from torch's v = mu * v + g; p -= lr * v as soon as lr changes, and
  the harness changes lr every step (cosine schedule).
- Keras Adam adds epsilon to sqrt(v) and folds the bias correction into lr,
  i.e. epsilon sits on sqrt(v) * sqrt(1 - beta2^t) instead of sqrt(v_hat).

So both are written here, following torch's single-tensor kernels operation
by operation (same float32 roundings where it is cheap to do so):
- SGD: g += wd * p; v = mu * v + g (v starts at 0, so the first v is g, as in
  torch's clone); p -= lr * v, or p -= lr * (g + mu * v) with Nesterov.
- Adam: g += wd * p; m = lerp(m, g, 1 - beta1); v = beta2 * v + (1 - beta2) g^2;
  p -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps), the bias
  corrections computed in float64 like torch's Python scalars.

Weight decay is L2 added to the gradient (torch's weight_decay), not AdamW.
config["decay"] (absent: "all") says which variables it covers: "all" of them,
or only the "kernels" (neutral names ending in ".kernel": conv and dense
kernels, FitNet's "hint0.kernel"; not biases nor batch norm's scale and
shift), decided per variable from the neutral names the optimizer is given
(as torch's parameter groups do).
The learning rate is an argument of apply(), a float64 scalar tensor that the
traced step takes as an input: a new value every step causes no retrace, and
costs less per step than assigning a tf.Variable (about 5 us against 45 us on
the 2-core CPU). float64 because torch computes lr / (1 - beta1^t) in Python
doubles before rounding to float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf


class Optimizer:
    """State (slots, step count, lr) in tf.Variables, created eagerly up front
    because a tf.function may not create variables after its first trace."""

    def __init__(
        self,
        variables: Sequence[tf.Variable],
        config: dict[str, Any],
        names: Sequence[str] | None = None,
    ) -> None:
        self.config = dict(config)
        self.name = config["name"]
        if self.name not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.name!r}")
        self.step_count = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.weight_decay = float(config["weight_decay"])
        # The weight decay of each variable, in order: weight_decay or 0.0.
        self.decays = decay_per_variable(variables, config, names)
        self.slots: list[dict[str, tf.Variable]] = []
        for var in variables:
            slot: dict[str, tf.Variable] = {}
            if self.name == "sgd" and config["momentum"]:
                slot["v"] = tf.Variable(tf.zeros_like(var), trainable=False)
            elif self.name == "adam":
                slot["m"] = tf.Variable(tf.zeros_like(var), trainable=False)
                slot["v"] = tf.Variable(tf.zeros_like(var), trainable=False)
            self.slots.append(slot)

    def apply(
        self, grads: Sequence[tf.Tensor], variables: Sequence[tf.Variable], lr: tf.Tensor
    ) -> None:
        """One update of every variable with its gradient (eager or traced)."""
        step = self.step_count.assign_add(1)
        lr = tf.cast(lr, tf.float64)
        if self.name == "sgd":
            self._sgd(grads, variables, lr)
        else:
            self._adam(grads, variables, lr, tf.cast(step, tf.float64))

    @staticmethod
    def _decayed(grad: tf.Tensor, var: tf.Variable, decay: float) -> tf.Tensor:
        if decay:
            return grad + decay * var
        return grad

    def _sgd(
        self, grads: Sequence[tf.Tensor], variables: Sequence[tf.Variable], lr: tf.Tensor
    ) -> None:
        mu = float(self.config["momentum"])
        lr = tf.cast(lr, tf.float32)  # torch: add_(g, alpha=-lr) rounds lr to float32
        for grad, var, slot, decay in zip(grads, variables, self.slots, self.decays, strict=True):
            g = self._decayed(grad, var, decay)
            if mu:
                buf = slot["v"].assign(mu * slot["v"] + g)
                g = g + mu * buf if self.config["nesterov"] else buf
            var.assign_sub(lr * g)

    def _adam(
        self,
        grads: Sequence[tf.Tensor],
        variables: Sequence[tf.Variable],
        lr: tf.Tensor,
        step: tf.Tensor,
    ) -> None:
        beta1, beta2 = float(self.config["beta1"]), float(self.config["beta2"])
        eps = float(self.config["eps"])
        bias1 = 1.0 - tf.pow(tf.constant(beta1, tf.float64), step)
        bias2 = 1.0 - tf.pow(tf.constant(beta2, tf.float64), step)
        step_size = tf.cast(lr / bias1, tf.float32)
        bias2_sqrt = tf.cast(tf.sqrt(bias2), tf.float32)
        weight = 1.0 - beta1
        for grad, var, slot, decay in zip(grads, variables, self.slots, self.decays, strict=True):
            g = self._decayed(grad, var, decay)
            m, v = slot["m"], slot["v"]
            m = m.assign(lerp(m, g, weight))
            v = v.assign(v * beta2 + (1.0 - beta2) * g * g)
            denom = tf.sqrt(v) / bias2_sqrt + eps
            var.assign_sub(step_size * (m / denom))


def lerp(start: tf.Tensor, end: tf.Tensor, weight: float) -> tf.Tensor:
    """torch.lerp's formula, which switches form at weight 0.5 for accuracy."""
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1.0 - weight)


def decay_per_variable(
    variables: Sequence[tf.Variable], config: dict[str, Any], names: Sequence[str] | None
) -> list[float]:
    """weight_decay for every variable config["decay"] covers, 0.0 for the others.

    "all" (the default) covers every variable; "kernels" only those whose
    neutral name (names, in the order of variables) ends in ".kernel".
    """
    wd = float(config["weight_decay"])
    which = config.get("decay", "all")
    if which == "all":
        return [wd] * len(variables)
    if which != "kernels":
        raise ValueError(f"optimizer decay must be 'all' or 'kernels', got {which!r}")
    if names is None or len(names) != len(variables):
        raise ValueError("decay 'kernels' needs the neutral name of every trained variable")
    return [wd if name.endswith(".kernel") else 0.0 for name in names]


def make_optimizer(
    variables: Sequence[tf.Variable],
    config: dict[str, Any],
    names: Sequence[str] | None = None,
) -> Optimizer:
    """names: the neutral name of each variable, in order (what decides its
    weight decay under decay = "kernels")."""
    # lr comes with every step (Optimizer.apply), as the harness's schedule gives it.
    return Optimizer(variables, config, names)


def learning_rate(lr: float) -> tf.Tensor:
    """The per-step lr as the tensor the traced step takes (torch: set_lr)."""
    return tf.constant(lr, tf.float64)
