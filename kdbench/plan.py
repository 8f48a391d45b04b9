"""The batch plan and the learning-rate schedule, owned by the harness.

Every backend receives the same index arrays in the same order and the same
learning rate at every step, so the three runs are one computation.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from kdbench.spec import NetSpec


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """An independent random stream per (seed, purpose).

    Adding a new use of randomness never shifts the draws of another one.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(purpose.encode())]))


@dataclass(frozen=True)
class BatchPlan:
    """Index arrays for every step: epochs x steps_per_epoch x batch_size."""

    indices: np.ndarray  # int32, (epochs, steps_per_epoch, batch_size)
    # The augmentation of every sample of every step: int32 (epochs,
    # steps_per_epoch, batch_size, 3), rows (dy, dx, flip); None: none.
    crops: np.ndarray | None = None

    def step_crops(self, epoch: int, batch: int) -> np.ndarray | None:
        return None if self.crops is None else self.crops[epoch, batch]

    @property
    def epochs(self) -> int:
        return int(self.indices.shape[0])

    @property
    def steps_per_epoch(self) -> int:
        return int(self.indices.shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.indices.shape[2])

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def make_plan(n_train: int, batch_size: int, epochs: int, rng: np.random.Generator) -> BatchPlan:
    """One fresh permutation per epoch; the ragged last batch is dropped.

    Dropping it keeps shapes static, so no framework recompiles mid-epoch.
    """
    steps = n_train // batch_size
    if steps == 0:
        raise ValueError(f"batch size {batch_size} is larger than the training set ({n_train})")
    rows = [rng.permutation(n_train)[: steps * batch_size] for _ in range(epochs)]
    return BatchPlan(np.stack(rows).reshape(epochs, steps, batch_size).astype(np.int32))


def with_crops(plan: BatchPlan, pad: int, flip: bool, rng: np.random.Generator) -> BatchPlan:
    """The plan with a crop offset in [0, 2 * pad] per axis and, if flip, a
    coin per sample for every step: the same draws for every framework."""
    shape = plan.indices.shape
    crops = np.zeros((*shape, 3), dtype=np.int32)
    crops[..., :2] = rng.integers(0, 2 * pad + 1, size=(*shape, 2))
    if flip:
        crops[..., 2] = rng.integers(0, 2, size=shape)
    return BatchPlan(plan.indices, crops)


def learning_rates(net: NetSpec, plan: BatchPlan) -> np.ndarray:
    """The learning rate of every step, float64, one entry per step."""
    base = net.optimizer.lr
    steps = np.arange(plan.total_steps)
    schedule = net.schedule
    if schedule.name == "constant":
        return np.full(plan.total_steps, base)
    if schedule.name == "cosine":
        return base * 0.5 * (1.0 + np.cos(math.pi * steps / plan.total_steps))
    epoch = steps // plan.steps_per_epoch
    gamma = 0.1 if schedule.gamma is None else schedule.gamma
    if schedule.name == "multistep":
        # PyTorch's MultiStepLR: epoch e (from 0) runs at base * gamma^(milestones <= e).
        passed = np.searchsorted(np.asarray(schedule.milestones), epoch, side="right")
        return base * gamma**passed
    if schedule.every_epochs is None:  # the spec refuses this; a guard for direct callers
        raise ValueError("schedule 'step' needs every_epochs")
    return base * gamma ** (epoch // schedule.every_epochs)
