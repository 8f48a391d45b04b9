"""The distillation step as a TensorFlow expert writes it, outside kdbench.

The yardstick of ``benchmarks/reference/ratio.py``: kdbench's TensorFlow
backend must run the same step at least as fast (ratio >= 0.97). Nothing here
comes from kdbench's backend; only the shapes and the initial weights come
from the spec, so the two compute the same losses and the ratio tool can
check that.

What an expert does, following TensorFlow's guides to tf.function and to
custom training loops with Keras:
- Keras layers (``Conv2D``, ``MaxPooling2D``, ``Flatten``, ``Dense``, ``ReLU``)
  in a ``tf.keras.Sequential``, channels_last (TF's native NHWC): the neutral
  weights load with ``set_weights`` as they are (HWIO conv kernels, (in, out)
  dense kernels, Flatten in (H, W, C) order);
- the split put on the device once as tensors, the batch gathered with
  ``tf.gather`` inside one ``tf.function`` train step, the frozen teacher
  called with ``training=False`` outside the gradient tape;
- the loss from tf.nn: ``sparse_softmax_cross_entropy_with_logits``, and the
  KL from ``log_softmax`` on both sides, batchmean, scaled by T^2
  (``keras.losses.KLDivergence`` clips probabilities at 1e-7, another loss);
- ``tape.gradient`` and ``optimizer.apply_gradients`` of a Keras optimizer;
  the step's learning rate is an argument of the traced step, assigned to
  ``optimizer.learning_rate`` (a variable) inside it: one trace, and no eager
  op per step besides the call;
- ``jit_compile=False`` (JIT below): XLA measured slower on CPU (2-core
  machine, one thread, mnist5k: 12.1 against 10.7 ms a distill step, 131
  against 54 ms a step of the conv teacher's own phase).

The spec's optimizers mean torch.optim's (kdbench follows them), and Keras's
differ from them, so the two Keras optimizers are subclassed where they
do (``update_step``, the documented override) and the update is torch's:
- Keras's Adam adds epsilon to sqrt(v) and folds the bias corrections into
  the step size, i.e. its epsilon is torch's times sqrt(1 - beta2^t); and it
  computes the corrections in float32, where 1 - 0.999^t is off by 1.3e-5
  at t = 1 (torch: Python doubles). Stock Keras Adam drifts 4e-5 from kdbench's
  losses in 40 steps, stock SGD with momentum 2e-4; the subclasses 4e-7;
- Keras's SGD keeps v = mu * v - lr * g (lr inside the velocity) where torch
  keeps b = mu * b + g and steps by lr * b: the same only at a constant lr,
  and the spec's schedule changes lr every step.
Weight decay is torch's (L2 added to the gradient), not Keras's decoupled
``weight_decay``. Dropout is refused in the student: kdbench draws its masks
from its own generator, which no Keras layer reproduces, so the losses could
not be compared (the teacher runs in inference mode, where dropout is a no-op).
"""

from __future__ import annotations

import os

# Quiet TF's C++ INFO and WARNING lines (errors still print); must precede the import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# XLA made both phases' steps slower on CPU (module docstring).
JIT = False


class TorchAdam(tf.keras.optimizers.Adam):
    """Keras's Adam with epsilon on sqrt(v_hat), as in torch.optim.Adam."""

    def update_step(self, gradient: tf.Tensor, variable: Any, learning_rate: Any) -> None:
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        g = tf.cast(gradient, dtype)
        # The bias corrections in float64, like torch's Python scalars.
        t = tf.cast(self.iterations + 1, tf.float64)
        bias1 = tf.cast(1.0 - tf.pow(tf.constant(self.beta_1, tf.float64), t), dtype)
        bias2_sqrt = tf.cast(tf.sqrt(1.0 - tf.pow(tf.constant(self.beta_2, tf.float64), t)), dtype)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        self.assign_add(m, (g - m) * (1.0 - self.beta_1))
        self.assign_add(v, (tf.square(g) - v) * (1.0 - self.beta_2))
        self.assign_sub(variable, (lr / bias1) * m / (tf.sqrt(v) / bias2_sqrt + self.epsilon))


class TorchSGD(tf.keras.optimizers.SGD):
    """Keras's SGD with torch's momentum buffer (b = mu * b + g; p -= lr * b)."""

    def update_step(self, gradient: tf.Tensor, variable: Any, learning_rate: Any) -> None:
        lr = tf.cast(learning_rate, variable.dtype)
        g = tf.cast(gradient, variable.dtype)
        if self.momentum:
            mu = tf.cast(self.momentum, variable.dtype)
            buf = self.momentums[self._get_variable_index(variable)]
            self.assign(buf, buf * mu + g)
            g = g + mu * buf if self.nesterov else tf.convert_to_tensor(buf)
        self.assign_sub(variable, lr * g)


@dataclass
class Reference:
    x: tf.Tensor  # NHWC float32, on the device
    y: tf.Tensor  # int32
    teacher: tf.keras.Sequential | None  # None: the phase trains on labels alone
    student: tf.keras.Sequential
    optimizer: tf.keras.optimizers.Optimizer
    step: Any  # the tf.function (x, y, indices, lr) -> loss


