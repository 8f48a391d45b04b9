"""Neutral architecture -> a flax.linen module, and weights in both directions.

Flax is NHWC with HWIO conv kernels and (in, out) dense kernels, the neutral
layouts, so no array is transposed: only the names change. The parameter of
layer 3 lives at params["3"]["kernel"] and is called "3.kernel" outside; a
layer inside a residual block at top-level index 3 is the submodule
"3.body.0" ("3.body.0.kernel" outside), so a neutral name splits at its last
dot. Batch norm's running statistics live in the collection "batch_stats"
("3.mean" -> batch_stats["3"]["mean"]), apart from the trainable params.
'VALID' and 'SAME' padding mean what the neutral layers mean ('same' is only
allowed at stride 1 with an odd kernel, where XLA pads k // 2 on each side);
an integer padding p is ((p, p), (p, p)), never 'SAME'.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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

Params = dict[str, dict[str, jax.Array]]  # submodule -> leaf -> array (also batch_stats)
STATS = "batch_stats"


class TorchBatchNorm(nn.Module):
    """Batch normalisation in PyTorch's convention (kdbench.layers), not flax's.

    Training mode (train=True): normalise with the batch's mean and biased
    variance over every axis but the last; where the collection batch_stats is
    mutable, also update running = (1 - momentum) * running + momentum * batch
    with the unbiased batch variance (n / (n - 1)). Inference mode: normalise
    with the running statistics. Statistics and normalisation in float32
    (also under bf16 compute); the output in the compute dtype.
    """

    eps: float
    momentum: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        shift = self.param("shift", nn.initializers.zeros, (channels,), jnp.float32)
        running_mean = self.variable(STATS, "mean", jnp.zeros, (channels,), jnp.float32)
        running_var = self.variable(STATS, "var", jnp.ones, (channels,), jnp.float32)
        x = x.astype(jnp.float32)
        if train:
            n = x.size // channels
            if n < 2:
                raise ValueError(
                    f"batch norm in training mode needs more than one value per channel, "
                    f"got input shape {x.shape}"
                )
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)  # biased: what normalises
            if self.is_mutable_collection(STATS) and not self.is_initializing():
                m = self.momentum
                batch_mean = jax.lax.stop_gradient(mean)
                unbiased = jax.lax.stop_gradient(var) * (n / (n - 1))
                running_mean.value = (1.0 - m) * running_mean.value + m * batch_mean
                running_var.value = (1.0 - m) * running_var.value + m * unbiased
        else:
            mean, var = running_mean.value, running_var.value
        y = (x - mean) * (scale * jax.lax.rsqrt(var + self.eps)) + shift
        return y.astype(self.dtype)


def _run(
    layers: tuple[Layer, ...] | list[Layer],
    x: jax.Array,
    prefix: str,
    dtype: Any,
    deterministic: bool,
    taps: tuple[int, ...] = (),
    tapped: dict[int, jax.Array] | None = None,
) -> jax.Array:
    """Apply a layer list inside Net's compact call; submodules named prefix + index.

    Only the top level (prefix "") is tapped."""
    for index, layer in enumerate(layers):
        name = f"{prefix}{index}"
        if isinstance(layer, Dense):
            x = nn.Dense(layer.units, dtype=dtype, param_dtype=jnp.float32, name=name)(x)
        elif isinstance(layer, Conv2D):
            pad = layer.padding
            x = nn.Conv(
                layer.filters,
                (layer.kernel, layer.kernel),
                strides=(layer.stride, layer.stride),
                padding=pad.upper() if isinstance(pad, str) else ((pad, pad), (pad, pad)),
                use_bias=layer.bias,
                dtype=dtype,
                param_dtype=jnp.float32,
                name=name,
            )(x)
        elif isinstance(layer, BatchNorm):
            bn = TorchBatchNorm(layer.eps, layer.momentum, dtype=dtype, name=name)
            x = bn(x, train=not deterministic)
        elif isinstance(layer, Residual):
            body = _run(layer.body, x, f"{name}.body.", dtype, deterministic)
            short = _run(layer.shortcut, x, f"{name}.shortcut.", dtype, deterministic)
            x = body + short
        elif isinstance(layer, MaxPool):
            size = (layer.size, layer.size)
            x = nn.max_pool(x, size, strides=size, padding="VALID")
        elif isinstance(layer, GlobalAvgPool):
            x = jnp.mean(x, axis=(1, 2))
        elif isinstance(layer, Flatten):
            x = x.reshape(x.shape[0], -1)  # NHWC order, as the neutral weights assume
        elif isinstance(layer, ReLU):
            x = nn.relu(x)
        elif isinstance(layer, Dropout):
            x = nn.Dropout(layer.rate)(x, deterministic=deterministic)
        else:  # pragma: no cover - the spec admits no other layer
            raise TypeError(f"no flax module for layer {layer!r}")
        if tapped is not None and index in taps:
            tapped[index] = x.astype(jnp.float32)
    return x


class Net(nn.Module):
    """The neutral layer list as one linen module; submodules are named by layer
    index ("3", and "3.body.0" inside a residual block at index 3).

    deterministic=False is training mode: dropout draws masks and batch norm
    normalises with the batch's statistics (updating the running ones where
    the caller makes batch_stats mutable); True is inference mode.

    dtype is what the layers compute in: bfloat16 for precision = "bf16", flax's
    own mixed precision (dtype=bfloat16 on float32 params, param_dtype); the
    logits return as float32 for the softmax and the loss.

    taps (top-level layer indices, a static Python tuple) also returns those
    layers' outputs, float32, for the feature terms: (logits, [features]).
    Without taps the call is the plain forward, so the plain path traces as before."""

    arch: Architecture
    dtype: Any = jnp.float32

    def __hash__(self) -> int:
        # jax.jit takes the module as a static argument (the eval step), so it
        # must hash; a residual block's layer lists do not. Equal modules hash
        # equal, and the dataclass __eq__ (every layer) tells the rest apart.
        arch = self.arch
        return hash((arch.name, arch.input_shape, arch.classes, len(arch.layers), self.dtype))

    @nn.compact
    def __call__(
        self, x: jax.Array, deterministic: bool = True, taps: tuple[int, ...] = ()
    ) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
        x = x.astype(self.dtype)
        tapped: dict[int, jax.Array] = {}
        x = _run(self.arch.layers, x, "", self.dtype, deterministic, taps, tapped)
        if not taps:
            return x.astype(jnp.float32)
        return x.astype(jnp.float32), [tapped[index] for index in taps]


def build_module(arch: Architecture, bf16: bool = False) -> Net:
    for leaf in arch.leaves():
        if isinstance(leaf.layer, Dropout) and leaf.prefix.count(".") > 1:
            raise ValueError(
                f"{arch.name}: dropout inside a residual block (layer {leaf.prefix[:-1]}) "
                "is not supported"
            )
    return Net(arch=arch, dtype=jnp.bfloat16 if bf16 else jnp.float32)


def variables(params: Params, batch_stats: Params) -> dict[str, Params]:
    """What module.apply takes; without batch norm only the params, as before."""
    return {"params": params, STATS: batch_stats} if batch_stats else {"params": params}


def apply_train(
    module: Net,
    params: Params,
    batch_stats: Params,
    x: jax.Array,
    rng: jax.Array,
    taps: tuple[int, ...] = (),
) -> tuple[Any, Params]:
    """The training-mode forward: (output, the updated batch_stats).

    Without batch norm ({} stats) the plain apply, and the stats come back as given."""
    rngs = {"dropout": rng}
    if not batch_stats:
        out = module.apply({"params": params}, x, deterministic=False, rngs=rngs, taps=taps)
        return out, batch_stats
    out, updated = module.apply(
        variables(params, batch_stats),
        x,
        deterministic=False,
        rngs=rngs,
        taps=taps,
        mutable=[STATS],
    )
    return out, updated[STATS]


def split_name(name: str) -> tuple[str, str]:
    """'3.kernel' -> ('3', 'kernel'), '3.body.0.kernel' -> ('3.body.0', 'kernel')."""
    module, kind = name.rsplit(".", 1)
    return module, kind


def load_weights(module: Net, weights: Weights, device: jax.Device) -> tuple[Params, Params]:
    """The params and batch_stats pytrees of module holding these weights, on device.

    Strict, like torch's load_state_dict: every parameter and running statistic
    the module declares must be given with its shape, and nothing else.
    batch_stats is {} for a net without batch norm.
    """
    arch = module.arch
    dummy = jax.ShapeDtypeStruct((1, *arch.input_shape), jnp.float32)
    expected = jax.eval_shape(module.init, jax.random.key(0), dummy)
    want = {
        f"{sub}.{kind}": leaf.shape
        for collection in ("params", STATS)
        for sub, leaves in expected.get(collection, {}).items()
        for kind, leaf in leaves.items()
    }
    got = {name: tuple(np.shape(value)) for name, value in weights.items()}
    if want != got:
        raise ValueError(f"weights do not fit {arch.name}: expected {want}, got {got}")
    stat_names = {
        f"{sub}.{kind}" for sub, leaves in expected.get(STATS, {}).items() for kind in leaves
    }
    params: dict[str, dict[str, Any]] = {}
    stats: dict[str, dict[str, Any]] = {}
    for name, value in weights.items():
        index, kind = split_name(name)
        array = np.ascontiguousarray(value, dtype=np.float32)
        tree = stats if name in stat_names else params
        tree.setdefault(index, {})[kind] = jax.device_put(array, device)
    return params, stats


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
