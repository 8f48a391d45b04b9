"""The TensorFlow backend: tf.function by default, XLA or plain eager on request.

The model is raw tf.Variables and tf.nn ops (see model.py for why not Keras).
One train step is one tf.function call: it gathers the batch from the
device-resident split, runs the frozen teacher in inference mode outside the
gradient tape (every member of an ensemble; none for offline, whose logits are
gathered from teacher_table's device-resident table), and applies the
torch-convention optimizer (optim.py) to the student and the method's
connectors (FitNet's regressors, tf.Variables in the same optimizer). The
learning rate and the warm-up factor kd_scale are float64 scalar tensor
arguments and the indices an int32 tensor of a fixed shape, so the step is
traced once per phase. A state made with an Augment has a step that also takes
the crops (an int32 (batch, 3) tensor argument: no retrace per draw) and
augments the gathered batch (augment.py) before the teacher and the student
see it; without one the step is the plain one.
"""

from __future__ import annotations

import os

# Quiet TF's C++ INFO and WARNING lines (errors still print); must precede the import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

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
from kdbench.backends.tensorflow import runtime  # noqa: E402
from kdbench.backends.tensorflow.augment import check_augment, gather_augmented  # noqa: E402
from kdbench.backends.tensorflow.model import (  # noqa: E402
    TFModule,
    build_module,
    load_weights,
    read_grads,
    read_weights,
)
from kdbench.backends.tensorflow.optim import Optimizer, learning_rate, make_optimizer  # noqa: E402
from kdbench.backends.tensorflow.step import (  # noqa: E402
    connector_variables,
    loss_and_grads_fn,
    make_train_step,
)

COMPILE_MODES = {"default": "tf.function", "compiled": "tf.function+xla", "eager": "eager"}


@dataclass
class TFModel:
    module: TFModule
    names: list[str]  # every weight: arch.weight_shapes() (parameters, running statistics)
    params: list[str]  # the trainable ones: arch.param_shapes()
    # Inference functions, compiled lazily in the backend's mode and kept so
    # later calls reuse their traces.
    run: Callable[..., tf.Tensor] | None = None
    predict: Callable[..., tf.Tensor] | None = None


@dataclass
class TFData:
    x: tf.Tensor  # NHWC, TF's native layout: no transpose
    y: tf.Tensor  # int32


# What init_train and loss_and_grads take as the teacher: a model, an
# ensemble's members, or teacher_table's logits (offline).
Teacher = TFModel | list[TFModel] | tf.Tensor | None


def _teacher_modules(teacher: Teacher) -> TFModule | list[TFModule] | None:
    """The modules that run as the teacher; None for none or for a table."""
    if isinstance(teacher, TFModel):
        return teacher.module
    if isinstance(teacher, list | tuple):
        return [member.module for member in teacher]
    return None


@dataclass
class TFState:
    model: TFModel
    optimizer: Optimizer
    loss: LossConfig
    teacher: Teacher
    connectors: dict[str, tf.Variable] = field(default_factory=dict)  # neutral names
    step: Callable[..., tf.Tensor] | None = None  # the tf.function (or plain fn)
    call: Callable[..., tf.Tensor] | None = None  # how train_step calls it
    # How often the step's Python body ran: once per input shape under
    # tf.function (the tests pin that), once per step in eager mode.
    traces: int = 0
    # The last kd_scale and its tensor: after the warm-up every step reuses it.
    kd_scale: tuple[float, tf.Tensor] | None = None
    augment: Augment | None = None  # every step's batch is augmented with its crops


class ByShape:
    """Calls a tf.function through the concrete function of each input signature.

    tf.function.__call__ binds and canonicalises its arguments and looks up
    the trace on every call, about 0.2 ms of Python on the 2-core CPU; that is
    a fifth of a 64-sample MLP step. A ConcreteFunction, the public handle to
    one trace, skips it. New shapes or dtypes still get their own trace.
    """

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.concrete: dict[tuple[Any, ...], Any] = {}

    def __call__(self, *args: tf.Tensor) -> Any:
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        concrete = self.concrete.get(key)
        if concrete is None:
            concrete = self.concrete[key] = self.fn.get_concrete_function(*args)
        return concrete(*args)


