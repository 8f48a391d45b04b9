"""Accuracy at the epoch of best validation accuracy (measure.best_epoch).

The reference CIFAR tables report the best test accuracy over training, which
picks the epoch on the test split itself. kdbench keeps the last epoch as the
headline and, apart, reports the test accuracy at the epoch a user could
have chosen: the one with the best validation accuracy (the first such epoch
on ties).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdbench.harness.phases import Cell, predict_all


@dataclass
class EpochTracker:
    """Validation and test accuracy of one training phase, after every epoch."""

    cell: Cell
    val: Any  # the validation split on the device
    test: Any
    val_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)

    def __call__(self, epoch: int, state: Any) -> None:
        model = self.cell.backend.trained_model(state)
        data = self.cell.prepared.data
        batch = self.cell.prepared.spec.measure.eval_batch_size
        for split, y, out in (
            (self.val, data.y_val, self.val_acc),
            (self.test, data.y_test, self.test_acc),
        ):
            logits = predict_all(self.cell, model, split, len(y), batch)[0]
            out.append(float(np.mean(logits.argmax(axis=-1) == y)))

    def best(self) -> tuple[int, float]:
        """(epoch from 1, test accuracy) at the first best validation accuracy."""
        epoch = int(np.argmax(self.val_acc))
        return epoch + 1, self.test_acc[epoch]


def trackers(cell: Cell, val: Any, test: Any) -> dict[str, Callable[[int, Any], None]]:
    """A tracker per student phase, or none without measure.best_epoch or a validation split."""
    if not cell.prepared.spec.measure.best_epoch or val is None:
        return {}
    return {name: EpochTracker(cell, val, test) for name in ("scratch", "distill")}


def best_epoch_metrics(tracked: dict[str, Callable[[int, Any], None]]) -> dict[str, Any]:
    if not tracked:
        return {}
    scratch, distill = tracked["scratch"], tracked["distill"]
    assert isinstance(scratch, EpochTracker) and isinstance(distill, EpochTracker)
    s_epoch, s_acc = scratch.best()
    d_epoch, d_acc = distill.best()
    return {
        "scratch_best_epoch": s_epoch,
        "scratch_acc_best_val": s_acc,
        "distilled_best_epoch": d_epoch,
        "distilled_acc_best_val": d_acc,
        "gain_best_val": d_acc - s_acc,
    }
