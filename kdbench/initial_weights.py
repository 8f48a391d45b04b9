"""Initial weights drawn once in numpy, so every backend starts identically.

Layers followed by a ReLU get He-normal kernels (variance 2 / fan_in); the
others (the logit layer) get Glorot-uniform kernels. Biases start at zero.
"""

from __future__ import annotations

import numpy as np

from kdbench.architectures import Architecture, Conv2D, Dense

Weights = dict[str, np.ndarray]


def init_weights(arch: Architecture, rng: np.random.Generator) -> Weights:
    weights: Weights = {}
    shapes = arch.param_shapes()
    for index, layer, _, _ in arch.walk():
        if not isinstance(layer, Dense | Conv2D):
            continue
        shape = shapes[f"{index}.kernel"]
        receptive = int(np.prod(shape[:-2])) if len(shape) == 4 else 1
        fan_in = shape[-2] * receptive
        fan_out = shape[-1] * receptive
        if arch.next_is_relu(index):
            kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
        else:
            kernel = glorot_uniform(shape, fan_in, fan_out, rng)
        weights[f"{index}.kernel"] = kernel.astype(np.float32)
        weights[f"{index}.bias"] = np.zeros(shapes[f"{index}.bias"], dtype=np.float32)
    return weights


def glorot_uniform(
    shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator
) -> np.ndarray:
    """Uniform in +-sqrt(6 / (fan_in + fan_out)) (float64: callers cast)."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)
