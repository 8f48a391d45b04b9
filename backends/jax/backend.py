"""The JAX backend: flax.linen + optax, one jax.jit train step per phase.

Why linen and not nnx: a linen module is a pure function of an explicit
params pytree, so the whole training state (params, connectors, optimizer
state, step counter, batch norm's running statistics) is one pytree that
jax.jit takes, donates and returns; nothing is split from or merged back
into Python objects on each call, which nnx.jit does (or which one would do
by hand with nnx.split/merge around jax.jit).
The jitted step stays the leanest form JAX offers, and the step a reader
sees is plain jax.

The XLA environment variables are read when JAX creates its clients, not at
import, but the allocator flag is set here before jax is imported anyway so
no import order can defeat it: JAX would otherwise reserve 75% of a GPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kdbench.architectures import Architecture  # noqa: E402
from kdbench.backends.base import (  # noqa: E402
    Augment,
    Backend,
    BareLoop,
    Environment,
    LossConfig,
    Settings,
    Weights,
)
from kdbench.backends.jax import runtime  # noqa: E402
from kdbench.backends.jax.augment import gather_augmented, gather_augmented_jit  # noqa: E402
from kdbench.backends.jax.model import (  # noqa: E402
    Net,
    Params,
    build_module,
    load_weights,
    read_grads,
    read_weights,
    variables,
)
from kdbench.backends.jax.optim import make_optimizer  # noqa: E402
from kdbench.backends.jax.step import (  # noqa: E402
    TABLE,
    Carry,
    Connectors,
    TeacherKind,
    make_teach,
    make_train_step,
    student_objective,
)


@dataclass
class JaxModel:
    module: Net
    params: Params  # kept current by train_step, as torch updates a module in place
    names: list[str]  # the trainable parameters' neutral names
    key: jax.Array  # the root of this model's dropout stream (build's seed)
    batch_stats: Params = field(default_factory=dict)  # running statistics ({}: no batch norm)
    state_names: list[str] = field(default_factory=list)  # their neutral names

    @property
    def variables(self) -> dict[str, Params]:
        """What module.apply takes: the params, and the batch_stats where there are any."""
        return variables(self.params, self.batch_stats)


@dataclass
class JaxData:
    x: jax.Array  # NHWC float32
    y: jax.Array  # int32


@dataclass
class JaxState:
    model: JaxModel
    carry: Carry
    step_fn: Callable[..., tuple[Carry, jax.Array]]
    loss: LossConfig
    teacher_arg: Any  # the step's teacher argument: variables, a list of them, a table
    traces: list[int] = field(default_factory=lambda: [0])  # times step_fn was traced
    augment: Augment | None = None  # every step's batch is augmented with its crops


def _logits(module: Net, variables: dict[str, Params], x: jax.Array, idx: Any) -> jax.Array:
    """Inference logits of the batch x[idx], gathered on the device (batch norm
    on its running statistics)."""
    return module.apply(variables, x[idx], deterministic=True)


# The module is static (hashable by its architecture), so models of one
# architecture share one compiled eval step.
_logits_jit = jax.jit(_logits, static_argnums=0)


def _teacher_parts(
    teacher: JaxModel | Sequence[JaxModel] | jax.Array | None,
) -> tuple[TeacherKind, Any]:
    """What the step is built with (the modules, or TABLE) and what it is given
    at every call (the variables, or the table): a model, an ensemble's list, a table."""
    if teacher is None:
        return None, None
    if isinstance(teacher, JaxModel):
        return teacher.module, teacher.variables
    if isinstance(teacher, list | tuple):
        return tuple(m.module for m in teacher), [m.variables for m in teacher]
    if isinstance(teacher, jax.Array):
        return TABLE, teacher
    raise TypeError(f"a teacher is a model, a list of models or a teacher_table, not {teacher!r}")


def _host(connectors: Connectors) -> Weights:
    """Connector arrays (or their gradients) as float32 numpy, neutral names."""
    host = jax.device_get(connectors)
    return {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in host.items()}


def _arrays(handle: Any) -> Any:
    """The device arrays behind one of this backend's handles (a pytree)."""
    if isinstance(handle, JaxState):
        return handle.carry
    if isinstance(handle, JaxModel):
        return handle.variables
    if isinstance(handle, JaxData):
        return (handle.x, handle.y)
    return handle


