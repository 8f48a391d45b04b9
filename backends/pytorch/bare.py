"""A bare PyTorch distillation loop: the harness's distill phase without the harness.

kdbench/tools/overhead.py times this loop side by side with the harness's
``train_phase`` to measure what the harness adds. Per step it does exactly
what PyTorchBackend.train_step does under ``train_phase`` (eager, the default
compile mode): the harness's numpy index row through ``torch.from_numpy`` to
the device, the batch gathered on the device with ``index_select``, the frozen
teacher's forward under ``no_grad``, the student's forward and backward, the
step's learning rate written into the optimizer, ``optimizer.step()``, and the
loss kept as a device tensor. The models, loss and optimizer come from this
package's model.py, losses.py and optim.py, so the math is the backend's.

Left out, compared with the harness path:
- the clock: two ``time.perf_counter()`` reads per step;
- ``backend.sync(loss)`` after every step (a device check on CPU,
  ``torch.cuda.synchronize`` on a GPU, which also stops the host queueing
  the next step while the GPU runs this one);
- the Backend adapter's glue: the method call, the TorchState attribute
  look-ups, the ``_teacher_logits`` helper and the training-mode check;
- indexing the plan and the lr array per step, the per-epoch handle lists and
  the per-epoch ``to_numpy`` (here one stack and one copy at the end);
- the phase's statistics (percentiles, FLOPs, peak memory, rusage).

The process's torch settings (threads, TF32, determinism) are whatever the
caller set; in the overhead benchmark, the backend's ``setup`` in the same
process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from kdbench.architectures import Architecture
from kdbench.backends.base import LossConfig, Weights
from kdbench.backends.pytorch.losses import distill_loss
from kdbench.backends.pytorch.model import (
    as_nchw,
    build_module,
    load_weights,
    neutral_parameters,
)
from kdbench.backends.pytorch.optim import make_optimizer, set_lr


@dataclass
class BareRun:
    """What the loop needs, made once: data on the device, models, optimizer."""

    x: torch.Tensor  # NHWC, on the device (a gathered batch is viewed channels-last)
    y: torch.Tensor  # int64
    teacher: nn.Module  # frozen, in eval mode
    student: nn.Module  # in train mode
    optimizer: torch.optim.Optimizer
    loss: LossConfig
    device: torch.device


def _module(arch: Architecture, weights: Weights, seed: int, device: torch.device) -> nn.Module:
    torch.manual_seed(seed)  # the dropout stream, as PyTorchBackend.build seeds it
    module = build_module(arch)
    load_weights(module, weights)
    return module.to(device, memory_format=torch.channels_last)


def bare_setup(
    x: np.ndarray,
    y: np.ndarray,
    teacher_arch: Architecture,
    teacher_weights: Weights,
    student_arch: Architecture,
    student_weights: Weights,
    optimizer: dict[str, Any],
    loss: LossConfig,
    *,
    device: str | torch.device = "cpu",
    teacher_seed: int = 0,
    student_seed: int = 0,
) -> BareRun:
    """The split on the device once (NHWC, as given), both models, the optimizer."""
    dev = torch.device(device)
    x_dev = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
    y_dev = torch.from_numpy(y.astype(np.int64)).to(dev)
    teacher = _module(teacher_arch, teacher_weights, teacher_seed, dev).eval()
    teacher.requires_grad_(False)
    student = _module(student_arch, student_weights, student_seed, dev).train()
    named = neutral_parameters(student, list(student_arch.param_shapes()))
    opt = make_optimizer(named, optimizer)
    return BareRun(x_dev, y_dev, teacher, student, opt, loss, dev)


def bare_distill_loop(run: BareRun, indices: np.ndarray, lrs: np.ndarray) -> np.ndarray:
    """Train on every index row in order with its lr; the per-step losses as float64.

    indices is the harness's plan (any leading shape, batch last); a second
    call continues from where the first stopped, as train_phase on one state does.
    """
    rows = indices.reshape(-1, indices.shape[-1])
    x, y, teacher, student, opt, config = (
        run.x,
        run.y,
        run.teacher,
        run.student,
        run.optimizer,
        run.loss,
    )
    losses = []
    for idx_np, lr in zip(rows, lrs.tolist(), strict=True):
        idx = torch.from_numpy(idx_np).to(run.device)
        xb = as_nchw(x.index_select(0, idx))
        yb = y.index_select(0, idx)
        with torch.no_grad():
            teacher_logits = teacher(xb)
        loss = distill_loss(config, student(xb), yb, teacher_logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        set_lr(opt, lr)
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses).cpu().numpy().astype(np.float64)
