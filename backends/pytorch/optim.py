"""Optimizers from the neutral description; PyTorch's conventions are the reference."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def decay_groups(
    named: Iterable[tuple[str, torch.Tensor]], config: dict[str, Any]
) -> list[dict[str, Any]]:
    """The parameters (neutral name, tensor) as torch parameter groups.

    decay "all" (the default): one group, weight_decay on every parameter.
    "kernels": the conv and dense kernels (neutral names ending ".kernel",
    FitNet's "hint<k>.kernel" too) keep weight_decay, a second group (biases,
    batch norm scale and shift) has none."""
    named = list(named)
    decay = config.get("decay", "all")
    if decay == "all":
        return [{"params": [p for _, p in named]}]
    if decay != "kernels":
        raise ValueError(f"unknown optimizer decay {decay!r}")
    kernels = [p for name, p in named if name.endswith(".kernel")]
    others = [p for name, p in named if not name.endswith(".kernel")]
    groups = [{"params": kernels}] if kernels else []
    if others:
        groups.append({"params": others, "weight_decay": 0.0})
    return groups


def make_optimizer(
    named: Iterable[tuple[str, torch.Tensor]], config: dict[str, Any]
) -> torch.optim.Optimizer:
    """named: every trained parameter with its neutral name (what decides its
    weight decay, see decay_groups)."""
    groups = decay_groups(named, config)
    # lr is set by the harness before every step; 0.0 is only a placeholder.
    if config["name"] == "sgd":
        return torch.optim.SGD(
            groups,
            lr=0.0,
            momentum=config["momentum"],
            nesterov=config["nesterov"],
            weight_decay=config["weight_decay"],
        )
    if config["name"] == "adam":
        return torch.optim.Adam(
            groups,
            lr=0.0,
            betas=(config["beta1"], config["beta2"]),
            eps=config["eps"],
            weight_decay=config["weight_decay"],
        )
    raise ValueError(f"unknown optimizer {config['name']!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
