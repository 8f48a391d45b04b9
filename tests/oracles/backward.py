"""A float64 numpy backward pass and training loop: the oracle for every
backend's gradients and for whole training trajectories.

backward() is the gradient of the training loss with respect to every
parameter of a dropout-free neutral architecture, given the gradient of the
loss with respect to the logits (losses.distill_loss_grad). train() runs
steps of forward, loss gradient, backward and ReferenceOptimizer, all in
float64, on the batches and learning rates a backend is given. The tests
check backward() against central finite differences of network.forward and
losses.distill_loss.

Max pooling sends a window's gradient to its first maximum in row-major
order, as PyTorch does; the frameworks differ only on exact ties, which after
a ReLU are all-zero windows whose gradient the ReLU stops anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kdbench.architectures import Architecture, Conv2D, Dense, Dropout, Flatten, MaxPool, ReLU
from kdbench.initial_weights import Weights

from . import network
from .losses import distill_loss, distill_loss_grad
from .optimizers import ReferenceOptimizer


def _f64(weights: Weights) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}


def _check_dropout_free(arch: Architecture) -> None:
    for index, layer in enumerate(arch.layers):
        if isinstance(layer, Dropout):
            raise ValueError(
                f"layer {index} is dropout: each framework draws its own masks, "
                "so there is no oracle gradient; remove dropout first"
            )


def forward_trace(arch: Architecture, weights: Weights, x: np.ndarray) -> list[np.ndarray]:
    """The input of every layer, then the logits (len(arch.layers) + 1 arrays)."""
    _check_dropout_free(arch)
    w = _f64(weights)
    h = np.asarray(x, dtype=np.float64)
    trace = [h]
    for index, layer in enumerate(arch.layers):
        if isinstance(layer, Dense):
            h = h @ w[f"{index}.kernel"] + w[f"{index}.bias"]
        elif isinstance(layer, Conv2D):
            h = network.conv2d(
                h, w[f"{index}.kernel"], w[f"{index}.bias"], layer.stride, layer.padding
            )
        elif isinstance(layer, MaxPool):
            h = network.maxpool(h, layer.size)
        elif isinstance(layer, Flatten):
            h = h.reshape(h.shape[0], -1)
        elif isinstance(layer, ReLU):
            h = np.maximum(h, 0.0)
        else:  # pragma: no cover - the spec admits no other layer
            raise TypeError(f"no oracle for layer {layer!r}")
        trace.append(h)
    return trace


def conv2d_backward(
    x: np.ndarray, kernel: np.ndarray, grad_out: np.ndarray, stride: int, padding: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients (input, kernel, bias) of network.conv2d (NHWC x HWIO)."""
    k = kernel.shape[0]
    pad = k // 2 if padding == "same" else 0
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


def backward(
    arch: Architecture,
    weights: Weights,
    x: np.ndarray,
    grad_logits: np.ndarray,
    feature_grads: dict[int, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """d(loss)/d(every parameter), float64, given d(loss)/d(logits) and, for a
    feature term, d(loss)/d(the output of layer i) for the tapped layers i."""
    w = _f64(weights)
    trace = forward_trace(arch, weights, x)
    g = np.asarray(grad_logits, dtype=np.float64)
    assert g.shape == trace[-1].shape, f"grad_logits {g.shape} != logits {trace[-1].shape}"
    grads: dict[str, np.ndarray] = {}
    for index in reversed(range(len(arch.layers))):
        layer, h = arch.layers[index], trace[index]
        if feature_grads and index in feature_grads:
            g = g + feature_grads[index]
        if isinstance(layer, Dense):
            grads[f"{index}.kernel"] = h.T @ g
            grads[f"{index}.bias"] = g.sum(axis=0)
            g = g @ w[f"{index}.kernel"].T
        elif isinstance(layer, Conv2D):
            g, grads[f"{index}.kernel"], grads[f"{index}.bias"] = conv2d_backward(
                h, w[f"{index}.kernel"], g, layer.stride, layer.padding
            )
        elif isinstance(layer, MaxPool):
            g = maxpool_backward(h, g, layer.size)
        elif isinstance(layer, Flatten):
            g = g.reshape(h.shape)
        elif isinstance(layer, ReLU):
            g = g * (h > 0)
    return {name: grads[name] for name in arch.param_shapes()}


def loss_and_grads(
    arch: Architecture,
    weights: Weights,
    x: np.ndarray,
    y: np.ndarray,
    method: str,
    teacher_logits: np.ndarray | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> tuple[float, dict[str, np.ndarray]]:
    """The training loss of one batch and its float64 gradient per parameter."""
    logits = forward_trace(arch, weights, x)[-1]
    loss = distill_loss(method, logits, y, teacher_logits, temperature, alpha)
    grad_logits = distill_loss_grad(method, logits, y, teacher_logits, temperature, alpha)
    return loss, backward(arch, weights, x, grad_logits)


def train(
    arch: Architecture,
    weights: Weights,
    x: np.ndarray,
    y: np.ndarray,
    indices: Sequence[np.ndarray],
    lrs: Sequence[float],
    optimizer: dict[str, Any],
    method: str,
    teacher: tuple[Architecture, Weights] | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A training run in float64: one step per index array, with its lr.

    Each step's loss is the one its forward pass gave, before the update, as
    a backend's train_step returns it. The teacher is frozen and sees the
    same batch. Returns (per-step losses, final weights).
    """
    assert len(indices) == len(lrs), f"{len(indices)} batches but {len(lrs)} learning rates"
    current = _f64(weights)
    opt = ReferenceOptimizer(optimizer)
    losses = []
    for idx, lr in zip(indices, lrs, strict=True):
        xb, yb = x[idx], y[idx]
        t_logits = None if teacher is None else network.forward(teacher[0], teacher[1], xb)
        loss, grads = loss_and_grads(arch, current, xb, yb, method, t_logits, temperature, alpha)
        current = opt.step(current, grads, float(lr))
        losses.append(loss)
    return np.array(losses, dtype=np.float64), current
