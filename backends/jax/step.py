"""The jitted train step of the JAX backend and the pieces loss_and_grads shares.

What trains is the pair (student params, connectors): one optax optimizer
over both, as PyTorch's optimizer takes the student's and the connectors'
parameters together. Without connectors the second half is an empty dict,
a pytree without leaves, so the plain step computes exactly what it did.

Batch norm's running statistics ride in the carry beside, not inside, what
trains: the student's training-mode forward returns them updated (the loss's
auxiliary output), the optimizer never sees them. A net without batch norm
has {} there, again a pytree without leaves. The frozen teacher's argument is
its variables ({"params": ..., "batch_stats": ...}), applied in inference mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import optax

from kdbench.backends.base import Augment, LossConfig
from kdbench.backends.jax.augment import gather_augmented
from kdbench.backends.jax.losses import distill_loss, ensemble_logits, needs_teacher
from kdbench.backends.jax.model import Net, Params, apply_train
from kdbench.backends.jax.optim import set_lr

Connectors = dict[str, jax.Array]  # neutral name ("hint0.kernel") -> array
TeacherOut = tuple[jax.Array | None, list[jax.Array]]  # logits (None: unused), features
# (the step's teacher argument, the batch, its indices) -> the teacher's outputs
Teach = Callable[[Any, jax.Array, jax.Array], TeacherOut]
# What the step's teacher is: one module, an ensemble's modules, a logit table, nothing.
TeacherKind = Net | tuple[Net, ...] | Literal["table"] | None
TABLE: Literal["table"] = "table"


class Carry(NamedTuple):
    """Everything a step changes: one pytree, donated to the next step."""

    params: Params
    opt_state: Any  # the optimizer's state of (params, connectors)
    step: jax.Array  # int32; folded into the dropout key
    connectors: Connectors  # FitNet's regressors, trained with the student ({}: none)
    batch_stats: Params  # the student's batch norm running statistics ({}: none)


def teacher_outputs(
    teacher: Net | None, variables: dict[str, Params] | None, xb: jax.Array, loss: LossConfig
) -> tuple[jax.Array | None, list[jax.Array]]:
    """The frozen teacher's logits and tapped features: inference mode (batch
    norm on its running statistics), no gradient.

    Skipped (None, []) where no weighted term reads the teacher."""
    if teacher is None or not needs_teacher(loss):
        return None, []
    taps = loss.teacher_taps
    out = teacher.apply(variables, xb, deterministic=True, taps=taps)
    logits, feats = out if taps else (out, [])
    return jax.lax.stop_gradient(logits), [jax.lax.stop_gradient(f) for f in feats]


def make_teach(teacher: TeacherKind, loss: LossConfig) -> Teach:
    """The teacher as a function of the step's teacher argument, so that
    argument (variables, a list of them, the table) is never a closed-over constant.

    One module: its forward (its argument: its variables, model.variables). An
    ensemble: every member's forward, combined in log space with
    loss.ensemble_weights (its argument: the members' variables, in order).
    TABLE: the logits gathered by the batch's indices, no forward at all (its
    argument: the table). All under stop_gradient.
    """
    if teacher is None or not needs_teacher(loss):
        return lambda arg, xb, idx: (None, [])
    if isinstance(teacher, Net):
        return lambda variables, xb, idx: teacher_outputs(teacher, variables, xb, loss)
    if loss.teacher_taps:
        raise ValueError(f"method {loss.method!r}: feature terms need a single teacher model")
    if teacher == TABLE:
        return lambda table, xb, idx: (jax.lax.stop_gradient(table[idx]), [])
    members = tuple(teacher)
    weights = loss.ensemble_weights or ((1.0,) if len(members) == 1 else ())
    if len(weights) != len(members):
        raise ValueError(
            f"{len(members)} ensemble teachers but ensemble_weights {loss.ensemble_weights}"
        )

    def ensemble(variables: list[dict[str, Params]], xb: jax.Array, idx: jax.Array) -> TeacherOut:
        if len(variables) != len(members):
            raise ValueError(f"{len(members)} ensemble teachers but {len(variables)} variables")
        logits = [
            m.apply(v, xb, deterministic=True)
            for m, v, w in zip(members, variables, weights, strict=True)
            if w != 0.0  # a member weighted zero adds nothing: not run
        ]
        kept = [w for w in weights if w != 0.0]
        return jax.lax.stop_gradient(ensemble_logits(logits, kept, loss.temperature)), []

    return ensemble


def student_objective(
    module: Net,
    loss: LossConfig,
    xb: jax.Array,
    yb: jax.Array,
    rng: jax.Array,
    teacher: tuple[jax.Array | None, list[jax.Array]],
    kd_scale: float | jax.Array,
    batch_stats: Params,
) -> Callable[[tuple[Params, Connectors]], tuple[jax.Array, Params]]:
    """The loss as a function of what trains: (student params, connectors).

    The student runs in training mode; the objective's auxiliary output is its
    batch_stats after the forward (updated by batch norm; {} without), for
    value_and_grad(..., has_aux=True)."""
    taps = loss.student_taps
    teacher_logits, teacher_feats = teacher

    def objective(trainable: tuple[Params, Connectors]) -> tuple[jax.Array, Params]:
        params, connectors = trainable
        out, stats = apply_train(module, params, batch_stats, xb, rng, taps)
        logits, feats = out if taps else (out, [])
        value = distill_loss(
            loss,
            logits,
            yb,
            teacher_logits,
            student_feats=feats,
            teacher_feats=teacher_feats,
            connectors=connectors,
            kd_scale=kd_scale,
        )
        return value, stats

    return objective


def make_train_step(
    module: Net,
    tx: optax.GradientTransformation,
    loss: LossConfig,
    teacher: TeacherKind,
    traces: list[int],
    augment: Augment | None = None,
) -> Callable[..., tuple[Carry, jax.Array]]:
    """The pure step: (carry, x, y, idx, lr, kd_scale, key, teacher_arg[, crops]) -> (carry, loss).

    The dataset and teacher_arg (see make_teach) are arguments, not
    closed-over constants, so they are neither copied into the executable nor
    re-sent: they already live on the device. lr and kd_scale are traced, so
    a schedule never recompiles.

    With an augment, the step also takes crops (int32 (batch, 3), traced) and
    augments the gathered batch (augment.gather_augmented) before the teacher
    and the student see it; without, crops is never given and the step is the
    plain one.
    """
    teach = make_teach(teacher, loss)

    def step(
        carry: Carry,
        x: jax.Array,
        y: jax.Array,
        idx: jax.Array,
        lr: jax.Array,
        kd_scale: jax.Array,
        key: jax.Array,
        teacher_arg: Any,
        crops: jax.Array | None = None,
    ) -> tuple[Carry, jax.Array]:
        traces[0] += 1  # Python runs only while tracing (or every step in eager mode)
        xb = x[idx] if augment is None else gather_augmented(x, idx, crops, augment)
        yb = y[idx]
        teacher_out = teach(teacher_arg, xb, idx)
        rng = jax.random.fold_in(key, carry.step)
        objective = student_objective(
            module, loss, xb, yb, rng, teacher_out, kd_scale, carry.batch_stats
        )
        trainable = (carry.params, carry.connectors)
        (value, stats), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
        opt_state = set_lr(carry.opt_state, lr)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        params, connectors = optax.apply_updates(trainable, updates)
        return Carry(params, opt_state, carry.step + 1, connectors, stats), value

    return step
