"""The pieces of the PyTorch train step for the feature methods.

What trains is the student's parameters and the connectors' (FitNet's
regressors), in one optimizer; without connectors the step is the plain one
in backend.py, which never asks for tapped features.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from kdbench.backends.base import LossConfig, Weights
from kdbench.backends.pytorch.losses import distill_loss


def connector_parameters(
    connectors: Weights | None, device: torch.device
) -> dict[str, nn.Parameter]:
    """The connectors as parameters under their neutral names, in the neutral
    (in, out) layout: F.linear is given their transpose."""
    return {
        name: nn.Parameter(torch.from_numpy(np.array(value, np.float32)).to(device))
        for name, value in (connectors or {}).items()
    }


def feature_loss(
    loss: LossConfig,
    student: Callable[[torch.Tensor], Any],
    teacher: Callable[[torch.Tensor], Any],
    connectors: Mapping[str, torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor],
    kd_scale: float,
    compute: Callable[[], contextlib.AbstractContextManager[Any]],
) -> torch.Tensor:
    """A feature method's loss: both nets' logits and tapped features (the frozen
    teacher's under no_grad), then the terms on float32 values."""
    xb, yb = batch
    with torch.no_grad(), compute():
        t_logits, t_feats = teacher(xb)
    with compute():
        logits, s_feats = student(xb)
    return distill_loss(
        loss,
        logits.float(),
        yb,
        t_logits.float(),
        [f.float() for f in s_feats],
        [f.float() for f in t_feats],
        connectors,
        kd_scale,
    )
