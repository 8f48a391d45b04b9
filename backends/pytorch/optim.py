"""Optimizers from the neutral description; PyTorch's conventions are the reference."""

from __future__ import annotations

from typing import Any

import torch


def make_optimizer(params: Any, config: dict[str, Any]) -> torch.optim.Optimizer:
    # lr is set by the harness before every step; 0.0 is only a placeholder.
    if config["name"] == "sgd":
        return torch.optim.SGD(
            params,
            lr=0.0,
            momentum=config["momentum"],
            nesterov=config["nesterov"],
            weight_decay=config["weight_decay"],
        )
    if config["name"] == "adam":
        return torch.optim.Adam(
            params,
            lr=0.0,
            betas=(config["beta1"], config["beta2"]),
            eps=config["eps"],
            weight_decay=config["weight_decay"],
        )
    raise ValueError(f"unknown optimizer {config['name']!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
