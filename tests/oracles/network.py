"""A float64 numpy forward pass: the oracle for every backend's model."""

from __future__ import annotations

import numpy as np

from kdbench.architectures import Architecture, Conv2D, Dense, Flatten, MaxPool, ReLU
from kdbench.initial_weights import Weights


def conv2d(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, padding: str
) -> np.ndarray:
    """NHWC x HWIO cross-correlation, as every framework computes it."""
    k = kernel.shape[0]
    if padding == "same":
        pad = k // 2
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))
    windows = windows[:, ::stride, ::stride]  # (N, OH, OW, C, kh, kw)
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel, optimize=True) + bias


def maxpool(x: np.ndarray, size: int) -> np.ndarray:
    n, h, w, c = x.shape
    oh, ow = h // size, w // size
    x = x[:, : oh * size, : ow * size]
    return x.reshape(n, oh, size, ow, size, c).max(axis=(2, 4))


def forward(
    arch: Architecture, weights: Weights, x: np.ndarray, stop: int | None = None
) -> np.ndarray:
    """Inference logits (dropout is the identity at inference).

    stop: return the input of layer `stop` instead (for layer-wise oracles).
    """
    h = np.asarray(x, dtype=np.float64)
    for index, layer in enumerate(arch.layers[:stop]):
        if isinstance(layer, Dense):
            h = h @ weights[f"{index}.kernel"].astype(np.float64) + weights[f"{index}.bias"]
        elif isinstance(layer, Conv2D):
            h = conv2d(
                h,
                weights[f"{index}.kernel"].astype(np.float64),
                weights[f"{index}.bias"].astype(np.float64),
                layer.stride,
                layer.padding,
            )
        elif isinstance(layer, MaxPool):
            h = maxpool(h, layer.size)
        elif isinstance(layer, Flatten):
            h = h.reshape(h.shape[0], -1)
        elif isinstance(layer, ReLU):
            h = np.maximum(h, 0.0)
    return h