class JaxBackend(Backend):
    name = "jax"
    waits_per_handle = True  # block_until_ready waits for the arrays named, nothing after

    def __init__(self) -> None:
        super().__init__()
        self._device: jax.Device | None = None  # asking now would create XLA's clients
        self.flags_before_init = False  # whether setup ran before XLA created its clients

    def apply_settings(self, settings: Settings) -> None:
        self._device, self.flags_before_init = runtime.apply_settings(settings)

    @property
    def device(self) -> jax.Device:
        if self._device is None:  # setup() was skipped: JAX's default device
            self._device = jax.devices()[0]
        return self._device

    @property
    def jit(self) -> bool:
        return self.settings.compile != "eager"

    @property
    def compile_mode(self) -> str:
        return "jax.jit" if self.jit else "jax.eager"

    def environment(self) -> Environment:
        return runtime.environment(
            self.device, self.compile_mode, self.flags_before_init, self.settings.bf16
        )

    def bare_loop(self) -> BareLoop:
        from kdbench.backends.jax import bare

        return bare

    def put_dataset(self, x: np.ndarray, y: np.ndarray) -> JaxData:
        return JaxData(
            x=jax.device_put(np.ascontiguousarray(x, dtype=np.float32), self.device),
            y=jax.device_put(np.ascontiguousarray(y, dtype=np.int32), self.device),
        )

    def build(self, arch: Architecture, weights: Weights, seed: int = 0) -> JaxModel:
        module = build_module(arch, self.settings.bf16)
        params, stats = load_weights(module, weights, self.device)
        key = jax.device_put(jax.random.key(seed), self.device)
        return JaxModel(
            module=module,
            params=params,
            names=list(arch.param_shapes()),
            key=key,
            batch_stats=stats,
            state_names=list(arch.state_shapes()),
        )

    def get_weights(self, model: JaxModel) -> Weights:
        """The parameters, then batch norm's running statistics (arch.weight_shapes())."""
        return {
            **read_weights(model.params, model.names),
            **read_weights(model.batch_stats, model.state_names),
        }

    def _eval(self, model: JaxModel, x: jax.Array, idx: Any) -> jax.Array:
        run = _logits_jit if self.jit else _logits
        return run(model.module, model.variables, x, idx)

    def forward(self, model: JaxModel, x: np.ndarray) -> np.ndarray:
        xb = jax.device_put(np.ascontiguousarray(x, dtype=np.float32), self.device)
        return np.asarray(self._eval(model, xb, np.arange(len(x), dtype=np.int32)))

    def forward_cost_analysis(self, model: JaxModel, x: np.ndarray) -> float | None:
        """XLA's own FLOP count of the compiled inference step on x (for the FLOP tests).

        None where the platform reports no cost analysis.
        """
        xb = jax.device_put(np.ascontiguousarray(x, dtype=np.float32), self.device)
        idx = np.arange(len(x), dtype=np.int32)
        compiled = _logits_jit.lower(model.module, model.variables, xb, idx).compile()
        cost = compiled.cost_analysis()
        if isinstance(cost, list | tuple):  # older jax: one dict per computation
            cost = cost[0] if cost else None
        if not cost or "flops" not in cost:
            return None
        return float(cost["flops"])

    def loss_and_grads(
        self,
        model: JaxModel,
        x: np.ndarray,
        y: np.ndarray,
        loss: LossConfig,
        teacher: JaxModel | Sequence[JaxModel] | None = None,
        connectors: Weights | None = None,
        kd_scale: float = 1.0,
    ) -> tuple[float, Weights]:
        xb = jax.device_put(np.ascontiguousarray(x, dtype=np.float32), self.device)
        yb = jax.device_put(np.asarray(y, dtype=np.int32), self.device)
        module = model.module
        kind, teacher_arg = _teacher_parts(teacher)
        if kind == TABLE:  # its rows are the split's samples, not this batch's
            raise ValueError("a teacher_table is gathered by train_step's indices; give a model")
        teach = make_teach(kind, loss)

        def grad_fn(
            trainable: tuple[Params, Connectors],
            stats: Params,
            teacher_arg: Any,
            scale: jax.Array,
        ) -> tuple[jax.Array, tuple[Params, Connectors]]:
            teacher_out = teach(teacher_arg, xb, None)
            objective = student_objective(
                module, loss, xb, yb, model.key, teacher_out, scale, stats
            )
            # Training mode (batch statistics); the updated running statistics
            # are dropped: this leaves the model as it was.
            (value, _), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
            return value, grads

        trainable = (model.params, self._put_connectors(connectors))
        run = jax.jit(grad_fn) if self.jit else grad_fn
        value, (grads, conn_grads) = run(
            trainable, model.batch_stats, teacher_arg, np.float32(kd_scale)
        )
        return float(value), {**read_grads(grads, model.names), **_host(conn_grads)}

    def _put_connectors(self, connectors: Weights | None) -> Connectors:
        """The connectors as float32 device arrays, under their neutral names."""
        return {
            name: jax.device_put(np.ascontiguousarray(value, dtype=np.float32), self.device)
            for name, value in (connectors or {}).items()
        }

    def init_train(
        self,
        model: JaxModel,
        optimizer: dict[str, Any],
        loss: LossConfig,
        teacher: JaxModel | Sequence[JaxModel] | jax.Array | None = None,
        connectors: Weights | None = None,
        augment: Augment | None = None,
    ) -> JaxState:
        # The teacher is frozen: its params (an ensemble's list of them, or the
        # offline table) are an argument of the step, not part of the carry the
        # optimizer updates, and it runs deterministic (inference mode: batch
        # norm on its running statistics). The connectors train with the
        # student: one optimizer over both. The student's running statistics
        # ride in the carry, outside the optimizer.
        tx = make_optimizer(optimizer)
        traces = [0]
        kind, teacher_arg = _teacher_parts(teacher)
        step = make_train_step(model.module, tx, loss, kind, traces, augment)
        step_fn = jax.jit(step, donate_argnums=0) if self.jit else step
        conn = self._put_connectors(connectors)
        carry = Carry(
            params=model.params,
            opt_state=tx.init((model.params, conn)),
            step=np.int32(0),
            connectors=conn,
            batch_stats=model.batch_stats,
        )
        # Every leaf committed to the device, as the step's outputs will be:
        # otherwise the second step would compile again for the new placement.
        carry = jax.device_put(carry, self.device)
        return JaxState(model, carry, step_fn, loss, teacher_arg, traces, augment)

    def train_step(
        self,
        state: JaxState,
        data: JaxData,
        indices: np.ndarray,
        lr: float,
        kd_scale: float = 1.0,
        crops: np.ndarray | None = None,
    ) -> tuple[JaxState, jax.Array]:
        args = (
            state.carry,
            data.x,
            data.y,
            indices,
            np.float32(lr),
            np.float32(kd_scale),
            state.model.key,
            state.teacher_arg,
        )
        if (crops is None) != (state.augment is None):
            raise ValueError(
                "crops are given to a train step exactly when init_train had an augment"
            )
        if crops is None:  # the plain step, called as it always was
            state.carry, loss = state.step_fn(*args)
        else:
            state.carry, loss = state.step_fn(*args, np.asarray(crops, dtype=np.int32))
        state.model.params = state.carry.params  # the old buffers were donated
        state.model.batch_stats = state.carry.batch_stats
        return state, loss

    def augmented_batch(
        self, data: JaxData, indices: np.ndarray, augment: Augment, crops: np.ndarray
    ) -> np.ndarray:
        """The batch an augmented train step sees, computed by the step's own code."""
        run = gather_augmented_jit if self.jit else gather_augmented
        out = run(data.x, indices, np.asarray(crops, dtype=np.int32), augment)
        return np.asarray(jax.device_get(out))

    def trained_connectors(self, state: JaxState) -> Weights:
        return _host(state.carry.connectors)

    def teacher_table(self, model: JaxModel, data: JaxData, batch_size: int) -> jax.Array:
        """Inference logits of every sample, in order, left on the device: the
        offline step gathers its batch's rows instead of running the teacher."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = int(data.x.shape[0])
        parts = [
            self._eval(model, data.x, np.arange(start, min(start + batch_size, n), dtype=np.int32))
            for start in range(0, n, batch_size)
        ]
        return jnp.concatenate(parts) if len(parts) != 1 else parts[0]

    def trained_model(self, state: JaxState) -> JaxModel:
        return state.model

    def predict(self, model: JaxModel, data: JaxData, indices: np.ndarray) -> jax.Array:
        return self._eval(model, data.x, indices)

    def to_numpy(self, handle: Any) -> np.ndarray:
        if isinstance(handle, list | tuple):
            return np.stack(jax.device_get(list(handle)))
        return np.asarray(jax.device_get(handle))

    def sync(self, *handles: Any) -> None:
        # JAX dispatches asynchronously and has no "wait for the device": wait
        # for the arrays behind each handle (a state's whole carry, not just
        # its loss, so the update is done too).
        jax.block_until_ready([_arrays(h) for h in handles])

    def matmul_probe(self, n: int, dtype: str) -> Callable[[], jax.Array]:
        kind = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
        rng = np.random.default_rng(0)
        a = jax.device_put(rng.standard_normal((n, n), dtype=np.float32), self.device).astype(kind)
        b = jax.device_put(rng.standard_normal((n, n), dtype=np.float32), self.device).astype(kind)
        matmul = jax.jit(jnp.matmul)
        return lambda: matmul(a, b)

    def reset_peak_memory(self) -> None:
        # JAX has no reset of its high-water mark; peak_memory says so.
        pass

    def peak_memory(self) -> int | None:
        """The device's peak bytes in use since the process started.

        JAX cannot reset this counter, so after the first phase of a cell it
        is an upper bound for the phase (the maximum over the phases so far);
        every cell is a fresh process, so it never spans two cells. None where
        the device keeps no statistics (CPU).
        """
        stats = runtime.memory_stats(self.device)
        if not stats or "peak_bytes_in_use" not in stats:
            return None
        return int(stats["peak_bytes_in_use"])
