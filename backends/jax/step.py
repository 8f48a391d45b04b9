"""The jitted train step of the JAX backend and the pieces loss_and_grads shares.

What trains is the pair (student params, connectors): one optax optimizer
over both, as PyTorch's optimizer takes the student's and the connectors'
parameters together. Without connectors the second half is an empty dict,
a pytree without leaves, so the plain step computes exactly what it did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import optax

from kdbench.backends.base import LossConfig
from kdbench.backends.jax.losses import distill_loss, ensemble_logits, needs_teacher
from kdbench.backends.jax.model import Net, Params
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


def teacher_outputs(
    teacher: Net | None, params: Params | None, xb: jax.Array, loss: LossConfig
) -> tuple[jax.Array | None, list[jax.Array]]:
    """The frozen teacher's logits and tapped features: inference mode, no gradient.

    Skipped (None, []) where no weighted term reads the teacher."""
    if teacher is None or not needs_teacher(loss):
        return None, []
    taps = loss.teacher_taps
    out = teacher.apply({"params": params}, xb, deterministic=True, taps=taps)
    logits, feats = out if taps else (out, [])
    return jax.lax.stop_gradient(logits), [jax.lax.stop_gradient(f) for f in feats]


def make_teach(teacher: TeacherKind, loss: LossConfig) -> Teach:
    """The teacher as a function of the step's teacher argument, so that
    argument (params, a list of params, the table) is never a closed-over constant.

    One module: its forward (its argument: params). An ensemble: every member's
    forward, combined in log space with loss.ensemble_weights (its argument:
    the members' params, in order). TABLE: the logits gathered by the batch's
    indices, no forward at all (its argument: the table). All under stop_gradient.
    """
    if teacher is None or not needs_teacher(loss):
        return lambda arg, xb, idx: (None, [])
    if isinstance(teacher, Net):
        return lambda params, xb, idx: teacher_outputs(teacher, params, xb, loss)
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

    def ensemble(params: list[Params], xb: jax.Array, idx: jax.Array) -> TeacherOut:
        if len(params) != len(members):
            raise ValueError(f"{len(members)} ensemble teachers but {len(params)} params")
        logits = [
            m.apply({"params": p}, xb, deterministic=True)
            for m, p, w in zip(members, params, weights, strict=True)
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
) -> Callable[[tuple[Params, Connectors]], jax.Array]:
    """The loss as a function of what trains: (student params, connectors)."""
    taps = loss.student_taps
    teacher_logits, teacher_feats = teacher

    def objective(trainable: tuple[Params, Connectors]) -> jax.Array:
        params, connectors = trainable
        out = module.apply(
            {"params": params}, xb, deterministic=False, rngs={"dropout": rng}, taps=taps
        )
        logits, feats = out if taps else (out, [])
        return distill_loss(
            loss,
            logits,
            yb,
            teacher_logits,
            student_feats=feats,
            teacher_feats=teacher_feats,
            connectors=connectors,
            kd_scale=kd_scale,
        )

    return objective


def make_train_step(
    module: Net,
    tx: optax.GradientTransformation,
    loss: LossConfig,
    teacher: TeacherKind,
    traces: list[int],
) -> Callable[..., tuple[Carry, jax.Array]]:
    """The pure step: (carry, x, y, idx, lr, kd_scale, key, teacher_arg) -> (carry, loss).

    The dataset and teacher_arg (see make_teach) are arguments, not
    closed-over constants, so they are neither copied into the executable nor
    re-sent: they already live on the device. lr and kd_scale are traced, so
    a schedule never recompiles.
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
    ) -> tuple[Carry, jax.Array]:
        traces[0] += 1  # Python runs only while tracing (or every step in eager mode)
        xb, yb = x[idx], y[idx]
        teacher_out = teach(teacher_arg, xb, idx)
        rng = jax.random.fold_in(key, carry.step)
        objective = student_objective(module, loss, xb, yb, rng, teacher_out, kd_scale)
        trainable = (carry.params, carry.connectors)
        value, grads = jax.value_and_grad(objective)(trainable)
        opt_state = set_lr(carry.opt_state, lr)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        params, connectors = optax.apply_updates(trainable, updates)
        return Carry(params, opt_state, carry.step + 1, connectors), value

    return step