class TensorFlowBackend(Backend):
    name = "tensorflow"

    def __init__(self) -> None:
        super().__init__()
        self.gpu = False
        self._device = "/CPU:0"
        # augmented_batch's compiled functions, one per Augment (kept: no retrace).
        self._augmenters: dict[Augment, Callable[..., tf.Tensor]] = {}

    @property
    def device(self) -> str:
        return self._device

    def apply_settings(self, settings: Settings) -> None:
        self.gpu = runtime.apply_settings(settings)
        self._device = "/GPU:0" if self.gpu else "/CPU:0"
        self._augmenters = {}  # compiled in the previous mode

    @property
    def compile_mode(self) -> str:
        return COMPILE_MODES[self.settings.compile]

    def environment(self) -> Environment:
        return runtime.environment(self.gpu, self.compile_mode, self.settings.bf16)

    def bare_loop(self) -> BareLoop:
        from kdbench.backends.tensorflow import bare

        return bare

    def _compile(self, fn: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
        """fn as the settings ask: traced, traced and XLA-compiled, or eager."""
        if self.settings.compile == "eager":
            return fn
        return tf.function(fn, jit_compile=self.settings.compile == "compiled", **kwargs)

    def put_dataset(self, x: np.ndarray, y: np.ndarray) -> TFData:
        with tf.device(self.device):
            # identity places the copy on the device (eager constants start on the host).
            return TFData(
                x=tf.identity(tf.convert_to_tensor(np.asarray(x, np.float32))),
                y=tf.identity(tf.convert_to_tensor(np.asarray(y, np.int32))),
            )

    def build(self, arch: Architecture, weights: Weights, seed: int = 0) -> TFModel:
        with tf.device(self.device):
            module = build_module(arch, seed, self.settings.bf16)
            load_weights(module, weights)
        return TFModel(
            module=module, names=list(arch.weight_shapes()), params=list(arch.param_shapes())
        )

    def get_weights(self, model: TFModel) -> Weights:
        return read_weights(model.module, model.names)

    def _compile_inference(
        self, fn: Callable[..., tf.Tensor], signature: list[tf.TensorSpec]
    ) -> Callable[..., tf.Tensor]:
        """An inference function whose batch size may vary without a retrace."""
        if self.settings.compile == "eager":
            return fn
        return self._compile(fn, input_signature=signature)

    def _run_fn(self, model: TFModel) -> Callable[..., tf.Tensor]:
        if model.run is None:
            module = model.module

            def run(x: tf.Tensor) -> tf.Tensor:
                return module(x, training=False)

            shape = (None, *module.arch.input_shape)
            model.run = self._compile_inference(run, [tf.TensorSpec(shape, tf.float32)])
        return model.run

    def forward(self, model: TFModel, x: np.ndarray) -> np.ndarray:
        with tf.device(self.device):
            return self._run_fn(model)(tf.constant(x, tf.float32)).numpy()

    def loss_and_grads(
        self,
        model: TFModel,
        x: np.ndarray,
        y: np.ndarray,
        loss: LossConfig,
        teacher: Teacher = None,
        connectors: Weights | None = None,
        kd_scale: float = 1.0,
    ) -> tuple[float, Weights]:
        """A table as the teacher must hold this batch's logits, row for row."""
        table = teacher if isinstance(teacher, tf.Tensor) else None
        if table is not None and table.shape[0] != len(x):
            raise ValueError(
                f"a teacher table here is the batch's logits: {table.shape[0]} rows "
                f"for {len(x)} samples"
            )
        with tf.device(self.device):
            conn = connector_variables(connectors)
        grads_of, _ = loss_and_grads_fn(
            loss, model.module, _teacher_modules(teacher), conn, table is not None
        )

        def run(xb: tf.Tensor, yb: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
            return grads_of(xb, yb, kd_scale, table)

        with tf.device(self.device):
            value, grads = self._compile(run)(tf.constant(x, tf.float32), tf.constant(y, tf.int32))
        n = len(model.params)
        out = read_grads(model.module, grads[:n], model.params)
        out.update(
            {name: np.array(g.numpy(), np.float32) for name, g in zip(conn, grads[n:], strict=True)}
        )
        return float(value.numpy()), out

    def init_train(
        self,
        model: TFModel,
        optimizer: dict[str, Any],
        loss: LossConfig,
        teacher: Teacher = None,
        connectors: Weights | None = None,
        augment: Augment | None = None,
    ) -> TFState:
        if augment is not None:
            check_augment(augment, model.module.arch.input_shape)
        # offline: the table, captured by the step, stands in for a teacher run.
        table = teacher if isinstance(teacher, tf.Tensor) else None
        with tf.device(self.device):
            conn = connector_variables(connectors)
            # The step assigns the student's batch norm running statistics.
            grads_of, variables = loss_and_grads_fn(
                loss,
                model.module,
                _teacher_modules(teacher),
                conn,
                table is not None,
                update_state=True,
            )
            # The trained variables by neutral name (what decides their weight decay).
            opt = make_optimizer(variables, optimizer, names=[*model.module.params, *conn])
        state = TFState(
            model=model,
            optimizer=opt,
            loss=loss,
            teacher=teacher,
            connectors=conn,
            augment=augment,
        )

        def traced() -> None:
            state.traces += 1

        step = make_train_step(grads_of, variables, opt, table, augment, traced)
        state.step = self._compile(step)
        state.call = state.step if self.settings.compile == "eager" else ByShape(state.step)
        return state

    def train_step(
        self,
        state: TFState,
        data: TFData,
        indices: np.ndarray,
        lr: float,
        kd_scale: float = 1.0,
        crops: np.ndarray | None = None,
    ) -> tuple[TFState, tf.Tensor]:
        if state.call is None:
            raise RuntimeError("train_step needs a state made by init_train")
        if (crops is None) != (state.augment is None):
            raise ValueError(
                "crops are given to a train step exactly when init_train had an augment"
            )
        with tf.device(self.device):
            if state.kd_scale is None or state.kd_scale[0] != kd_scale:
                state.kd_scale = (kd_scale, tf.constant(kd_scale, tf.float64))
            args = (
                data.x,
                data.y,
                tf.constant(indices, tf.int32),
                learning_rate(lr),
                state.kd_scale[1],
            )
            if crops is None:  # the plain step, called as it always was
                loss = state.call(*args)
            else:
                loss = state.call(*args, tf.constant(crops, tf.int32))
        return state, loss

    def augmented_batch(
        self, data: TFData, indices: np.ndarray, augment: Augment, crops: np.ndarray
    ) -> np.ndarray:
        """The batch an augmented train step sees, computed by the step's own
        code (augment.gather_augmented, compiled in the backend's mode)."""
        run = self._augmenters.get(augment)
        if run is None:

            def augmented(x: tf.Tensor, idx: tf.Tensor, crops: tf.Tensor) -> tf.Tensor:
                return gather_augmented(x, idx, crops, augment)

            run = self._augmenters[augment] = self._compile(augmented)
        with tf.device(self.device):
            out = run(data.x, tf.constant(indices, tf.int32), tf.constant(crops, tf.int32))
        return np.asarray(out.numpy())

    def trained_connectors(self, state: TFState) -> Weights:
        return {name: np.array(var.numpy(), np.float32) for name, var in state.connectors.items()}

    def teacher_table(self, model: TFModel, data: TFData, batch_size: int) -> tf.Tensor:
        """Inference logits of every sample, in order, one batch at a time (the
        compiled inference function takes the ragged last batch without a
        retrace); concatenated on the device for offline's per-step gather."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        run = self._run_fn(model)
        n = int(data.x.shape[0])
        with tf.device(self.device):
            if n == 0:
                return tf.zeros((0, model.module.arch.classes), tf.float32)
            parts = [run(data.x[i : i + batch_size]) for i in range(0, n, batch_size)]
            return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)

    def trained_model(self, state: TFState) -> TFModel:
        return state.model

    def predict(self, model: TFModel, data: TFData, indices: np.ndarray) -> tf.Tensor:
        if model.predict is None:
            module = model.module

            def predict(x: tf.Tensor, idx: tf.Tensor) -> tf.Tensor:
                return module(tf.gather(x, idx), training=False)

            # Unknown sizes: the ragged last batch and other splits reuse the trace.
            signature = [
                tf.TensorSpec((None, *module.arch.input_shape), tf.float32),
                tf.TensorSpec((None,), tf.int32),
            ]
            model.predict = self._compile_inference(predict, signature)
        with tf.device(self.device):
            return model.predict(data.x, tf.constant(indices, tf.int32))

    def to_numpy(self, handle: Any) -> np.ndarray:
        if isinstance(handle, list | tuple):
            return tf.stack(list(handle)).numpy()
        return handle.numpy()

    def sync(self, *handles: Any) -> None:
        # On CPU with TF's default synchronous executor a call returns only when
        # its kernels have run; GPU kernels run on streams and need a real sync.
        if self.gpu or not tf.config.experimental.get_synchronous_execution():
            tf.test.experimental.sync_devices()

    def matmul_probe(self, n: int, dtype: str) -> Callable[[], tf.Tensor]:
        kind = {"float32": tf.float32, "bfloat16": tf.bfloat16}[dtype]
        rng = np.random.default_rng(0)
        with tf.device(self.device):
            a = tf.cast(tf.constant(rng.standard_normal((n, n), dtype=np.float32)), kind)
            b = tf.cast(tf.constant(rng.standard_normal((n, n), dtype=np.float32)), kind)
        matmul = tf.function(tf.linalg.matmul).get_concrete_function(a, b)
        return lambda: matmul(a, b)

    def reset_peak_memory(self) -> None:
        if self.gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")

    def peak_memory(self) -> int | None:
        if self.gpu:
            return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
        return None
