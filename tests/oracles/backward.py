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

from kdbench.architectures import Architecture, Dropout
from kdbench.initial_weights import Weights

from . import blocks, network
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


def forward_trace(
    arch: Architecture, weights: Weights, x: np.ndarray, train: bool = True
) -> list[np.ndarray]:
    """The input of every layer, then the logits (len(arch.layers) + 1 arrays).

    train: batch norm on the batch's statistics (the net being trained);
    False: on its running statistics (a frozen teacher)."""
    if train:
        _check_dropout_free(arch)
    return blocks.run(arch.layers, _f64(weights), x, train)


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
    blocks.backward(arch.layers, w, trace, g, grads, feature_grads=feature_grads)
    return {name: grads[name] for name in arch.param_shapes()}


def running_stats(arch: Architecture, weights: Weights, x: np.ndarray) -> dict[str, np.ndarray]:
    """The batch norm running statistics after one training-mode forward on x."""
    state: dict[str, np.ndarray] = {}
    blocks.run(arch.layers, _f64(weights), x, True, state=state)
    return state


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
        stats = running_stats(arch, current, xb)  # batch norm's, from this step's forward
        params = {name: current[name] for name in arch.param_shapes()}
        current = {**opt.step(params, grads, float(lr)), **stats}
        losses.append(loss)
    return np.array(losses, dtype=np.float64), current
