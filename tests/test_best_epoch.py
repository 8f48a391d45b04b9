"""measure.best_epoch: the test accuracy at the epoch of best validation
accuracy, reported beside the last epoch's (never chosen on the test split).
Without it nothing runs between epochs (tests/test_teacher_sources.py checks
those records)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_spec

from kdbench.backends.base import Settings, is_installed
from kdbench.harness.cell import run_cell
from kdbench.spec import load_spec

pytestmark = [
    pytest.mark.jax,
    pytest.mark.skipif(not is_installed("jax"), reason="jax is not installed"),
]


def test_best_epoch_is_chosen_on_validation_and_reported_apart(tmp_path) -> None:
    path = tmp_path / "best.toml"
    path.write_text(tiny_spec("best", epochs=1, student_epochs=4) + "best_epoch = true\n")
    loaded = load_spec(str(path))
    result = run_cell(loaded, "jax", 0, Settings(threads=2))
    m = result.metrics
    for phase, prefix in (("scratch", "scratch"), ("distill", "distilled")):
        stats = result.phases[phase]
        val, test = np.array(stats.val_acc_epochs), np.array(stats.test_acc_epochs)
        assert len(val) == len(test) == 4 and stats.epoch_eval_s > 0
        best = getattr(m, f"{prefix}_best_epoch")
        assert best == int(np.argmax(val)) + 1
        assert getattr(m, f"{prefix}_acc_best_val") == test[best - 1]
        assert getattr(m, f"{prefix}_acc") == pytest.approx(test[-1])  # the headline: last epoch
    assert m.gain_best_val == pytest.approx(m.distilled_acc_best_val - m.scratch_acc_best_val)
