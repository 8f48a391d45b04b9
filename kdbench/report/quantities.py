"""What a report shows: the quantities, their units and the statistics over seeds."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from kdbench.backends.base import backend_names
from kdbench.records.schema import column
from kdbench.tables import COLUMNS as SHOW_COLUMNS

# Phases in the order a cell runs them; records name what they have (older
# ones one "eval" phase, newer ones an inference phase per model).
PHASE_ORDER = ("teacher", "scratch", "distill", "eval_teacher", "eval_student", "eval")
PHASE_NAMES = {
    "teacher": "teacher training",
    "scratch": "student from scratch",
    "distill": "distillation",
    "eval_teacher": "teacher inference",
    "eval_student": "student inference",
    "eval": "inference",
}
TRAIN_PHASES = ("teacher", "scratch", "distill")
MIB = 1024.0**2
CONFIDENCE = 0.95


# Friendlier names for the settings listed under a section heading.
SETTING_NAMES = {
    column("settings.compile"): "compile",
    column("settings.precision"): "precision",
    column("settings.threads"): "threads",
    column("settings.deterministic"): "deterministic",
    column("settings.teacher_batch_size"): "teacher batch size",
    column("settings.student_batch_size"): "student batch size",
    column("settings.eval_batch_size"): "eval batch size",
    column("settings.warmup_steps"): "warm-up steps (excluded from step times)",
    column("settings.method"): "distillation method",
    column("settings.temperature"): "temperature",
    column("settings.alpha"): "alpha (weight of the distillation term)",
}


@dataclass(frozen=True)
class Quantity:
    """One reported quantity: where it is in a record, and how it is shown."""

    column: str
    header: str  # with its unit
    unit: str
    scale: float
    decimals: int
    how: str  # "ci": mean and t-interval; "median": median over seeds; "max"

    def __post_init__(self) -> None:
        # A record column ("metrics.gain", "duration_s"), or a phase field ("warmup_s").
        try:
            column(self.column)
        except KeyError:
            column(f"phases.any.{self.column}")

    @classmethod
    def from_show(cls, column: str, unit: str, how: str, header: str | None = None) -> Quantity:
        """Same header, scale and decimals as `kdbench show`, so both read alike
        (a percentage with two decimals should `show` stop listing it)."""
        name = column.removeprefix("metrics.").replace("_", " ")
        show_header, scale, decimals, _ = SHOW_COLUMNS.get(column, (f"{name} {unit}", 100.0, 2, ""))
        return cls(column, header or show_header, unit, scale, decimals, how)


ACCURACY = [
    Quantity.from_show("metrics.teacher_acc", "%", "ci"),
    Quantity.from_show("metrics.scratch_acc", "%", "ci"),
    Quantity.from_show("metrics.distilled_acc", "%", "ci"),
    Quantity.from_show("metrics.gain", "pts", "ci", "KD gain pts"),
    Quantity.from_show("metrics.agreement", "%", "ci", "teacher-student agreement %"),
]


# Per phase (field in phases.<phase>.*): one table row per spec, phase and backend.
PHASE_QUANTITIES = [
    Quantity("step_time_median_s", "step ms", "ms", 1e3, 3, "median"),
    Quantity("step_time_iqr_s", "step IQR ms", "ms", 1e3, 3, "median"),
    Quantity("throughput_samples_per_s", "samples/s", "samples/s", 1, 0, "median"),
    Quantity("warmup_s", "warm-up ms", "ms", 1e3, 1, "median"),
    Quantity("achieved_flops_per_s", "GFLOP/s", "GFLOP/s", 1e-9, 2, "median"),
    Quantity("fraction_of_peak", "% of peak", "%", 100, 1, "median"),
    Quantity("device_peak_bytes", "device peak MiB", "MiB", 1 / MIB, 1, "max"),
]

# Per cell: the process as a whole.
HOST_QUANTITIES = [
    Quantity("memory.host_peak_rss_bytes", "host peak RSS MiB", "MiB", 1 / MIB, 1, "max"),
    Quantity("memory.framework_import_bytes", "framework import MiB", "MiB", 1 / MIB, 1, "median"),
    Quantity("timings.setup_s", "framework setup s", "s", 1, 2, "median"),
    Quantity("duration_s", "cell wall s", "s", 1, 1, "median"),
]


def phases_of(frame: pd.DataFrame) -> list[str]:
    """The phases these records have, in the order a cell runs them."""
    names = {c.split(".")[1] for c in frame.columns if c.startswith("phases.") and c.count(".") > 1}
    return sorted(
        names, key=lambda p: (PHASE_ORDER.index(p) if p in PHASE_ORDER else len(PHASE_ORDER), p)
    )


@dataclass(frozen=True)
class Stat:
    """A quantity over the seeds of one row."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    median: float
    min: float
    max: float


def describe(values: Iterable[float]) -> Stat:
    """Mean with a two-sided 95% Student-t interval; no interval from one value."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        nan = float("nan")
        return Stat(0, nan, nan, nan, nan, nan, nan, nan)
    mean = float(v.mean())
    if n == 1:
        sd = low = high = float("nan")
    else:
        sd = float(v.std(ddof=1))
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    return Stat(n, mean, sd, low, high, float(np.median(v)), float(v.min()), float(v.max()))


def format_stat(stat: Stat, decimals: int, how: str) -> str:
    """The shown text of one table cell: '-' when nothing finished."""
    if stat.n == 0:
        return "-"
    if how == "median":
        return f"{stat.median:.{decimals}f}"
    if how == "max":
        return f"{stat.max:.{decimals}f}"
    if stat.n == 1:
        return f"{stat.mean:.{decimals}f} (n=1, no interval)"
    return f"{stat.mean:.{decimals}f} ± {(stat.ci_high - stat.mean):.{decimals}f}"


def as_text(value: Any) -> str:
    """A key value as text: missing values are '-', 2.0 is '2'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        return as_text(value.item())
    return str(value)


def backend_order(names: Iterable[str]) -> list[str]:
    known = backend_names()
    return sorted(set(names), key=lambda n: (known.index(n) if n in known else len(known), n))


def settings_shown(settings: dict[str, str]) -> dict[str, str]:
    """The settings with the names a reader knows them by, in the usual order."""
    known = list(SETTING_NAMES)
    order = sorted(settings, key=lambda c: (known.index(c) if c in known else 99, c))
    return {SETTING_NAMES.get(c, c.removeprefix("settings.")): settings[c] for c in order}


def hardware_shown(hardware: dict[str, str]) -> str:
    host = f"{hardware['cpu']}, {hardware['cpus']} CPUs"
    return (
        f"CPU ({host})" if hardware["device"] == "cpu" else f"{hardware['device']} (host: {host})"
    )
