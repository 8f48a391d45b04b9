"""The report's figures, drawn from records with matplotlib's Agg canvas.

Figures are built with `matplotlib.figure.Figure` rather than pyplot, so no
global backend is switched and nothing needs a display.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kdbench.records.schema import column, phase_column
from kdbench.report.aggregate import Section
from kdbench.report.quantities import MIB, PHASE_NAMES, TRAIN_PHASES, backend_order, phases_of
from kdbench.report.sweep import SweepTable, heatmap

COLORS = {"pytorch": "#d62728", "tensorflow": "#2ca02c", "jax": "#1f77b4"}
MARKERS = {"pytorch": "o", "tensorflow": "s", "jax": "^"}
# Curves of frameworks in parity lie on top of each other: nested markers
# and distinct dashes keep every one visible.
LINESTYLES = ["-", "--", ":", "-."]
OTHER_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
DPI = 110


@dataclass(frozen=True)
class Plot:
    """One PNG of the report, with the caption shown under it."""

    section: int
    spec: str
    kind: str
    path: Path
    caption: str


def _color(backend: str, order: list[str]) -> str:
    if backend in COLORS:
        return COLORS[backend]
    others = [b for b in order if b not in COLORS]
    return OTHER_COLORS[others.index(backend) % len(OTHER_COLORS)]


def _marker(backend: str) -> str:
    return MARKERS.get(backend, "D")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "spec"


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", bbox_inches="tight")


def draw_all(sections: Iterable[Section], out_dir: Path) -> list[Plot]:
    """Every figure of every section and spec; one spec's figures sit together.
    A swept spec gets its heatmap instead of four figures per grid point."""
    plots: list[Plot] = []
    for section in sections:
        sweeps = [t.sweep for t in section.tables if isinstance(t, SweepTable)]
        swept = section.cells[column("spec.name")].isin([found.spec for found in sweeps])
        for spec in dict.fromkeys(section.cells.loc[~swept, "spec"]):
            cells = section.cells[section.cells["spec"] == spec]
            stem = f"s{section.index}-{_slug(spec)}"
            for kind, draw in DRAWERS.items():
                path = out_dir / f"{stem}-{kind}.png"
                caption = draw(cells, spec, path)
                if caption is not None:
                    plots.append(Plot(section.index, spec, kind, path, caption))
        for found in sweeps:
            path = out_dir / f"s{section.index}-{_slug(found.spec)}-sweep.png"
            plots.append(Plot(section.index, found.spec, "sweep", path, heatmap(found, path)))
    return plots


def accuracy_vs_throughput(cells: pd.DataFrame, spec: str, path: Path) -> str | None:
    """Accuracy against throughput per framework: teacher and distilled student."""
    ok = cells[cells["status"] == "ok"]
    if ok.empty:
        return None
    order = backend_order(ok["backend"])
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = (
        (
            "teacher",
            column("metrics.teacher_acc"),
            column("phases.teacher.throughput_samples_per_s"),
        ),
        (
            "distilled student",
            column("metrics.distilled_acc"),
            column("phases.distill.throughput_samples_per_s"),
        ),
    )
    drawn = 0
    for ax, (name, acc_col, speed_col) in zip(axes, panels, strict=True):
        for backend in order:
            rows = ok[ok["backend"] == backend]
            acc = _numeric(rows, acc_col).dropna() * 100
            speed = _numeric(rows, speed_col).dropna()
            if acc.empty or speed.empty:
                continue
            x, y = float(speed.median()), float(acc.mean())
            ax.errorbar(
                x,
                y,
                xerr=[[x - speed.min()], [speed.max() - x]],
                yerr=[[y - acc.min()], [acc.max() - y]],
                fmt=_marker(backend),
                color=_color(backend, order),
                markersize=9,
                capsize=4,
                label=f"{backend} (n={len(acc)})",
            )
            ax.scatter(speed, acc, color=_color(backend, order), alpha=0.35, s=18)
            drawn += 1
        ax.set_xscale("log")
        ax.set_xlabel(
            f"{name.split()[0] if name == 'teacher' else 'distillation'} "
            "throughput (samples/s, log scale)"
        )
        ax.set_ylabel(f"{name} test accuracy (%)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8, loc="best")
    if not drawn:
        return None
    fig.suptitle(f"{spec}: accuracy against training throughput")
    _save(fig, path)
    return (
        "Accuracy against steady-state training throughput. Markers: mean accuracy and median "
        "throughput over seeds; bars: min to max over seeds; faint dots: single seeds."
    )


def _steady_times(row: pd.Series, phase: str) -> np.ndarray:
    times = row.get(phase_column(phase, "step_times_s"))
    if not isinstance(times, list | tuple | np.ndarray) or len(times) == 0:
        return np.array([])
    warmup = _num(row.get(phase_column(phase, "warmup_steps")))
    if not np.isfinite(warmup):
        warmup = _num(row.get("settings.warmup_steps"))
    skip = int(warmup) if np.isfinite(warmup) else 0
    values = np.asarray(times, dtype=float)[skip:]
    return values[np.isfinite(values)]


def step_time_distributions(cells: pd.DataFrame, spec: str, path: Path) -> str | None:
    """Box plots of steady-state step times per framework, one panel per phase."""
    ok = cells[cells["status"] == "ok"]
    order = backend_order(ok["backend"])
    data = {p: {b: _pooled(ok[ok["backend"] == b], p) for b in order} for p in phases_of(ok)}
    data = {p: per for p, per in data.items() if any(len(v) for v in per.values())}
    if not data:
        return None
    ncols = min(3, len(data))
    nrows = -(-len(data) // ncols)
    fig = Figure(figsize=(11, 3.7 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    for ax in axes[len(data) :]:
        ax.set_visible(False)
    for ax, (phase, per) in zip(axes, data.items(), strict=False):
        names = [b for b in order if len(per[b])]
        box = ax.boxplot(
            [per[b] * 1e3 for b in names],
            tick_labels=names,
            patch_artist=True,
            whis=(5, 95),
            flierprops={"markersize": 2, "alpha": 0.4},
            medianprops={"color": "black"},
        )
        for patch, b in zip(box["boxes"], names, strict=True):
            patch.set_facecolor(_color(b, order))
            patch.set_alpha(0.6)
        ax.set_yscale("log")
        ax.set_title(PHASE_NAMES.get(phase, phase), fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel(" / ".join(f"n={len(per[b])}" for b in names), fontsize=8)
    for ax in axes[::ncols]:
        ax.set_ylabel("step time (ms, log scale)")
    fig.suptitle(f"{spec}: steady-state step times")
    _save(fig, path)
    return (
        "Step-time distributions, every steady-state step of every finished seed pooled; the "
        "warm-up steps of each phase are excluded. Boxes: quartiles; whiskers: 5th to 95th "
        "percentile; n: steps."
    )


def _pooled(rows: pd.DataFrame, phase: str) -> np.ndarray:
    parts = [_steady_times(row, phase) for _, row in rows.iterrows()]
    return np.concatenate(parts) if parts else np.array([])


def peak_memory(cells: pd.DataFrame, spec: str, path: Path) -> str | None:
    """Grouped bars: peak memory per phase and framework, device where counted."""
    ok = cells[cells["status"] == "ok"]
    order = backend_order(ok["backend"])
    if ok.empty:
        return None
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax = fig.subplots()
    phases = phases_of(ok.dropna(axis=1, how="all"))
    width = 0.8 / max(len(order), 1)
    kinds_used: set[str] = set()
    labelled: set[str] = set()
    for i, backend in enumerate(order):
        rows = ok[ok["backend"] == backend]
        for j, phase in enumerate(phases):
            value, kind = _peak(rows, phase)
            if value is None:
                continue
            kinds_used.add(kind)
            x = j + (i - (len(order) - 1) / 2) * width
            ax.bar(
                x,
                value,
                width,
                color=_color(backend, order),
                alpha=0.85 if kind == "device" else 0.45,
                hatch=None if kind == "device" else "//",
                edgecolor="black",
                linewidth=0.5,
                label=None if backend in labelled else backend,
            )
            labelled.add(backend)
            ax.annotate(
                f"{value:.0f}\n{'dev' if kind == 'device' else 'host'}",
                (x, value),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
    if not kinds_used:
        return None
    ax.set_xticks(range(len(phases)), [PHASE_NAMES.get(p, p) for p in phases], fontsize=8)
    ax.set_ylabel("peak memory (MiB, max over seeds)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.margins(y=0.15)
    ax.grid(True, axis="y", alpha=0.3)
    which = " and ".join(sorted(kinds_used)) or "none"
    fig.suptitle(f"{spec}: peak memory per phase ({which})")
    _save(fig, path)
    return (
        "Peak memory per phase. Solid bars ('dev'): device memory in use, from the framework's "
        "counter. Hatched bars ('host'): the cell process's host RSS high-water mark, shown "
        "where the framework has no device counter (CPU); it only grows over a cell's phases."
    )


def _numeric(rows: pd.DataFrame, column: str) -> pd.Series:
    """A column as numbers; all missing when the records do not have it."""
    if column not in rows:
        return pd.Series(np.nan, index=rows.index)
    return pd.to_numeric(rows[column], errors="coerce")


def _peak(rows: pd.DataFrame, phase: str) -> tuple[float | None, str]:
    """Device peak where the framework counts it, else the host RSS peak."""
    device = _numeric(rows, phase_column(phase, "device_peak_bytes"))
    if device.notna().any():
        return float(device.max()) / MIB, "device"
    host_col = phase_column(phase, "host_peak_rss_bytes")
    host = _numeric(rows, host_col if host_col in rows else column("memory.host_peak_rss_bytes"))
    if host.notna().any():
        return float(host.max()) / MIB, "host RSS"
    return None, ""


def loss_curves(cells: pd.DataFrame, spec: str, path: Path) -> str | None:
    """The training loss of every framework overlaid, for one seed."""
    ok = cells[cells["status"] == "ok"]
    if ok.empty or not any(phase_column(p, "loss_epochs") in ok for p in TRAIN_PHASES):
        return None
    # The seed most frameworks finished, the smallest among equals.
    counts = ok.groupby("seed")["backend"].nunique()
    seed = min(counts[counts == counts.max()].index)
    rows = ok[ok["seed"] == seed]
    order = backend_order(rows["backend"])
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    axes = fig.subplots(1, len(TRAIN_PHASES))
    for ax, phase in zip(axes, TRAIN_PHASES, strict=True):
        curves = []
        for i, backend in enumerate(order):
            row = rows[rows["backend"] == backend].iloc[0]
            losses = row.get(phase_column(phase, "loss_epochs"))
            if not isinstance(losses, list | tuple | np.ndarray) or len(losses) == 0:
                continue
            y = np.array([_num(row.get(phase_column(phase, "loss_step0"))), *map(_num, losses)])
            curves.append(y)
            ax.plot(
                range(len(y)),
                y,
                marker=_marker(backend),
                linestyle=LINESTYLES[i % len(LINESTYLES)],
                color=_color(backend, order),
                label=backend,
                alpha=0.85,
                markersize=max(9 - 2.5 * i, 3),
                markerfacecolor="none" if i < len(order) - 1 else _color(backend, order),
            )
        ax.set_title(PHASE_NAMES.get(phase, phase))
        ax.set_xlabel("epoch (0: loss of the first step)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if curves:
            ax.legend(fontsize=8)
        spread = _spread(curves)
        if spread is not None:
            # Under the axis, not inside it: the curves fall to the bottom edge.
            ax.set_xlabel(
                "epoch (0: loss of the first step)\n"
                f"largest relative gap between frameworks: {spread:.1e}"
            )
    axes[0].set_ylabel("training loss")
    fig.suptitle(f"{spec}: training loss, seed {seed}")
    _save(fig, path)
    return (
        f"Training loss of each framework for seed {seed}: epoch 0 is the loss of the very first "
        "step (same weights, same batch in every framework), epoch k the mean loss over epoch k. "
        "The distill panel shows the full distillation loss of the section's method (soft: "
        "alpha * T^2 * KL + (1 - alpha) * CE), not comparable in scale to the others."
    )


def _spread(curves: list[np.ndarray]) -> float | None:
    """How far apart the frameworks' losses are, relative to their size."""
    if len(curves) < 2 or len({len(c) for c in curves}) != 1:
        return None
    stack = np.vstack(curves)
    gap = (stack.max(axis=0) - stack.min(axis=0)) / np.maximum(np.abs(stack).max(axis=0), 1e-12)
    return float(np.nanmax(gap)) if np.isfinite(gap).any() else None


DRAWERS = {
    "accuracy-throughput": accuracy_vs_throughput,
    "step-times": step_time_distributions,
    "memory": peak_memory,
    "loss": loss_curves,
}
