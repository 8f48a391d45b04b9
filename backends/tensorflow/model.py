"""Neutral architecture -> a TensorFlow module, and weights in both directions.

Raw tf.Variables and tf.nn ops rather than Keras layers: TensorFlow is NHWC
with HWIO conv kernels and (in, out) dense kernels, which are exactly the
neutral layouts, so weights load and read back without any transpose, the
variables carry the neutral names ("3.kernel", "3.body.0.kernel" inside a
residual block), and Flatten already runs in the neutral (H, W, C) order.
Keras would add its own naming, build step and optimizer conventions without
buying anything for a fixed layer list.

Batch norm follows PyTorch's convention (kdbench.layers), not Keras's: the
running mean and variance are non-trainable variables ("3.mean", "3.var"),
outside the gradient list and the optimizer; a training-mode forward
normalises with the biased batch variance and, when asked to (the train step,
not loss_and_grads), moves the running statistics towards the batch's with
weight momentum, the variance unbiased (n / (n - 1)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from kdbench.architectures import (
    Architecture,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Layer,
    MaxPool,
    ReLU,
    Residual,
)
from kdbench.backends.base import Weights


class TFModule(tf.Module):
    """The layer list of an architecture over variables named as the neutral weights.

    Dropout in training draws from the module's own tf.random.Generator, seeded
    by build(), so a run is reproducible and independent of TF's global seed.
    """

    def __init__(self, arch: Architecture, seed: int = 0, bf16: bool = False) -> None:
        super().__init__(name=None)
        self.arch = arch
        # bf16: the layers compute in bfloat16 on float32 variables cast at each
        # use (the gradient flows back through the cast to the float32 variable,
        # as under Keras's mixed_bfloat16 policy); the logits return as float32.
        self.compute = tf.bfloat16 if bf16 else tf.float32
        self.layers = list(arch.layers)
        _check_no_nested_dropout(self.layers, "")
        self.params: dict[str, tf.Variable] = {
            name: tf.Variable(tf.zeros(shape, tf.float32), name=name.replace(".", "_"))
            for name, shape in arch.param_shapes().items()
        }
        # Batch norm's running statistics: float32 whatever the compute dtype,
        # never trained (not in variables_in_order), assigned by the train step.
        self.state: dict[str, tf.Variable] = {
            name: tf.Variable(
                tf.zeros(shape, tf.float32), trainable=False, name=name.replace(".", "_")
            )
            for name, shape in arch.state_shapes().items()
        }
        self.rng = tf.random.Generator.from_seed(seed)

    @property
    def variables_in_order(self) -> list[tf.Variable]:
        """The trainable parameters in the neutral order (that of arch.param_shapes())."""
        return list(self.params.values())

    @property
    def weights(self) -> dict[str, tf.Variable]:
        """Every variable by neutral name: parameters, then running statistics."""
        return {**self.params, **self.state}

    def _param(self, name: str) -> tf.Tensor:
        var = self.params[name]
        return var if self.compute == tf.float32 else tf.cast(var, self.compute)

    def __call__(
        self, x: tf.Tensor, training: bool = False, update_state: bool = False
    ) -> tf.Tensor:
        """The logits (float32)."""
        return self.forward(x, training, update_state=update_state)[0]

    def forward(
        self,
        x: tf.Tensor,
        training: bool = False,
        taps: Sequence[int] = (),
        update_state: bool = False,
    ) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """(logits, the outputs of the tapped layers, in the order of taps).

        A tapped feature is the output of top-level layer index (a whole
        residual block's for a block) in the neutral NHWC layout, float32
        whatever the compute dtype (the losses run in float32). Without taps
        the loop adds nothing to the graph, so plain steps trace as before.

        training: batch norm normalises with the batch statistics (and dropout
        drops); update_state: a training forward also assigns batch norm's
        running statistics (the train step; loss_and_grads leaves them be).
        """
        h = x if self.compute == tf.float32 else tf.cast(x, self.compute)
        wanted = set(taps)
        tapped: dict[int, tf.Tensor] = {}
        for index, layer in enumerate(self.layers):
            h = self._layer(layer, f"{index}.", h, training, update_state)
            if index in wanted:
                tapped[index] = h if self.compute == tf.float32 else tf.cast(h, tf.float32)
        logits = h if self.compute == tf.float32 else tf.cast(h, tf.float32)
        return logits, [tapped[index] for index in taps]

    def _chain(
        self, layers: Sequence[Layer], prefix: str, h: tf.Tensor, training: bool, update: bool
    ) -> tf.Tensor:
        for index, layer in enumerate(layers):
            h = self._layer(layer, f"{prefix}{index}.", h, training, update)
        return h

    def _layer(
        self, layer: Layer, name: str, h: tf.Tensor, training: bool, update: bool
    ) -> tf.Tensor:
        """One layer named by its prefix ("3.", "3.body.0.")."""
        if isinstance(layer, Dense):
            h = tf.matmul(h, self._param(f"{name}kernel"))
            return tf.nn.bias_add(h, self._param(f"{name}bias"))
        if isinstance(layer, Conv2D):
            pad, padding = conv_padding(layer)
            if pad:
                h = tf.pad(h, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
            h = tf.nn.conv2d(h, self._param(f"{name}kernel"), strides=layer.stride, padding=padding)
            return tf.nn.bias_add(h, self._param(f"{name}bias")) if layer.bias else h
        if isinstance(layer, ReLU):
            return tf.nn.relu(h)
        if isinstance(layer, BatchNorm):
            return self._batchnorm(layer, name, h, training, update)
        if isinstance(layer, Residual):
            body = self._chain(layer.body, f"{name}body.", h, training, update)
            short = self._chain(layer.shortcut, f"{name}shortcut.", h, training, update)
            return body + short
        if isinstance(layer, MaxPool):
            # VALID floors (h // size) like the neutral shape rule and torch.
            return tf.nn.max_pool2d(h, layer.size, layer.size, "VALID")
        if isinstance(layer, GlobalAvgPool):
            if self.compute == tf.float32:
                return tf.reduce_mean(h, axis=[1, 2])
            # bf16: accumulate in float32, as torch and XLA do for a bf16 mean.
            return tf.cast(tf.reduce_mean(tf.cast(h, tf.float32), axis=[1, 2]), self.compute)
        if isinstance(layer, Flatten):
            return tf.reshape(h, [-1, int(np.prod(h.shape[1:]))])
        if isinstance(layer, Dropout):
            return dropout(h, layer.rate, self.rng) if training else h
        raise TypeError(f"no tensorflow op for layer {layer!r}")  # pragma: no cover

    def _batchnorm(
        self, layer: BatchNorm, name: str, h: tf.Tensor, training: bool, update: bool
    ) -> tf.Tensor:
        """PyTorch's batch norm over every axis but the channels, in float32
        (bf16 in, bf16 out); scale and shift stay float32 variables."""
        x = h if h.dtype == tf.float32 else tf.cast(h, tf.float32)
        scale, shift = self.params[f"{name}scale"], self.params[f"{name}shift"]
        if training:
            axes = list(range(len(x.shape) - 1))
            mean, var = tf.nn.moments(x, axes)  # biased variance, for normalising
            if update:
                self._update_stats(layer, name, x, mean, var)
        else:
            mean, var = self.state[f"{name}mean"], self.state[f"{name}var"]
        # tf.nn.batch_normalization: x * a + (shift - mean * a), a = scale / sqrt(var + eps),
        # one full-size op fewer than (x - mean) * a + shift, and fewer backward. On the
        # 2-core CPU, one thread: ten batch norms on 64x32x32x16, forward and backward,
        # 105 -> 69 ms (Keras's layer: 68); a resnet-speed distillation step 3% faster.
        y = tf.nn.batch_normalization(x, mean, var, shift, scale, layer.eps)
        return y if h.dtype == tf.float32 else tf.cast(y, h.dtype)

    def _update_stats(
        self, layer: BatchNorm, name: str, x: tf.Tensor, mean: tf.Tensor, var: tf.Tensor
    ) -> None:
        """running = (1 - m) running + m batch, the variance unbiased; no gradient."""
        m = layer.momentum
        if x.shape[:-1].is_fully_defined():  # a constant in the graph: no ops a step
            n = float(np.prod(x.shape[:-1]))
        else:
            n = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
        mean, var = tf.stop_gradient(mean), tf.stop_gradient(var)
        running_mean, running_var = self.state[f"{name}mean"], self.state[f"{name}var"]
        running_mean.assign((1.0 - m) * running_mean + m * mean)
        running_var.assign((1.0 - m) * running_var + m * (var * (n / (n - 1.0))))


def conv_padding(layer: Conv2D) -> tuple[int, str]:
    """(zeros to pad on every side first, TF's padding for the conv itself).

    'SAME' where it pads like everyone: the 'same' form (admitted only at
    stride 1 with an odd kernel) and a number k // 2 at stride 1 with an odd
    kernel; otherwise the zeros are padded first (tf.pad) and the conv is
    'VALID', never 'SAME' (at stride 2 TF's 'SAME' pads (0, 1), not (1, 1)).
    Never tf.nn.conv2d's explicit paddings: on CPU that conv was 3x slower
    than 'SAME' forward and backward (ten 3x3 convs on 64x32x32x16, 2 threads:
    153 against 50 ms; tf.pad and 'VALID' 59 ms), and a resnet-speed step
    ran at 0.55-0.70 of Keras's, which pads the same way as here."""
    if layer.padding == "valid" or layer.padding == 0:
        return 0, "VALID"
    if layer.padding == "same":
        return 0, "SAME"
    p = layer.pad
    if layer.stride == 1 and layer.kernel % 2 == 1 and p == layer.kernel // 2:
        return 0, "SAME"
    return p, "VALID"


def _check_no_nested_dropout(layers: Sequence[Layer], where: str) -> None:
    for index, layer in enumerate(layers):
        if isinstance(layer, Residual):
            for part in ("body", "shortcut"):
                inner = getattr(layer, part)
                for j, sub in enumerate(inner):
                    if isinstance(sub, Dropout):
                        raise ValueError(
                            f"layer {where}{index}.{part}.{j}: dropout inside a residual "
                            "block is not supported by the tensorflow backend"
                        )
                _check_no_nested_dropout(inner, f"{where}{index}.{part}.")


def dropout(x: tf.Tensor, rate: float, rng: tf.random.Generator) -> tf.Tensor:
    """Inverted dropout as torch does it: keep with 1 - rate, scale by 1 / (1 - rate)."""
    keep = rng.uniform(tf.shape(x), dtype=tf.float32) >= rate
    return x * tf.cast(keep, x.dtype) * (1.0 / (1.0 - rate))


def build_module(arch: Architecture, seed: int = 0, bf16: bool = False) -> TFModule:
    return TFModule(arch, seed, bf16)


def load_weights(module: TFModule, weights: Weights) -> None:
    """Assign neutral-layout numpy weights (parameters and running statistics);
    the names must match exactly."""
    variables = module.weights
    if set(weights) != set(variables):
        raise KeyError(f"weights {sorted(weights)} != parameters {sorted(variables)}")
    for name, var in variables.items():
        value = np.asarray(weights[name], np.float32)
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"{name}: shape {value.shape} != {tuple(var.shape)}")
        var.assign(value)


def read_weights(module: TFModule, names: Sequence[str]) -> Weights:
    """Parameters and running statistics by neutral name."""
    variables = module.weights
    return {name: np.array(variables[name].numpy(), np.float32) for name in names}


def read_grads(module: TFModule, grads: Sequence[tf.Tensor], names: Sequence[str]) -> Weights:
    """Gradients (in variables_in_order: trainable parameters only) as
    neutral-named numpy arrays.

    Unlike torch, TF returns gradients from the tape instead of storing them
    on the parameters, so they are passed in.
    """
    by_name = dict(zip(module.params, grads, strict=True))
    return {name: np.array(by_name[name].numpy(), np.float32) for name in names}
