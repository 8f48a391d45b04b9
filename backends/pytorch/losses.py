"""The distillation losses in torch, in log space (oracle: tests/oracles/losses.py).

KL is summed over classes and averaged over the batch ('batchmean'); torch's
reduction='mean' would also divide by the class count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.backends.base import LossConfig


def distill_loss(
    config: LossConfig,
    student: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor | None = None,
) -> torch.Tensor:
    ce = F.cross_entropy(student, labels)
    if config.method == "none":
        return ce
    if teacher is None:
        raise ValueError(f"method {config.method!r} needs teacher logits")
    if config.method == "soft":
        t = config.temperature
        kl = F.kl_div(
            F.log_softmax(student / t, dim=-1),
            F.log_softmax(teacher / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        return config.alpha * (t * t) * kl + (1.0 - config.alpha) * ce
    if config.method == "hard":
        pseudo = F.cross_entropy(student, teacher.argmax(dim=-1))
        return config.alpha * pseudo + (1.0 - config.alpha) * ce
    raise ValueError(f"unknown method {config.method!r}")
