"""A bare JAX distillation loop: the harness's distill phase without the harness.

kdbench/tools/overhead.py times this loop side by side with the harness's
``train_phase`` to measure what the harness adds. Per step it does exactly
what JaxBackend.train_step does under ``train_phase`` (jax.jit, the default
compile mode): one call of a jitted step that takes the state (params,
optimizer state, step counter, batch norm's running statistics; donated),
the device-resident split, the harness's numpy index row and the step's
learning rate (float32), gathers the batch on the device, runs the frozen
teacher deterministically (inference mode) under stop_gradient, the student
forward in training mode and backward (its dropout key folded with the step
counter, its running statistics updated), and the optax update with the
learning rate injected; the loss stays a device array. The models, loss and optimizer come from this
package's model.py, losses.py and optim.py, so the math is the backend's.

Left out, compared with the harness path:
- the clock: two ``time.perf_counter()`` reads per step;
- ``backend.sync(loss)`` after every step: ``jax.block_until_ready`` on the
  loss and the new state, which stops Python dispatching step n + 1 while
  step n runs (JAX dispatches asynchronously, on CPU too); here nothing
  waits until the losses are read at the end;
- the Backend adapter's glue: the method call, the JaxState and JaxModel
  attribute reads and writes, the Carry NamedTuple, the pending-output
  bookkeeping for ``sync``;
- indexing the plan and the lr array per step, the per-epoch handle lists and
  the per-epoch ``to_numpy`` (here one ``device_get`` at the end);
- the phase's statistics (percentiles, FLOPs, peak memory, rusage).

The process's JAX settings (threads, matmul precision, default device) are
whatever the caller set; in the overhead benchmark, the backend's ``setup``
in the same process.
"""

from __future__ import annotations

import os

# JAX would otherwise reserve 75% of a GPU (as backend.py sets it, before the import).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from kdbench.architectures import Architecture  # noqa: E402
from kdbench.backends.base import LossConfig, Weights  # noqa: E402
from kdbench.backends.jax.losses import distill_loss  # noqa: E402
from kdbench.backends.jax.model import (  # noqa: E402
    Params,
    apply_train,
    build_module,
    load_weights,
    variables,
)
from kdbench.backends.jax.optim import make_optimizer, set_lr  # noqa: E402

# params, optimizer state, step counter (int32), batch_stats ({}: no batch norm)
State = tuple[Params, Any, jax.Array, Params]


@dataclass
class BareRun:
    """What the loop needs, made once: data on the device, params, the jitted step."""

    x: jax.Array  # NHWC float32, on the device
    y: jax.Array  # int32
    teacher_params: dict[str, Params]  # the teacher's variables (params, batch_stats)
    key: jax.Array  # the student's dropout key
    state: State  # replaced by every step (its buffers are donated)
    step: Callable[..., tuple[State, jax.Array]]


def bare_setup(
    x: np.ndarray,
    y: np.ndarray,
    teacher_arch: Architecture,
    teacher_weights: Weights,
    student_arch: Architecture,
    student_weights: Weights,
    optimizer: dict[str, Any],
    loss: LossConfig,
    *,
    device: jax.Device | None = None,
    teacher_seed: int = 0,
    student_seed: int = 0,
) -> BareRun:
    """The split on the device once, both models' params, the optimizer, the jitted step.

    teacher_seed is unused (the teacher never runs dropout); it is here so
    the three backends' bare_setup take the same arguments.
    """
    dev = device or jax.devices()[0]
    teacher, student = build_module(teacher_arch), build_module(student_arch)
    teacher_vars = variables(*load_weights(teacher, teacher_weights, dev))
    params, stats = load_weights(student, student_weights, dev)
    tx = make_optimizer(optimizer)

    def train_step(
        state: State,
        x: jax.Array,
        y: jax.Array,
        idx: jax.Array,
        lr: jax.Array,
        key: jax.Array,
        teacher_vars: dict[str, Params],
    ) -> tuple[State, jax.Array]:
        params, opt_state, count, stats = state
        xb, yb = x[idx], y[idx]
        teacher_logits = jax.lax.stop_gradient(teacher.apply(teacher_vars, xb, deterministic=True))
        rng = jax.random.fold_in(key, count)

        def objective(p: Params) -> tuple[jax.Array, Params]:
            logits, new_stats = apply_train(student, p, stats, xb, rng)
            return distill_loss(loss, logits, yb, teacher_logits), new_stats

        (value, stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
        opt_state = set_lr(opt_state, lr)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, count + 1, stats), value

    # Every leaf committed to the device, as the step's outputs are, so the
    # second call finds the first call's executable.
    state = jax.device_put((params, tx.init(params), np.int32(0), stats), dev)
    return BareRun(
        x=jax.device_put(np.ascontiguousarray(x, dtype=np.float32), dev),
        y=jax.device_put(np.ascontiguousarray(y, dtype=np.int32), dev),
        teacher_params=teacher_vars,
        key=jax.device_put(jax.random.key(student_seed), dev),
        state=state,
        step=jax.jit(train_step, donate_argnums=0),
    )


def bare_distill_loop(run: BareRun, indices: np.ndarray, lrs: np.ndarray) -> np.ndarray:
    """Train on every index row in order with its lr; the per-step losses as float64.

    indices is the harness's plan (any leading shape, batch last); a second
    call continues from where the first stopped, as train_phase on one state does.
    """
    rows = indices.reshape(-1, indices.shape[-1])
    step, x, y, key, teacher_params = run.step, run.x, run.y, run.key, run.teacher_params
    state = run.state
    losses = []
    for idx, lr in zip(rows, lrs.astype(np.float32), strict=True):
        state, loss = step(state, x, y, idx, lr, key, teacher_params)
        losses.append(loss)
    run.state = state
    return np.stack(jax.device_get(losses)).astype(np.float64)
