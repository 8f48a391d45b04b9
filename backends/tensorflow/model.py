"""Neutral architecture -> a TensorFlow module, and weights in both directions.

Raw tf.Variables and tf.nn ops rather than Keras layers: TensorFlow is NHWC
with HWIO conv kernels and (in, out) dense kernels, which are exactly the
neutral layouts, so weights load and read back without any transpose, the
variables carry the neutral names ("3.kernel"), and Flatten already runs in
the neutral (H, W, C) order. Keras would add its own naming, build step and
optimizer conventions without buying anything for a fixed layer list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from kdbench.architectures import Architecture, Conv2D, Dense, Dropout, Flatten, MaxPool, ReLU
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
        self.params: dict[str, tf.Variable] = {
            name: tf.Variable(tf.zeros(shape, tf.float32), name=name.replace(".", "_"))
            for name, shape in arch.param_shapes().items()
        }
        self.rng = tf.random.Generator.from_seed(seed)

    @property
    def variables_in_order(self) -> list[tf.Variable]:
        """The parameters in the neutral order (that of arch.param_shapes())."""
        return list(self.params.values())

    def _param(self, name: str) -> tf.Tensor:
        var = self.params[name]
        return var if self.compute == tf.float32 else tf.cast(var, self.compute)

    def __call__(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """The logits (float32)."""
        return self.forward(x, training)[0]

    def forward(
        self, x: tf.Tensor, training: bool = False, taps: Sequence[int] = ()
    ) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """(logits, the outputs of the tapped layers, in the order of taps).

        A tapped feature is the output of layer index in the neutral NHWC
        layout, float32 whatever the compute dtype (the losses run in float32).
        Without taps the loop adds nothing to the graph, so plain steps trace as before.
        """
        h = x if self.compute == tf.float32 else tf.cast(x, self.compute)
        wanted = set(taps)
        tapped: dict[int, tf.Tensor] = {}
        for index, layer in enumerate(self.layers):
            if isinstance(layer, Dense):
                h = tf.matmul(h, self._param(f"{index}.kernel"))
                h = tf.nn.bias_add(h, self._param(f"{index}.bias"))
            elif isinstance(layer, Conv2D):
                h = tf.nn.conv2d(
                    h,
                    self._param(f"{index}.kernel"),
                    strides=layer.stride,
                    padding=layer.padding.upper(),
                )
                h = tf.nn.bias_add(h, self._param(f"{index}.bias"))
            elif isinstance(layer, MaxPool):
                # VALID floors (h // size) like the neutral shape rule and torch.
                h = tf.nn.max_pool2d(h, layer.size, layer.size, "VALID")
            elif isinstance(layer, Flatten):
                h = tf.reshape(h, [-1, int(np.prod(h.shape[1:]))])
            elif isinstance(layer, ReLU):
                h = tf.nn.relu(h)
            elif isinstance(layer, Dropout):
                if training:
                    h = dropout(h, layer.rate, self.rng)
            else:  # pragma: no cover - the spec admits no other layer
                raise TypeError(f"no tensorflow op for layer {layer!r}")
            if index in wanted:
                tapped[index] = h if self.compute == tf.float32 else tf.cast(h, tf.float32)
        logits = h if self.compute == tf.float32 else tf.cast(h, tf.float32)
        return logits, [tapped[index] for index in taps]


def dropout(x: tf.Tensor, rate: float, rng: tf.random.Generator) -> tf.Tensor:
    """Inverted dropout as torch does it: keep with 1 - rate, scale by 1 / (1 - rate)."""
    keep = rng.uniform(tf.shape(x), dtype=tf.float32) >= rate
    return x * tf.cast(keep, x.dtype) * (1.0 / (1.0 - rate))


def build_module(arch: Architecture, seed: int = 0, bf16: bool = False) -> TFModule:
    return TFModule(arch, seed, bf16)


def load_weights(module: TFModule, weights: Weights) -> None:
    """Assign neutral-layout numpy weights; the names must match exactly."""
    if set(weights) != set(module.params):
        raise KeyError(f"weights {sorted(weights)} != parameters {sorted(module.params)}")
    for name, var in module.params.items():
        value = np.asarray(weights[name], np.float32)
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"{name}: shape {value.shape} != {tuple(var.shape)}")
        var.assign(value)


def read_weights(module: TFModule, names: Sequence[str]) -> Weights:
    return {name: np.array(module.params[name].numpy(), np.float32) for name in names}


def read_grads(module: TFModule, grads: Sequence[tf.Tensor], names: Sequence[str]) -> Weights:
    """Gradients (in variables_in_order) as neutral-named numpy arrays.

    Unlike torch, TF returns gradients from the tape instead of storing them
    on the parameters, so they are passed in.
    """
    by_name = dict(zip(module.params, grads, strict=True))
    return {name: np.array(by_name[name].numpy(), np.float32) for name in names}