def network(arch: Any, weights: dict[str, np.ndarray]) -> tf.keras.Sequential:
    """Keras layers for a neutral architecture, loaded with the neutral weights.

    One Keras layer per neutral layer, so layer i carries weights "i.kernel"
    and "i.bias", in the layouts Keras uses itself.
    """
    layers: list[tf.keras.layers.Layer] = []
    for _, layer, _, _ in arch.walk():
        kind = layer.type
        if kind == "conv2d":
            layers.append(
                tf.keras.layers.Conv2D(
                    layer.filters, layer.kernel, layer.stride, padding=layer.padding
                )
            )
        elif kind == "dense":
            layers.append(tf.keras.layers.Dense(layer.units))
        elif kind == "maxpool":
            layers.append(tf.keras.layers.MaxPooling2D(layer.size))
        elif kind == "flatten":
            layers.append(tf.keras.layers.Flatten())
        elif kind == "relu":
            layers.append(tf.keras.layers.ReLU())
        elif kind == "dropout":
            layers.append(tf.keras.layers.Dropout(layer.rate))
        else:
            raise TypeError(f"no Keras layer for {layer!r}")
    model = tf.keras.Sequential([tf.keras.Input(tuple(arch.input_shape)), *layers])
    used = set()
    for index, keras_layer in enumerate(model.layers):
        if keras_layer.weights:
            names = [f"{index}.kernel", f"{index}.bias"]
            keras_layer.set_weights([np.asarray(weights[n], np.float32) for n in names])
            used.update(names)
    if used != set(weights):
        raise KeyError(f"weights {sorted(weights)} != parameters {sorted(used)}")
    return model


def optimizer_for(config: dict[str, Any]) -> tf.keras.optimizers.Optimizer:
    if config["name"] == "adam":
        return TorchAdam(
            learning_rate=0.0,  # assigned in every step
            beta_1=config["beta1"],
            beta_2=config["beta2"],
            epsilon=config["eps"],
        )
    if config["name"] == "sgd":
        return TorchSGD(
            learning_rate=0.0,  # assigned in every step
            momentum=config["momentum"],
            nesterov=config["nesterov"],
        )
    raise ValueError(f"no reference optimizer {config['name']!r}")


def loss_of(
    loss: Any, logits: tf.Tensor, labels: tf.Tensor, teacher: tf.Tensor | None
) -> tf.Tensor:
    ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    if loss.method == "none":
        return ce
    if teacher is None:
        raise ValueError(f"method {loss.method!r} needs a teacher")
    if loss.method == "soft":
        t = loss.temperature
        log_s = tf.nn.log_softmax(logits / t, axis=-1)
        log_t = tf.nn.log_softmax(teacher / t, axis=-1)
        kl = tf.reduce_mean(tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=-1))
        return loss.alpha * t * t * kl + (1.0 - loss.alpha) * ce
    if loss.method == "hard":
        pseudo = tf.argmax(teacher, axis=-1, output_type=labels.dtype)
        hard = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(pseudo, logits))
        return loss.alpha * hard + (1.0 - loss.alpha) * ce
    raise ValueError(f"no reference loss for method {loss.method!r}")


def setup(
    x: np.ndarray,
    y: np.ndarray,
    teacher_arch: Any,
    teacher_weights: dict[str, np.ndarray],
    student_arch: Any,
    student_weights: dict[str, np.ndarray],
    optimizer: dict[str, Any],
    loss: Any,
    *,
    seed: int = 0,
    precision: str = "float32",
) -> Reference:
    """The split, both networks, the optimizer and the traced step, made once.

    The process's TensorFlow settings (threads, visible devices) are the
    caller's, as kdbench's backend set them in the ratio tool. teacher_arch
    None: no frozen teacher (the teacher's own training phase, labels alone).
    """
    if precision != "float32":
        raise ValueError(f"no {precision} reference loop yet")
    if any(layer.type == "dropout" for layer in student_arch.layers):
        raise ValueError(
            "the TensorFlow reference has no dropout in the student: kdbench's masks "
            "come from its own generator, so the losses could not be compared"
        )
    tf.keras.utils.set_random_seed(seed)
    teacher = None
    if teacher_arch is not None:
        teacher = network(teacher_arch, teacher_weights)
        teacher.trainable = False
    student = network(student_arch, student_weights)
    opt = optimizer_for(optimizer)
    variables = student.trainable_variables
    opt.build(variables)  # slots made now: a tf.function may not create them later
    weight_decay = float(optimizer["weight_decay"])

    @tf.function(jit_compile=JIT)
    def train_step(x: tf.Tensor, y: tf.Tensor, indices: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        xb, yb = tf.gather(x, indices), tf.gather(y, indices)
        teacher_logits = teacher(xb, training=False) if teacher is not None else None
        with tf.GradientTape() as tape:
            value = loss_of(loss, student(xb, training=True), yb, teacher_logits)
        grads = tape.gradient(value, variables)
        if weight_decay:  # torch's L2: added to the gradient, not to the loss
            grads = [g + weight_decay * v for g, v in zip(grads, variables, strict=True)]
        opt.learning_rate.assign(lr)
        opt.apply_gradients(zip(grads, variables, strict=True))
        return value

    return Reference(
        # identity places the copy on the device (eager constants start on the host).
        x=tf.identity(tf.convert_to_tensor(np.asarray(x, np.float32))),
        y=tf.identity(tf.convert_to_tensor(np.asarray(y, np.int32))),
        teacher=teacher,
        student=student,
        optimizer=opt,
        step=train_step,
    )


def train(ref: Reference, indices: np.ndarray, lrs: np.ndarray) -> np.ndarray:
    """One step per index row with its learning rate; the per-step losses (float64)."""
    rows = indices.reshape(-1, indices.shape[-1]).astype(np.int32)
    losses = [
        ref.step(ref.x, ref.y, tf.constant(idx), tf.constant(lr, tf.float32))
        for idx, lr in zip(rows, lrs.tolist(), strict=True)
    ]
    return tf.stack(losses).numpy().astype(np.float64)
