"""Initial weights drawn once in numpy, so every backend starts identically.

Scheme "he" (kdbench's own nets): a kernel followed by a ReLU (or by batch
norm) gets He-normal (variance 2 / fan_in), others (the logit layer)
Glorot-uniform; biases start at zero. The reference CIFAR nets use their own
code's initialisers: convolutions Kaiming-normal with fan_out (variance
2 / (k * k * out)), batch norm scale 1 and shift 0; the dense layer as each
reference leaves it: PyTorch's default (uniform +-1/sqrt(fan_in), bias too)
for "resnet", the same with a zero bias for "wrn", normal(0, 0.01) with a zero
bias for "vgg". Running statistics start at mean 0, variance 1.
"""

from __future__ import annotations

import numpy as np

from kdbench.architectures import Architecture, BatchNorm, Conv2D, Dense, Leaf, ReLU

Weights = dict[str, np.ndarray]
SCHEMES = ("he", "resnet", "wrn", "vgg")


def init_weights(arch: Architecture, rng: np.random.Generator) -> Weights:
    """Parameters and running statistics (arch.weight_shapes()), float32."""
    if arch.init not in SCHEMES:
        raise ValueError(f"unknown init scheme {arch.init!r}; allowed: {', '.join(SCHEMES)}")
    weights: Weights = {}
    leaves = list(arch.leaves())
    for position, leaf in enumerate(leaves):
        layer, name = leaf.layer, leaf.prefix
        if isinstance(layer, BatchNorm):
            channels = leaf.in_shape[-1]
            weights[name + "scale"] = np.ones(channels, np.float32)
            weights[name + "shift"] = np.zeros(channels, np.float32)
            continue
        if not isinstance(layer, Dense | Conv2D):
            continue
        following = leaves[position + 1] if position + 1 < len(leaves) else None
        kernel, bias = _draw(arch.init, leaf, following, rng)
        weights[name + "kernel"] = kernel.astype(np.float32)
        if bias is not None:
            weights[name + "bias"] = bias.astype(np.float32)
    for name, shape in arch.state_shapes().items():
        fill = 0.0 if name.endswith(".mean") else 1.0
        weights[name] = np.full(shape, fill, np.float32)
    return {name: weights[name] for name in arch.weight_shapes()}


def _draw(
    scheme: str, leaf: Leaf, following: Leaf | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    layer = leaf.layer
    if isinstance(layer, Conv2D):
        shape = (layer.kernel, layer.kernel, leaf.in_shape[-1], layer.filters)
        receptive = layer.kernel * layer.kernel
        fan_in, fan_out = shape[2] * receptive, shape[3] * receptive
        has_bias = layer.bias
    else:
        assert isinstance(layer, Dense)
        shape = (leaf.in_shape[-1], layer.units)
        fan_in, fan_out = shape
        has_bias = True
    zeros = np.zeros(shape[-1]) if has_bias else None
    if scheme == "he":
        same_block = following is not None and _siblings(leaf, following)
        if same_block and isinstance(following.layer, ReLU | BatchNorm):
            return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape), zeros
        return glorot_uniform(shape, fan_in, fan_out, rng), zeros
    if isinstance(layer, Conv2D):
        return rng.normal(0.0, np.sqrt(2.0 / fan_out), size=shape), zeros
    if scheme == "vgg":
        return rng.normal(0.0, 0.01, size=shape), zeros
    bound = 1.0 / np.sqrt(fan_in)
    kernel = rng.uniform(-bound, bound, size=shape)
    if scheme == "resnet":
        return kernel, rng.uniform(-bound, bound, size=shape[-1])
    return kernel, zeros


def _siblings(a: Leaf, b: Leaf) -> bool:
    """Whether b directly follows a in the same layer list."""
    head_a, _, index_a = a.prefix[:-1].rpartition(".")
    head_b, _, index_b = b.prefix[:-1].rpartition(".")
    return head_a == head_b and int(index_b) == int(index_a) + 1


def glorot_uniform(
    shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator
) -> np.ndarray:
    """Uniform in +-sqrt(6 / (fan_in + fan_out)) (float64: callers cast)."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)
