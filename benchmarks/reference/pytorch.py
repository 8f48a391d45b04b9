"""The distillation step as a PyTorch expert writes it, outside kdbench.

The yardstick of ``benchmarks/reference/ratio.py``: kdbench's PyTorch backend
must run the same step at least as fast (ratio >= 0.97). Nothing here comes
from kdbench's backend; only the shapes and the initial weights come from the
spec, so the two compute the same losses and the ratio tool can check that.

What an expert does, following PyTorch's performance tuning guide:
- native layers (``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.Flatten``, ``nn.Linear``,
  ``nn.ReLU(inplace=True)`` after a layer that makes a new tensor, as
  torchvision's nets have it) in an ``nn.Sequential``; conv nets in the channels_last memory format, and
  the NHWC images loaded the usual way, ``torch.from_numpy(x).permute(0, 3, 1, 2)``
  (a channels-last view);
- the batch gathered by tensor indexing on the device, the frozen teacher
  under ``torch.inference_mode()``;
- the loss from ``torch.nn.functional`` (``kl_div`` in log space, batchmean);
- ``optimizer.zero_grad(set_to_none=True)``, and ``torch.optim.Adam`` or
  ``SGD`` with the implementation PyTorch picks by default.
The learning rate of each step is the spec's schedule, written into the
param groups (what an ``LRScheduler.step()`` does), so both sides follow the
same schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Reference:
    x: torch.Tensor  # NCHW view with channels-last strides
    y: torch.Tensor
    teacher: nn.Module | None  # None: the phase trains on labels alone
    student: nn.Module
    optimizer: torch.optim.Optimizer
    method: str
    temperature: float
    alpha: float


def network(arch: Any, weights: dict[str, np.ndarray]) -> nn.Sequential:
    """Native layers for a neutral architecture, loaded with the neutral weights.

    nn.Flatten flattens in (C, H, W) order where the neutral weights assume
    (H, W, C), so the first dense kernel after it has its rows permuted.
    """
    layers: list[nn.Module] = []
    state: dict[str, torch.Tensor] = {}
    chw: tuple[int, int, int] | None = None
    kind_before = None
    for index, layer, in_shape, _ in arch.walk():
        kind = layer.type
        if kind == "conv2d":
            layers.append(
                nn.Conv2d(in_shape[-1], layer.filters, layer.kernel, layer.stride, layer.padding)
            )
            kernel = weights[f"{index}.kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
            state[f"{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        elif kind == "dense":
            layers.append(nn.Linear(in_shape[-1], layer.units))
            kernel = weights[f"{index}.kernel"]  # (in, out)
            if chw is not None:  # rows in (H, W, C) order -> (C, H, W)
                h, w, c = chw
                kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
                chw = None
            state[f"{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.T))
        elif kind == "maxpool":
            layers.append(nn.MaxPool2d(layer.size))
        elif kind == "flatten":
            layers.append(nn.Flatten())
            chw = tuple(in_shape) if len(in_shape) == 3 else None  # type: ignore[assignment]
        elif kind == "relu":
            layers.append(nn.ReLU(inplace=kind_before in ("conv2d", "dense", "maxpool")))
        elif kind == "dropout":
            layers.append(nn.Dropout(layer.rate))
        else:
            raise TypeError(f"no native layer for {layer!r}")
        if f"{index}.bias" in weights:
            state[f"{index}.bias"] = torch.from_numpy(weights[f"{index}.bias"])
        kind_before = kind
    model = nn.Sequential(*layers)
    model.load_state_dict(state, strict=True)
    return model.to(memory_format=torch.channels_last)


def optimizer_for(params: Any, config: dict[str, Any]) -> torch.optim.Optimizer:
    if config["name"] == "adam":
        return torch.optim.Adam(
            params,
            lr=0.0,  # set before every step
            betas=(config["beta1"], config["beta2"]),
            eps=config["eps"],
            weight_decay=config["weight_decay"],
        )
    if config["name"] == "sgd":
        return torch.optim.SGD(
            params,
            lr=0.0,  # set before every step
            momentum=config["momentum"],
            nesterov=config["nesterov"],
            weight_decay=config["weight_decay"],
        )
    raise ValueError(f"no reference optimizer {config['name']!r}")


def setup(
    x: np.ndarray,
    y: np.ndarray,
    teacher_arch: Any,
    teacher_weights: dict[str, np.ndarray],
    student_arch: Any,
    student_weights: dict[str, np.ndarray],
    optimizer: dict[str, Any],
    loss: Any,
    *,
    seed: int = 0,
    precision: str = "float32",
) -> Reference:
    """The split, both networks and the optimizer, made once (the process's threads as set).

    teacher_arch None: no frozen teacher (the teacher's own training phase, labels alone).
    """
    if precision != "float32":
        raise ValueError(f"no {precision} reference loop yet")
    torch.manual_seed(seed)
    teacher = None
    if teacher_arch is not None:
        teacher = network(teacher_arch, teacher_weights).eval().requires_grad_(False)
    student = network(student_arch, student_weights).train()
    return Reference(
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(0, 3, 1, 2),
        y=torch.from_numpy(y.astype(np.int64)),
        teacher=teacher,
        student=student,
        optimizer=optimizer_for(student.parameters(), optimizer),
        method=loss.method,
        temperature=loss.temperature,
        alpha=loss.alpha,
    )


def loss_of(
    ref: Reference, logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None
) -> torch.Tensor:
    ce = F.cross_entropy(logits, labels)
    if ref.method == "none":
        return ce
    if teacher is None:
        raise ValueError(f"method {ref.method!r} needs a teacher")
    if ref.method == "soft":
        t = ref.temperature
        kl = F.kl_div(
            F.log_softmax(logits / t, dim=1),
            F.log_softmax(teacher / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return ref.alpha * t * t * kl + (1.0 - ref.alpha) * ce
    if ref.method == "hard":
        return ref.alpha * F.cross_entropy(logits, teacher.argmax(1)) + (1.0 - ref.alpha) * ce
    raise ValueError(f"no reference loss for method {ref.method!r}")


def train(ref: Reference, indices: np.ndarray, lrs: np.ndarray) -> np.ndarray:
    """One step per index row with its learning rate; the per-step losses (float64)."""
    batches = torch.from_numpy(indices.reshape(-1, indices.shape[-1]).astype(np.int64))
    losses = []
    for idx, lr in zip(batches, lrs.tolist(), strict=True):
        xb, yb = ref.x[idx], ref.y[idx]
        teacher_logits = None
        if ref.teacher is not None:
            with torch.inference_mode():
                teacher_logits = ref.teacher(xb)
        loss = loss_of(ref, ref.student(xb), yb, teacher_logits)
        ref.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in ref.optimizer.param_groups:
            group["lr"] = lr
        ref.optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses).numpy().astype(np.float64)
