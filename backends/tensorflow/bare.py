"""A bare TensorFlow distillation loop: the harness's distill phase without the harness.

kdbench/tools/overhead.py times this loop side by side with the harness's
``train_phase`` to measure what the harness adds. Per step it does exactly
what TensorFlowBackend.train_step does under ``train_phase`` (tf.function, the
default compile mode): the harness's numpy index row and the step's learning
rate as tensors (int32, float64), one call of the traced step, which gathers
the batch from the device-resident split, runs the frozen teacher in
inference mode outside the tape, the student forward and backward, and the
torch-convention optimizer update; the loss stays a device tensor. The
models, loss and optimizer come from this package's model.py, losses.py and
optim.py, so the math is the backend's.

The step is called through its ConcreteFunction, got once for the one input
signature, because that is the leanest call TensorFlow offers for a fixed
signature (tf.function.__call__ re-binds its arguments and looks up the trace
every call); the backend calls the same ConcreteFunction through ByShape.

Left out, compared with the harness path:
- the clock: two ``time.perf_counter()`` reads per step;
- ``backend.sync(loss)`` after every step (on CPU a check of TF's executor
  mode; ``sync_devices`` on a GPU);
- the Backend adapter's glue: the method call, ``with tf.device(...)``
  entered per step (here once around the loop), ByShape's signature key
  (shape and dtype of four tensors) and its dict look-up, the TFState
  attribute look-ups;
- indexing the plan and the lr array per step, the per-epoch handle lists and
  the per-epoch ``to_numpy`` (here one stack and one copy at the end);
- the phase's statistics (percentiles, FLOPs, peak memory, rusage).

The process's TensorFlow settings (threads, TF32, determinism, visible
devices) are whatever the caller set; in the overhead benchmark, the
backend's ``setup`` in the same process.
"""

from __future__ import annotations

import os

# Quiet TF's C++ INFO and WARNING lines (errors still print); must precede the import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kdbench.architectures import Architecture  # noqa: E402
from kdbench.backends.base import LossConfig, Weights  # noqa: E402
from kdbench.backends.tensorflow.losses import distill_loss  # noqa: E402
from kdbench.backends.tensorflow.model import TFModule, build_module, load_weights  # noqa: E402
from kdbench.backends.tensorflow.optim import make_optimizer  # noqa: E402


@dataclass
class BareRun:
    """What the loop needs, made once: data on the device, models, the traced step."""

    x: tf.Tensor  # NHWC float32, on the device
    y: tf.Tensor  # int32
    teacher: TFModule
    student: TFModule
    step: Any  # the ConcreteFunction (x, y, indices, lr) -> loss
    device: str


def _module(arch: Architecture, weights: Weights, seed: int) -> TFModule:
    module = build_module(arch, seed)  # seed: the module's own dropout stream
    load_weights(module, weights)
    return module


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
    device: str = "/CPU:0",
    teacher_seed: int = 0,
    student_seed: int = 0,
) -> BareRun:
    """The split on the device once, both models, the optimizer and the traced step."""
    with tf.device(device):
        # identity places the copy on the device (eager constants start on the host).
        x_dev = tf.identity(tf.convert_to_tensor(np.asarray(x, np.float32)))
        y_dev = tf.identity(tf.convert_to_tensor(np.asarray(y, np.int32)))
        teacher = _module(teacher_arch, teacher_weights, teacher_seed)
        student = _module(student_arch, student_weights, student_seed)
        variables = student.variables_in_order
        opt = make_optimizer(variables, optimizer, names=list(student.params))

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor, indices: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        xb = tf.gather(x, indices)
        yb = tf.gather(y, indices)
        teacher_logits = teacher(xb, training=False)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(variables)
            logits = student(xb, training=True, update_state=True)
            value = distill_loss(loss, logits, yb, teacher_logits)
        opt.apply(tape.gradient(value, variables), variables, lr)
        return value

    return BareRun(x_dev, y_dev, teacher, student, train_step, device)


def bare_distill_loop(run: BareRun, indices: np.ndarray, lrs: np.ndarray) -> np.ndarray:
    """Train on every index row in order with its lr; the per-step losses as float64.

    indices is the harness's plan (any leading shape, batch last); a second
    call continues from where the first stopped, as train_phase on one state does.
    """
    rows = indices.reshape(-1, indices.shape[-1])
    x, y = run.x, run.y
    losses = []
    with tf.device(run.device):
        step = run.step.get_concrete_function(
            x, y, tf.TensorSpec(rows.shape[1:], tf.int32), tf.TensorSpec((), tf.float64)
        )
        for idx, lr in zip(rows, lrs.tolist(), strict=True):
            losses.append(step(x, y, tf.constant(idx, tf.int32), tf.constant(lr, tf.float64)))
        return tf.stack(losses).numpy().astype(np.float64)
