"""A float64 numpy forward pass: the oracle for every backend's model."""

from __future__ import annotations

import numpy as np

from kdbench.architectures import Architecture
from kdbench.initial_weights import Weights


def conv2d(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | float, stride: int, padding: str | int
) -> np.ndarray:
    """NHWC x HWIO cross-correlation, as every framework computes it.

    padding: 'valid', 'same' (k // 2 per side) or the zeros per side."""
    k = kernel.shape[0]
    pad = _pad(padding, k)
    if pad:
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))
    windows = windows[:, ::stride, ::stride]  # (N, OH, OW, C, kh, kw)
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel, optimize=True) + bias


def _pad(padding: str | int, kernel: int) -> int:
    if padding == "same":
        return kernel // 2
    return 0 if padding == "valid" else int(padding)


def maxpool(x: np.ndarray, size: int) -> np.ndarray:
    n, h, w, c = x.shape
    oh, ow = h // size, w // size
    x = x[:, : oh * size, : ow * size]
    return x.reshape(n, oh, size, ow, size, c).max(axis=(2, 4))


def conv2d_backward(
    x: np.ndarray, kernel: np.ndarray, grad_out: np.ndarray, stride: int, padding: str | int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients (input, kernel, bias) of network.conv2d (NHWC x HWIO)."""
    k = kernel.shape[0]
    pad = _pad(padding, k)
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))
    windows = windows[:, ::stride, ::stride]  # (N, OH, OW, C, kh, kw)
    grad_kernel = np.einsum("nhwcij,nhwo->ijco", windows, grad_out, optimize=True)
    grad_bias = grad_out.sum(axis=(0, 1, 2))
    # Each output position spread its gradient over the window it read.
    grad_windows = np.einsum("nhwo,ijco->nhwcij", grad_out, kernel, optimize=True)
    grad_xp = np.zeros_like(xp)
    _, oh, ow, _ = grad_out.shape
    for i in range(k):
        for j in range(k):
            grad_xp[
                :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride
            ] += grad_windows[..., i, j]
    h, w = x.shape[1:3]
    return grad_xp[:, pad : pad + h, pad : pad + w], grad_kernel, grad_bias


def maxpool_backward(x: np.ndarray, grad_out: np.ndarray, size: int) -> np.ndarray:
    """The gradient goes to the first maximum of each window; cropped rows get 0."""
    n, h, w, c = x.shape
    oh, ow = h // size, w // size
    blocks = x[:, : oh * size, : ow * size].reshape(n, oh, size, ow, size, c)
    blocks = blocks.transpose(0, 1, 3, 5, 2, 4).reshape(n, oh, ow, c, size * size)
    first = blocks.argmax(axis=-1)  # numpy's argmax picks the first maximum
    onehot = np.eye(size * size)[first] * grad_out[..., None]
    onehot = onehot.reshape(n, oh, ow, c, size, size).transpose(0, 1, 4, 2, 5, 3)
    grad = np.zeros_like(x)
    grad[:, : oh * size, : ow * size] = onehot.reshape(n, oh * size, ow * size, c)
    return grad


def forward(
    arch: Architecture, weights: Weights, x: np.ndarray, stop: int | None = None
) -> np.ndarray:
    """Inference logits (dropout is the identity, batch norm uses its running stats).

    stop: return the input of layer `stop` instead (for layer-wise oracles).
    """
    from . import blocks

    w = {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}
    return blocks.run(arch.layers[:stop], w, x, train=False)[-1]
