"""The distillation step as a TensorFlow expert writes it, outside kdbench.

The yardstick of ``benchmarks/reference/ratio.py``: kdbench's TensorFlow
backend must run the same step at least as fast (ratio >= 0.97). Nothing here
comes from kdbench's backend; only the shapes and the initial weights come
from the spec, so the two compute the same losses and the ratio tool can
check that.

What an expert does, following TensorFlow's guides to tf.function, to custom
training loops with Keras and to mixed precision:
- Keras layers, channels_last (TF's native NHWC), wired with the functional
  API (``tf.keras.Model(inputs, outputs)``): a plain net is a chain, a residual
  block is its body and shortcut from one tensor joined by ``Add`` (an empty
  shortcut is the identity), as Keras's own ResNets are written. The neutral
  weights load with ``set_weights`` as they are (HWIO conv kernels, (in, out)
  dense kernels, Flatten in (H, W, C) order; batch norm's scale, shift and
  running mean and variance are Keras's gamma, beta, moving_mean and
  moving_variance);
- a convolution with p zeros on every side: ``padding="same"`` where that is
  the same thing (stride 1, odd kernel p = k // 2), else an explicit
  ``ZeroPadding2D(p)`` before a "valid" ``Conv2D``: at stride 2 Keras's "same"
  pads (0, 1), PyTorch's padding=1 (1, 1), as Keras's ResNet applications
  pad. ``use_bias=False`` before batch norm;
- ``BatchNormalization(momentum=1 - m, epsilon=eps)``: the spec's momentum is
  PyTorch's (the weight of the new batch), Keras's the weight of the old
  average. The student (and the teacher in its own phase) runs with
  ``training=True``: batch statistics, moving averages assigned by the layer
  itself. Keras moves the variance towards the biased batch variance, PyTorch
  (and kdbench) towards the unbiased one (n / (n - 1)): the native way is kept,
  it changes no training loss (a training forward never reads the averages),
  only a later evaluation, by a factor 1 + 1 / (n - 1) on the batch's share;
- the split put on the device once as tensors, the batch gathered with
  ``tf.gather`` inside one ``tf.function`` train step, the frozen teacher
  (``trainable = False``) called with ``training=False`` outside the gradient
  tape: batch norm on its running statistics;
- the loss from tf.nn: ``sparse_softmax_cross_entropy_with_logits``, and the
  KL from ``log_softmax`` on both sides, batchmean, scaled by T^2
  (``keras.losses.KLDivergence`` clips probabilities at 1e-7, another loss);
- ``tape.gradient`` and ``optimizer.apply_gradients`` of a Keras optimizer;
  the step's learning rate is an argument of the traced step, assigned to
  ``optimizer.learning_rate`` (a variable) inside it: one trace, and no eager
  op per step besides the call;
- ``jit_compile=False`` (JIT below): XLA measured slower on CPU (2-core
  machine, one thread, mnist5k: 12.1 against 10.7 ms a distill step, 131
  against 54 ms a step of the conv teacher's own phase);
- precision "bf16" is Keras's mixed precision: every layer under the
  ``mixed_bfloat16`` policy (bfloat16 compute, float32 variables cast at each
  use, so the gradients, the optimizer's slots and the updates stay float32;
  batch norm and the global mean compute in float32 inside the layer, as Keras
  does), and the logits leave through a float32 ``Activation("linear")``, the
  guide's float32 final activation, so softmax and loss run in float32. No
  loss scaling: bfloat16 has float32's exponent range. The policy is given to
  each layer, not set globally, so it leaves the process's other models be.

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
``weight_decay``: on every trained variable, or (decay = "kernels") on the
conv and dense kernels only. Dropout is refused in the student: kdbench draws
its masks from its own generator, which no Keras layer reproduces, so the
losses could not be compared (the teacher runs in inference mode, where
dropout is a no-op).
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
# The Keras dtype policy of each precision the reference runs.
POLICIES = {"float32": "float32", "bf16": "mixed_bfloat16"}
# Each neutral layer's weights, in the order of the Keras layer's get_weights().
WEIGHT_NAMES = {
    "dense": ("kernel", "bias"),
    "batchnorm": ("scale", "shift", "mean", "var"),  # gamma, beta, moving mean, variance
}


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
    teacher: tf.keras.Model | None  # None: the phase trains on labels alone
    student: tf.keras.Model
    optimizer: tf.keras.optimizers.Optimizer
    step: Any  # the tf.function (x, y, indices, lr) -> loss


def keras_layers(layer: Any, policy: str, name: str) -> list[tf.keras.layers.Layer]:
    """The Keras layers of one neutral (non-residual) layer, the last named name
    (the neutral prefix, "3.body.0"): the one that holds the weights."""
    kind, k, named = layer.type, tf.keras.layers, {"dtype": policy, "name": name}
    if kind == "conv2d":
        pad = layer.pad  # zeros on every side
        same = layer.stride == 1 and layer.kernel % 2 == 1 and pad == layer.kernel // 2
        conv = k.Conv2D(
            layer.filters,
            layer.kernel,
            layer.stride,
            padding="same" if same else "valid",
            use_bias=layer.bias,
            **named,
        )
        if same or pad == 0:
            return [conv]
        return [k.ZeroPadding2D(pad, dtype=policy, name=f"{name}.pad"), conv]
    if kind == "batchnorm":
        return [k.BatchNormalization(momentum=1.0 - layer.momentum, epsilon=layer.eps, **named)]
    simple = {
        "dense": lambda: k.Dense(layer.units, **named),
        "maxpool": lambda: k.MaxPooling2D(layer.size, **named),
        "flatten": lambda: k.Flatten(**named),
        "relu": lambda: k.ReLU(**named),
        "dropout": lambda: k.Dropout(layer.rate, **named),
        "global_avgpool": lambda: k.GlobalAveragePooling2D(**named),
    }
    if kind not in simple:
        raise TypeError(f"no Keras layer for {layer!r}")
    return [simple[kind]()]


def _chain(layers: Any, prefix: str, h: Any, made: dict[str, tuple[Any, Any]], policy: str) -> Any:
    """h through a neutral layer list; made collects (neutral layer, Keras layer) by prefix."""
    for index, layer in enumerate(layers):
        name = f"{prefix}{index}."
        if layer.type == "residual":
            body = _chain(layer.body, f"{name}body.", h, made, policy)
            shortcut = _chain(layer.shortcut, f"{name}shortcut.", h, made, policy)
            h = tf.keras.layers.Add(dtype=policy, name=name[:-1])([body, shortcut])
            continue
        for keras_layer in keras_layers(layer, policy, name[:-1]):
            h = keras_layer(h)
        made[name] = (layer, keras_layer)
    return h


def network(
    arch: Any, weights: dict[str, np.ndarray], precision: str = "float32"
) -> tf.keras.Model:
    """A functional Keras model of a neutral architecture, loaded with the neutral weights.

    Neutral layer "3." (or "3.body.0." in a residual block) is one Keras
    layer (a ZeroPadding2D before it where its padding needs one) carrying
    the weights "3.kernel", "3.bias"..., in the layouts Keras uses itself.
    """
    policy = POLICIES[precision]
    inputs = tf.keras.Input(tuple(arch.input_shape))
    made: dict[str, tuple[Any, Any]] = {}
    logits = _chain(arch.layers, "", inputs, made, policy)
    if policy != "float32":  # the guide's float32 output: softmax and loss in float32
        logits = tf.keras.layers.Activation("linear", dtype="float32")(logits)
    model = tf.keras.Model(inputs, logits)
    used = set()
    for prefix, (layer, keras_layer) in made.items():
        if layer.type == "conv2d":
            leaves = ("kernel", "bias") if layer.bias else ("kernel",)
        else:
            leaves = WEIGHT_NAMES.get(layer.type, ())
        names = [prefix + leaf for leaf in leaves]
        if names:
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


def decays_of(config: dict[str, Any], variables: list[Any]) -> list[float]:
    """torch's L2 of each variable: every one, or (decay "kernels") conv and dense kernels."""
    wd = float(config["weight_decay"])
    if config.get("decay", "all") == "all":
        return [wd] * len(variables)
    return [wd if v.path.endswith("/kernel") else 0.0 for v in variables]


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
    precision: "float32" or "bf16" (Keras's mixed_bfloat16, module docstring).
    """
    if precision not in POLICIES:
        raise ValueError(f"no {precision} reference loop (only {', '.join(POLICIES)})")
    if any(leaf.layer.type == "dropout" for leaf in student_arch.leaves()):
        raise ValueError(
            "the TensorFlow reference has no dropout in the student: kdbench's masks "
            "come from its own generator, so the losses could not be compared"
        )
    tf.keras.utils.set_random_seed(seed)
    teacher = None
    if teacher_arch is not None:
        teacher = network(teacher_arch, teacher_weights, precision)
        teacher.trainable = False  # and called with training=False: running statistics
    student = network(student_arch, student_weights, precision)
    opt = optimizer_for(optimizer)
    variables = student.trainable_variables  # float32 under either policy
    opt.build(variables)  # slots made now: a tf.function may not create them later
    decays = decays_of(optimizer, variables)

    @tf.function(jit_compile=JIT)
    def train_step(x: tf.Tensor, y: tf.Tensor, indices: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        xb, yb = tf.gather(x, indices), tf.gather(y, indices)
        teacher_logits = teacher(xb, training=False) if teacher is not None else None
        with tf.GradientTape() as tape:
            value = loss_of(loss, student(xb, training=True), yb, teacher_logits)
        grads = tape.gradient(value, variables)
        # torch's L2: added to the gradient, not to the loss
        grads = [g + wd * v if wd else g for g, v, wd in zip(grads, variables, decays, strict=True)]
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


@dataclass
class Inference:
    x: tf.Tensor  # the split on the device, NHWC
    forward: Any  # the tf.function (x, indices) -> logits


def setup_inference(
    x: np.ndarray, arch: Any, weights: dict[str, np.ndarray], *, precision: str = "float32"
) -> Inference:
    """The split and the traced forward pass (training=False), for timed inference."""
    if precision not in POLICIES:
        raise ValueError(f"no {precision} reference loop (only {', '.join(POLICIES)})")
    model = network(arch, weights, precision)

    @tf.function(jit_compile=JIT)
    def forward(x: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
        return model(tf.gather(x, indices), training=False)

    return Inference(
        x=tf.identity(tf.convert_to_tensor(np.asarray(x, np.float32))), forward=forward
    )


def infer(ref: Inference, idx: np.ndarray, batches: int) -> np.ndarray:
    """The rows idx through the network, batches times; the last logits (float64)."""
    rows = tf.constant(idx.astype(np.int32))
    for _ in range(batches):
        logits = ref.forward(ref.x, rows)
    return logits.numpy().astype(np.float64)
