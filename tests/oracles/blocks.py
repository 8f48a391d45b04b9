"""The float64 numpy oracle of any neutral layer list, nested residual blocks
and batch norm included: forward in training or inference mode, the running
statistics a training step leaves, and the backward pass.

Batch norm follows kdbench.layers (PyTorch's convention): training normalises
with the biased batch variance and moves the running variance towards the
unbiased one; inference normalises with the running statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kdbench.layers import (
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

from . import network

Arrays = dict[str, np.ndarray]


def _axes(h: np.ndarray) -> tuple[int, ...]:
    return tuple(range(h.ndim - 1))


def batchnorm(
    h: np.ndarray, layer: BatchNorm, w: Arrays, name: str, train: bool, state: Arrays | None
) -> np.ndarray:
    """One batch norm; in training mode also writes the new running stats into state."""
    scale, shift = w[name + "scale"], w[name + "shift"]
    if not train:
        mean, var = w[name + "mean"], w[name + "var"]
        return (h - mean) / np.sqrt(var + layer.eps) * scale + shift
    mean = h.mean(axis=_axes(h))
    var = h.var(axis=_axes(h))  # biased, for normalising
    if state is not None:
        n = h.size // h.shape[-1]
        m = layer.momentum
        state[name + "mean"] = (1 - m) * w[name + "mean"] + m * mean
        state[name + "var"] = (1 - m) * w[name + "var"] + m * var * n / (n - 1)
    return (h - mean) / np.sqrt(var + layer.eps) * scale + shift


def run(
    layers: Sequence[Layer],
    w: Arrays,
    x: np.ndarray,
    train: bool,
    prefix: str = "",
    state: Arrays | None = None,
) -> list[np.ndarray]:
    """The input of every layer, then the output (len(layers) + 1 arrays)."""
    h = np.asarray(x, dtype=np.float64)
    trace = [h]
    for index, layer in enumerate(layers):
        name = f"{prefix}{index}."
        if isinstance(layer, Dense):
            h = h @ w[name + "kernel"] + w[name + "bias"]
        elif isinstance(layer, Conv2D):
            bias = w[name + "bias"] if layer.bias else 0.0
            h = network.conv2d(h, w[name + "kernel"], bias, layer.stride, layer.pad)
        elif isinstance(layer, MaxPool):
            h = network.maxpool(h, layer.size)
        elif isinstance(layer, GlobalAvgPool):
            h = h.mean(axis=(1, 2))
        elif isinstance(layer, Flatten):
            h = h.reshape(h.shape[0], -1)
        elif isinstance(layer, ReLU):
            h = np.maximum(h, 0.0)
        elif isinstance(layer, BatchNorm):
            h = batchnorm(h, layer, w, name, train, state)
        elif isinstance(layer, Residual):
            body = run(layer.body, w, h, train, name + "body.", state)[-1]
            short = run(layer.shortcut, w, h, train, name + "shortcut.", state)[-1]
            h = body + short
        elif isinstance(layer, Dropout):
            if train:
                raise ValueError(f"layer {name[:-1]} is dropout: no oracle in training mode")
        else:  # pragma: no cover - the spec admits no other layer
            raise TypeError(f"no oracle for layer {layer!r}")
        trace.append(h)
    return trace


def batchnorm_backward(
    h: np.ndarray, layer: BatchNorm, scale: np.ndarray, g: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients (input, scale, shift) of training-mode batch norm."""
    axes = _axes(h)
    n = h.size // h.shape[-1]
    mean, var = h.mean(axis=axes), h.var(axis=axes)
    inv = 1.0 / np.sqrt(var + layer.eps)
    xhat = (h - mean) * inv
    g_shift = g.sum(axis=axes)
    g_scale = (g * xhat).sum(axis=axes)
    g_in = scale * inv / n * (n * g - g_shift - xhat * g_scale)
    return g_in, g_scale, g_shift


def backward(
    layers: Sequence[Layer],
    w: Arrays,
    trace: list[np.ndarray],
    g: np.ndarray,
    grads: Arrays,
    prefix: str = "",
    feature_grads: dict[int, np.ndarray] | None = None,
) -> np.ndarray:
    """Training-mode backward through layers (trace from run(train=True)):
    fills grads with every parameter's gradient, returns the input's.

    feature_grads: d(loss)/d(output of layer i), added where a feature term reads it."""
    for index in reversed(range(len(layers))):
        layer, h, name = layers[index], trace[index], f"{prefix}{index}."
        if feature_grads and index in feature_grads:
            g = g + feature_grads[index]
        if isinstance(layer, Dense):
            grads[name + "kernel"] = h.T @ g
            grads[name + "bias"] = g.sum(axis=0)
            g = g @ w[name + "kernel"].T
        elif isinstance(layer, Conv2D):
            g, g_kernel, g_bias = network.conv2d_backward(
                h, w[name + "kernel"], g, layer.stride, layer.pad
            )
            grads[name + "kernel"] = g_kernel
            if layer.bias:
                grads[name + "bias"] = g_bias
        elif isinstance(layer, MaxPool):
            g = network.maxpool_backward(h, g, layer.size)
        elif isinstance(layer, GlobalAvgPool):
            _, hh, ww, _ = h.shape
            g = np.broadcast_to(g[:, None, None, :] / (hh * ww), h.shape).copy()
        elif isinstance(layer, Flatten):
            g = g.reshape(h.shape)
        elif isinstance(layer, ReLU):
            g = g * (h > 0)
        elif isinstance(layer, BatchNorm):
            g, grads[name + "scale"], grads[name + "shift"] = batchnorm_backward(
                h, layer, w[name + "scale"], g
            )
        elif isinstance(layer, Residual):
            body = run(layer.body, w, h, True, name + "body.")
            short = run(layer.shortcut, w, h, True, name + "shortcut.")
            g = backward(layer.body, w, body, g, grads, name + "body.") + backward(
                layer.shortcut, w, short, g, grads, name + "shortcut."
            )
        else:
            raise TypeError(f"no oracle gradient for layer {layer!r}")
    return g
