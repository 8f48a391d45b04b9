"""Neutral architecture -> a flax.linen module, and weights in both directions.

Flax is NHWC with HWIO conv kernels and (in, out) dense kernels, the neutral
layouts, so no array is transposed: only the names change. The parameter of
layer 3 lives at params["3"]["kernel"] and is called "3.kernel" outside.
'VALID' and 'SAME' padding mean what the neutral layers mean ('same' is only
allowed at stride 1 with an odd kernel, where XLA pads k // 2 on each side).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdbench.architectures import Architecture, Conv2D, Dense, Dropout, Flatten, MaxPool, ReLU
from kdbench.backends.base import Weights

Params = dict[str, dict[str, jax.Array]]


class Net(nn.Module):
    """The neutral layer list as one linen module; submodules are named by layer index.

    dtype is what the layers compute in: bfloat16 for precision = "bf16", flax's
    own mixed precision (dtype=bfloat16 on float32 params, param_dtype); the
    logits return as float32 for the softmax and the loss.

    taps (layer indices, a static Python tuple) also returns those layers'
    outputs, float32, for the feature terms: (logits, [features]). Without
    taps the call is the plain forward, so the plain path traces as before."""

    arch: Architecture
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, deterministic: bool = True, taps: tuple[int, ...] = ()
    ) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
        x = x.astype(self.dtype)
        tapped: dict[int, jax.Array] = {}
        for index, layer, _, _ in self.arch.walk():
            if isinstance(layer, Dense):
                x = nn.Dense(
                    layer.units, dtype=self.dtype, param_dtype=jnp.float32, name=str(index)
                )(x)
            elif isinstance(layer, Conv2D):
                x = nn.Conv(
                    layer.filters,
                    (layer.kernel, layer.kernel),
                    strides=(layer.stride, layer.stride),
                    padding=layer.padding.upper(),
                    dtype=self.dtype,
                    param_dtype=jnp.float32,
                    name=str(index),
                )(x)
            elif isinstance(layer, MaxPool):
                size = (layer.size, layer.size)
                x = nn.max_pool(x, size, strides=size, padding="VALID")
            elif isinstance(layer, Flatten):
                x = x.reshape(x.shape[0], -1)  # NHWC order, as the neutral weights assume
            elif isinstance(layer, ReLU):
                x = nn.relu(x)
            elif isinstance(layer, Dropout):
                x = nn.Dropout(layer.rate)(x, deterministic=deterministic)
            else:  # pragma: no cover - the spec admits no other layer
                raise TypeError(f"no flax module for layer {layer!r}")
            if index in taps:
                tapped[index] = x.astype(jnp.float32)
        if not taps:
            return x.astype(jnp.float32)
        return x.astype(jnp.float32), [tapped[index] for index in taps]


def build_module(arch: Architecture, bf16: bool = False) -> Net:
    return Net(arch=arch, dtype=jnp.bfloat16 if bf16 else jnp.float32)


def split_name(name: str) -> tuple[str, str]:
    """'3.kernel' -> ('3', 'kernel'): the submodule and its leaf."""
    index, kind = name.split(".")
    return index, kind


def load_weights(module: Net, weights: Weights, device: jax.Device) -> Params:
    """The params pytree of module holding these weights, on device.

    Strict, like torch's load_state_dict: every parameter the module declares
    must be given with its shape, and nothing else.
    """
    arch = module.arch
    dummy = jax.ShapeDtypeStruct((1, *arch.input_shape), jnp.float32)
    expected = jax.eval_shape(module.init, jax.random.key(0), dummy)["params"]
    want = {f"{i}.{k}": leaf.shape for i, sub in expected.items() for k, leaf in sub.items()}
    got = {name: tuple(np.shape(value)) for name, value in weights.items()}
    if want != got:
        raise ValueError(f"weights do not fit {arch.name}: expected {want}, got {got}")
    params: dict[str, dict[str, Any]] = {}
    for name, value in weights.items():
        index, kind = split_name(name)
        array = np.ascontiguousarray(value, dtype=np.float32)
        params.setdefault(index, {})[kind] = jax.device_put(array, device)
    return params


def _to_numpy(tree: Params, names: list[str]) -> Weights:
    host = jax.device_get(tree)
    out: Weights = {}
    for name in names:
        index, kind = split_name(name)
        out[name] = np.ascontiguousarray(host[index][kind], dtype=np.float32)
    return out


def read_weights(params: Params, names: list[str]) -> Weights:
    return _to_numpy(params, names)


def read_grads(grads: Params, names: list[str]) -> Weights:
    return _to_numpy(grads, names)
