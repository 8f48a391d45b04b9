"""Hyper-parameter sweeps in a report: the distillation gain over a grid.

A matrix whose cells of one spec vary exactly two numeric spec keys (its
axes, e.g. `distill.temperature` x `distill.alpha`) is a sweep. Choosing a
setting must never look at the test split, so the grid shows the gain on the
validation split (distilled minus scratch student, paired by seed), its mean
and 95% t-interval per grid point and backend; the test gain sits beside it
in the table only to show what the choice would have bought.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from kdbench.records.schema import column
from kdbench.report.aggregate import Section, Table
from kdbench.report.quantities import backend_order, describe

OVERRIDE = "overrides."
VAL_GAIN = "val_gain"


@dataclass(frozen=True)
class Sweep:
    """The grid of one spec in one section: x and y are the varied keys."""

    spec: str  # spec name (the rows' labels carry the axis values)
    x: str
    y: str
    table: pd.DataFrame  # one row per (backend, x, y): n, means and intervals in points


def _varied_keys(cells: pd.DataFrame) -> list[str]:
    keys = []
    for col in cells.columns:
        if not col.startswith(OVERRIDE):
            continue
        values = pd.to_numeric(cells[col], errors="coerce")
        if values.notna().all() and values.nunique() > 1:
            keys.append(col)
    return keys


def find_sweeps(cells: pd.DataFrame) -> list[Sweep]:
    """Every spec of these cells (one report section) swept over two keys."""
    ok = cells[cells["status"] == "ok"]
    found = []
    for spec in dict.fromkeys(ok[column("spec.name")]):
        of_spec = ok[ok[column("spec.name")] == spec].copy()
        keys = _varied_keys(of_spec)
        if len(keys) != 2:
            continue
        x, y = sorted(keys, key=lambda k: of_spec[k].nunique(), reverse=True)
        of_spec[VAL_GAIN] = (
            of_spec[column("metrics.distilled_val_acc")]
            - of_spec[column("metrics.scratch_val_acc")]
        )
        if of_spec[VAL_GAIN].isna().all():
            continue
        found.append(Sweep(spec, x[len(OVERRIDE) :], y[len(OVERRIDE) :], _grid(of_spec, x, y)))
    return found


def _grid(cells: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    rows = []
    for backend in backend_order(cells["backend"]):
        mine = cells[cells["backend"] == backend]
        for (xv, yv), point in mine.groupby([x, y], sort=True):
            val = describe(point[VAL_GAIN] * 100)
            test = describe(point[column("metrics.gain")] * 100)
            rows.append(
                {
                    "backend": backend,
                    x[len(OVERRIDE) :]: float(xv),
                    y[len(OVERRIDE) :]: float(yv),
                    "seeds": val.n,
                    "val_gain_pts": val.mean,
                    "val_gain_ci_low": val.ci_low,
                    "val_gain_ci_high": val.ci_high,
                    "test_gain_pts": test.mean,
                    "test_gain_ci_low": test.ci_low,
                    "test_gain_ci_high": test.ci_high,
                }
            )
    return pd.DataFrame(rows)


def shown(sweep: Sweep) -> pd.DataFrame:
    """The grid as text, a row per y value and backend, a column per x value:
    the validation gain in points with its 95% half-interval."""
    table = sweep.table
    out = []
    for backend in dict.fromkeys(table["backend"]):
        mine = table[table["backend"] == backend]
        for yv in sorted(mine[sweep.y].unique()):
            row = {"backend": backend, sweep.y: f"{yv:g}"}
            for _, point in mine[mine[sweep.y] == yv].sort_values(sweep.x).iterrows():
                half = point["val_gain_ci_high"] - point["val_gain_pts"]
                text = f"{point['val_gain_pts']:+.2f}"
                row[f"{sweep.x}={point[sweep.x]:g}"] = (
                    text if np.isnan(half) else f"{text} ± {half:.2f}"
                )
            out.append(row)
    return pd.DataFrame(out)


def heatmap(sweep: Sweep, path: Path) -> str:
    """One panel per backend on a shared colour scale centred on zero; a
    point whose interval lies above zero is marked with a star."""
    table = sweep.table
    backends = list(dict.fromkeys(table["backend"]))
    xs = sorted(table[sweep.x].unique())
    ys = sorted(table[sweep.y].unique())
    bound = float(np.nanmax(np.abs(table["val_gain_pts"]))) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
    fig = Figure(figsize=(1.2 + 0.9 * len(xs) * len(backends), 1.2 + 0.6 * len(ys)))
    axes = fig.subplots(1, len(backends), squeeze=False)[0]
    image = None
    for ax, backend in zip(axes, backends, strict=True):
        mine = table[table["backend"] == backend].set_index([sweep.y, sweep.x])
        grid = np.full((len(ys), len(xs)), np.nan)
        for i, yv in enumerate(ys):
            for j, xv in enumerate(xs):
                if (yv, xv) not in mine.index:
                    continue
                point = mine.loc[(yv, xv)]
                grid[i, j] = point["val_gain_pts"]
                star = "*" if point["val_gain_ci_low"] > 0 else ""
                color = "white" if abs(grid[i, j]) > 0.6 * bound else "black"
                text = f"{grid[i, j]:+.1f}{star}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
        image = ax.imshow(grid, cmap="RdBu", norm=norm, origin="lower", aspect="auto")
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
        ax.set_xlabel(sweep.x)
        ax.set_title(backend)
    axes[0].set_ylabel(sweep.y)
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="validation gain (points)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png", bbox_inches="tight")
    seeds = sorted(set(table["seeds"]))
    return (
        f"{sweep.spec}: mean validation gain of distillation (points, distilled minus scratch "
        f"student, {'/'.join(map(str, seeds))} seeds) over {sweep.x} x {sweep.y}; "
        "* where the 95% interval lies above zero"
    )


@dataclass(kw_only=True)
class SweepTable(Table):
    """A sweep's report table, which keeps its sweep for the heatmap."""

    sweep: Sweep


def sweep_tables(section: Section) -> list[SweepTable]:
    """The section's sweeps as report tables (shown in every format, tidy in
    csv/sweep.csv)."""
    tables = []
    for sweep in find_sweeps(section.cells):
        tidy = sweep.table.assign(section=section.index, spec=sweep.spec, x=sweep.x, y=sweep.y)
        title = f"Sweep of {sweep.spec}: validation gain (points) over {sweep.x} x {sweep.y}"
        note = (
            "Distilled minus scratch student's accuracy on the validation split, mean ± the "
            "95% t half-interval over seeds; the test split's gain is in csv/sweep.csv, "
            "not for choosing."
        )
        tables.append(SweepTable("sweep", title, shown(sweep), tidy, [note], sweep=sweep))
    return tables
