"""The jitted train step of the JAX backend and the pieces loss_and_grads shares.

What trains is the pair (student params, connectors): one optax optimizer
over both, as PyTorch's optimizer takes the student's and the connectors'
parameters together. Without connectors the second half is an empty dict,
a pytree without leaves, so the plain step computes exactly what it did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from kdbench.backends.base import LossConfig
from kdbench.backends.jax.losses import distill_loss, needs_teacher
from kdbench.backends.jax.model import Net, Params
from kdbench.backends.jax.optim import set_lr

Connectors = dict[str, jax.Array]  # neutral name ("hint0.kernel") -> array


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
    teacher: Net | None,
    traces: list[int],
) -> Callable[..., tuple[Carry, jax.Array]]:
    """The pure step: (carry, x, y, idx, lr, kd_scale, key, teacher_params) -> (carry, loss).

    The dataset is an argument, not a closed-over constant, so it is neither
    copied into the executable nor re-sent: it already lives on the device.
    lr and kd_scale are traced, so a schedule never recompiles.
    """

    def step(
        carry: Carry,
        x: jax.Array,
        y: jax.Array,
        idx: jax.Array,
        lr: jax.Array,
        kd_scale: jax.Array,
        key: jax.Array,
        teacher_params: Params | None,
    ) -> tuple[Carry, jax.Array]:
        traces[0] += 1  # Python runs only while tracing (or every step in eager mode)
        xb, yb = x[idx], y[idx]
        teacher_out = teacher_outputs(teacher, teacher_params, xb, loss)
        rng = jax.random.fold_in(key, carry.step)
        objective = student_objective(module, loss, xb, yb, rng, teacher_out, kd_scale)
        trainable = (carry.params, carry.connectors)
        value, grads = jax.value_and_grad(objective)(trainable)
        opt_state = set_lr(carry.opt_state, lr)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        params, connectors = optax.apply_updates(trainable, updates)
        return Carry(params, opt_state, carry.step + 1, connectors), value

    return step
