"""The pieces of the TensorFlow train step that loss_and_grads shares with it.

What trains is the student's variables and the connectors' (FitNet's
regressors), in one optimizer, as PyTorch's optimizer takes both; without
connectors the step is the plain one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from kdbench.backends.base import Augment, LossConfig, Weights
from kdbench.backends.tensorflow.augment import gather_augmented
from kdbench.backends.tensorflow.losses import FEATURE_TERMS, distill_loss, ensemble_logits
from kdbench.backends.tensorflow.model import TFModule

# (x, y, kd_scale[, teacher logits]) -> (loss, gradient of every trained variable: student's, then connectors')
LossAndGrads = Callable[..., tuple[tf.Tensor, list[tf.Tensor]]]


def connector_variables(connectors: Weights | None) -> dict[str, tf.Variable]:
    """The connectors' neutral numpy weights as float32 variables under the same names.

    Their layouts are TF's already (kernel (C_s, C_t) on the channel axis).
    Created eagerly, before any trace: a tf.function may not create variables.
    """
    return {
        name: tf.Variable(np.asarray(value, np.float32), name=name.replace(".", "_"))
        for name, value in (connectors or {}).items()
    }


def taps_of(config: LossConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(teacher taps, student taps) the loss reads; none unless a feature term counts."""
    if any(term in FEATURE_TERMS for term in config.terms()):
        return config.teacher_taps, config.student_taps
    return (), ()


def ensemble_members(
    config: LossConfig, teachers: Sequence[TFModule]
) -> tuple[list[TFModule], list[float]]:
    """The members that count and their weights (config.ensemble_weights, in order).

    A zero-weighted member adds nothing to the mean, so it is left out rather
    than run at every step. Raises ValueError when the counts disagree.
    """
    weights = config.ensemble_weights or ((1.0,) if len(teachers) == 1 else ())
    if len(weights) != len(teachers):
        raise ValueError(
            f"an ensemble of {len(teachers)} teacher(s) needs as many ensemble_weights, "
            f"got {len(weights)}"
        )
    kept = [(t, float(w)) for t, w in zip(teachers, weights, strict=True) if w != 0.0]
    if not kept or any(w < 0.0 for _, w in kept):
        raise ValueError(f"ensemble_weights {tuple(weights)} must be >= 0, some positive")
    return [t for t, _ in kept], [w for _, w in kept]


def loss_and_grads_fn(
    config: LossConfig,
    student: TFModule,
    teacher: TFModule | Sequence[TFModule] | None,
    connectors: Mapping[str, tf.Variable],
    logits_given: bool = False,
    update_state: bool = False,
) -> tuple[LossAndGrads, list[tf.Variable]]:
    """One batch's loss and gradients, shared by loss_and_grads and the train step.

    The teacher runs before the tape, in inference mode (no dropout, no
    gradient), and only where some term reads it; features are tapped only
    where a feature term counts, so the plain methods trace as they always did.
    teacher may be a list (an ensemble: every member runs, their logits
    combined by ensemble_logits); with logits_given the caller passes the
    teacher logits to each call (offline: gathered from a table) and no
    teacher runs. The student runs in training mode (batch norm on the batch
    statistics); with update_state (the train step) each call also assigns its
    batch norm running statistics, without (loss_and_grads) they stay as they
    are. Returns the function and the variables its gradients belong to (the
    trainable ones: running statistics are not among them), in order.
    """
    teacher_taps, student_taps = taps_of(config)
    uses_teacher = any(term != "ce" for term in config.terms())
    if uses_teacher and teacher is None and not logits_given:
        raise ValueError(f"method {config.method!r} needs a teacher")
    members: list[TFModule] = []
    member_weights: list[float] = []
    if isinstance(teacher, Sequence):
        if teacher_taps:
            raise ValueError(f"method {config.method!r} taps features; give one teacher")
        members, member_weights = ensemble_members(config, teacher)
    variables = [*student.variables_in_order, *connectors.values()]
    temp = config.temperature

    def teacher_outputs(xb: tf.Tensor) -> tuple[tf.Tensor | None, list[tf.Tensor]]:
        if not uses_teacher or teacher is None:
            return None, []
        if members:
            logits = [m.forward(xb, False)[0] for m in members]
            return ensemble_logits(logits, member_weights, temp), []
        return teacher.forward(xb, False, teacher_taps)  # type: ignore[union-attr]

    def run(
        xb: tf.Tensor,
        yb: tf.Tensor,
        kd_scale: float | tf.Tensor,
        t_logits: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, list[tf.Tensor]]:
        t_feats: list[tf.Tensor] = []
        if t_logits is None:
            t_logits, t_feats = teacher_outputs(xb)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(variables)
            s_logits, s_feats = student.forward(xb, True, student_taps, update_state)
            value = distill_loss(
                config, s_logits, yb, t_logits, s_feats, t_feats, connectors, kd_scale
            )
        grads = tape.gradient(value, variables)
        # A connector no counted term reads (its weight zero) gets a zero gradient.
        return value, [
            tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables, strict=True)
        ]

    return run, variables


def make_train_step(
    grads_of: Callable[..., Any],
    variables: list[tf.Variable],
    opt: Any,
    table: tf.Tensor | None,
    augment: Augment | None,
    traced: Callable[[], None],
) -> Callable[..., tf.Tensor]:
    """The train step to compile: gather the batch (augmented with the step's
    crops where the state has an Augment), the teacher's logits from the
    offline table where there is one, the loss and gradients, the update.

    Without an Augment it is the plain five-argument step, as it always was."""

    def step(
        x: tf.Tensor, y: tf.Tensor, indices: tf.Tensor, lr: tf.Tensor, kd_scale: tf.Tensor
    ) -> tf.Tensor:
        traced()
        t_logits = None if table is None else tf.gather(table, indices)
        value, grads = grads_of(tf.gather(x, indices), tf.gather(y, indices), kd_scale, t_logits)
        opt.apply(grads, variables, lr)
        return value

    def augmented_step(
        x: tf.Tensor,
        y: tf.Tensor,
        indices: tf.Tensor,
        lr: tf.Tensor,
        kd_scale: tf.Tensor,
        crops: tf.Tensor,
    ) -> tf.Tensor:
        traced()
        t_logits = None if table is None else tf.gather(table, indices)
        xb = gather_augmented(x, indices, crops, augment)  # type: ignore[arg-type]
        value, grads = grads_of(xb, tf.gather(y, indices), kd_scale, t_logits)
        opt.apply(grads, variables, lr)
        return value

    return step if augment is None else augmented_step
