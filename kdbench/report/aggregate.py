"""From records to report tables: sections by hardware and settings, stats over seeds.

Every number shown comes from the records alone. A section holds the cells
that ran on the same hardware with the same fairness settings, because only
those may share a table; inside it, a row per spec and backend, over seeds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.records.frame import load_runs
from kdbench.records.schema import column, phase_column
from kdbench.report.provenance import code_notes, frameworks_environment, runs_environment
from kdbench.report.quantities import (
    ACCURACY,
    CONFIDENCE,
    HOST_QUANTITIES,
    PHASE_NAMES,
    PHASE_QUANTITIES,
    Quantity,
    Stat,
    as_text,
    backend_order,
    describe,
    format_stat,
    hardware_shown,
    phases_of,
    settings_shown,
)

if TYPE_CHECKING:  # compile_modes imports this module
    from kdbench.report.compile_modes import Comparison

# The hardware a cell ran on: cells on different hardware never share a table.
HARDWARE = ["device", column("host.cpu"), column("host.cpu_count")]
# settings.* that are no fairness setting of their own: the resolved compile
# mode spells settings.compile, the device the cell ran on replaces the one
# asked for, and the method and its loss are what a method table compares
# (spec content: the spec's name, and hash, tell its rows apart).
NOT_FAIRNESS = {
    column(f"settings.{name}")
    for name in ("compile_mode", "device", "method", "temperature", "alpha", "loss_terms")
}
# Where a cell failed before it chose a device and no cell of its run says which.
UNKNOWN_DEVICE = "unknown device"
# The row key inside a section.
ROW = [column("spec.name"), "label", column("spec.hash"), "backend"]
TAGS = ["label", "env"]  # the matrix label, the A/B run's environment: "" when none


@dataclass
class Table:
    """One table of a section: shown text and the numbers behind it."""

    name: str  # file stem of its CSV: accuracy, speed, resources, failures
    title: str
    shown: pd.DataFrame  # strings, one row per spec and backend
    tidy: pd.DataFrame  # one row per (row, quantity), numbers in `unit`
    notes: list[str] = field(default_factory=list)


@dataclass
class Section:
    """Cells that ran on the same hardware with the same fairness settings."""

    index: int
    hardware: dict[str, str]
    settings: dict[str, str]  # settings.* column -> value
    cells: pd.DataFrame
    tables: list[Table] = field(default_factory=list)

    @property
    def settings_shown(self) -> dict[str, str]:
        return settings_shown(self.settings)

    @property
    def title(self) -> str:
        return f"Section {self.index}: {hardware_shown(self.hardware)}"

    @property
    def key(self) -> dict[str, str]:
        """Hardware and settings, for the tidy CSV files."""
        return {**{f"hardware.{k}": v for k, v in self.hardware.items()}, **self.settings}


@dataclass
class Report:
    runs: list[Path]
    frame: pd.DataFrame  # every cell, step times kept
    sections: list[Section]
    runs_env: pd.DataFrame
    frameworks_env: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)  # across sections


def run_paths(runs: Sequence[str | Path]) -> list[Path]:
    """The run folders named, each once however it was spelled."""
    seen: dict[Path, Path] = {}
    for run in runs:
        path = Path(run)
        if not path.exists():
            raise KdbenchError(f"run folder {run} does not exist")
        seen.setdefault(path.resolve(), path)
    return list(seen.values())


def load(runs: Sequence[str | Path]) -> pd.DataFrame:
    """All cells of the runs, the last record of a cell winning, keys as text."""
    seen = run_paths(runs)
    frame = load_runs(seen, keep_step_times=True)
    if frame.empty:
        raise KdbenchError(f"no records in {', '.join(map(str, seen))}; nothing to report")
    for col in ["device", *TAGS, "framework", "framework_version", "error", *HARDWARE, *ROW]:
        if col not in frame:
            frame[col] = None
    frame["device"] = _infer_failed_devices(frame)
    settings = _settings_columns(frame)
    for col in [*HARDWARE, *ROW, *settings, *TAGS]:
        frame[col] = frame[col].map(as_text)
    for col in TAGS:
        frame[col] = frame[col].replace("-", "")
    frame["device"] = frame["device"].map(lambda d: " ".join(d.split()))
    # A cell recorded twice in one run (a re-run appended to the same file)
    # counts once, its last record winning; cells that differ in spec or
    # settings stay apart even under one cell id.
    same_cell = ["run_dir", "cell_id", column("spec.hash"), "label", *settings]
    frame = frame.drop_duplicates(subset=same_cell, keep="last").reset_index(drop=True)
    for q in [*ACCURACY, *HOST_QUANTITIES]:
        if q.column not in frame:
            frame[q.column] = np.nan
    return frame


def _settings_columns(frame: pd.DataFrame) -> list[str]:
    """The fairness settings of these records. Without the requested compile
    setting (older records) the resolved mode is all there is, and it splits."""
    skip = (
        NOT_FAIRNESS
        if column("settings.compile") in frame
        else NOT_FAIRNESS - {column("settings.compile_mode")}
    )
    return sorted(c for c in frame.columns if c.startswith("settings.") and c not in skip)


def _infer_failed_devices(frame: pd.DataFrame) -> pd.Series:
    """A cell that failed before choosing its device gets the device its run's
    other cells used, when they agree, so it is listed beside them."""
    device = frame["device"].copy()
    requested = frame.get("settings.device", pd.Series("-", index=frame.index)).map(as_text)
    known = device.notna()
    for i in frame.index[~known]:
        same = (
            known
            & (frame["run_dir"] == frame.at[i, "run_dir"])
            & (frame[column("host.cpu")].map(as_text) == as_text(frame.at[i, column("host.cpu")]))
            & (requested == requested[i])
        )
        for mask in (same & (frame["backend"] == frame.at[i, "backend"]), same):
            found = set(device[mask])
            if len(found) == 1:
                device[i] = found.pop()
                break
        else:
            device[i] = UNKNOWN_DEVICE
    return device


def _row_label(frame: pd.DataFrame) -> pd.Series:
    """The spec as shown: its name, the matrix label, the environment of an A/B
    run, and its hash when one name stands for several spec contents in the
    same section."""
    tags = frame["label"].str.cat(frame["env"].map(lambda e: f"env={e}" if e else ""), sep=",")
    tags = tags.str.strip(",")
    label = frame[column("spec.name")] + tags.map(lambda x: f" [{x}]" if x else "")
    hashes = frame.groupby(label)[column("spec.hash")].transform("nunique")
    return label + np.where(hashes > 1, " #" + frame[column("spec.hash")].str[:7], "")


def build(runs: Sequence[str | Path]) -> Report:
    """Read the runs and compute every table of the report."""
    from kdbench.report.sweep import sweep_tables  # it imports this module

    frame = load(runs)
    settings_cols = _settings_columns(frame)
    sections = []
    keys = HARDWARE + settings_cols
    for index, (key, cells) in enumerate(frame.groupby(keys, sort=False, dropna=False), start=1):
        values = dict(zip(keys, key, strict=True))
        hardware = {
            "device": values["device"],
            "cpu": values[column("host.cpu")],
            "cpus": values[column("host.cpu_count")],
        }
        settings = {c: values[c] for c in settings_cols}
        cells = cells.copy()
        cells["spec"] = _row_label(cells)
        section = Section(index, hardware, settings, cells)
        section.tables = [_accuracy(section), _phases(section), _host(section)]
        section.tables += [t for t in [_failures(section)] if t is not None]
        section.tables += sweep_tables(section)
        sections.append(section)
    notes = code_notes(frame)
    if len(sections) > 1:
        notes.append(
            f"The cells ran on {len({tuple(s.hardware.values()) for s in sections})} kinds of "
            f"hardware or with different fairness settings: {len(sections)} sections, and "
            "numbers from different sections are not comparable."
        )
    from kdbench.report.compile_modes import compile_comparisons  # it imports this module

    return Report(
        run_paths(runs),
        frame,
        sections,
        runs_environment(frame),
        frameworks_environment(frame),
        notes,
        compile_comparisons(sections),
    )


def _rows(cells: pd.DataFrame) -> Iterable[tuple[str, str, pd.DataFrame]]:
    """(spec shown, backend, cells) in spec order, then the usual backend order."""
    for spec in dict.fromkeys(cells["spec"]):
        of_spec = cells[cells["spec"] == spec]
        for backend in backend_order(of_spec["backend"]):
            yield spec, backend, of_spec[of_spec["backend"] == backend]


def _seeds_ok(ok: pd.DataFrame, group: pd.DataFrame) -> str:
    """Distinct seeds that finished, of those tried; repeated cells said apart."""
    seeds = group["seed"].map(as_text)
    text = f"{ok['seed'].map(as_text).nunique()}/{seeds.nunique()}"
    return text if len(group) == seeds.nunique() else f"{text} ({len(ok)}/{len(group)} cells)"


def _status(group: pd.DataFrame) -> str:
    bad = group[group["status"] != "ok"]
    if bad.empty:
        return "ok"
    counts = ", ".join(f"{n} {s}" for s, n in bad["status"].value_counts().items())
    reason = as_text(bad.iloc[0]["error"]).splitlines()[0] if len(bad) else ""
    return f"{counts}: {reason[:100]}"


Row = tuple[dict[str, str], pd.DataFrame, list[Quantity]]


def _values(ok: pd.DataFrame, q: Quantity) -> pd.Series:
    """The quantity over the finished seeds of a row, scaled to its unit."""
    if q.column not in ok:
        return pd.Series(dtype=float)
    values = pd.to_numeric(ok[q.column], errors="coerce") * q.scale
    if q.how == "ci":
        # Seeds are the independent replicates: the same seed run twice (in
        # two runs) trains the same model, so its repeats count once.
        values = values.groupby(ok["seed"].map(as_text)).mean()
    return values.dropna()


def _table(section: Section, name: str, title: str, rows: Iterable[Row]) -> Table:
    """Shown text and tidy numbers for rows of (keys, cells, quantities)."""
    shown_rows, tidy_rows = [], []
    for keys, group, quantities in rows:
        ok = group[group["status"] == "ok"]
        row = {k: v for k, v in keys.items() if k != "phase"}
        if "phase" in keys:
            row = {"spec": keys["spec"], "phase": PHASE_NAMES.get(keys["phase"], keys["phase"])}
            row["backend"] = keys["backend"]
            modes = sorted({as_text(m) for m in ok.get("settings.compile_mode", pd.Series())})
            row["compile mode"] = ", ".join(modes) or "-"
        if name == "accuracy":
            row["seeds ok"] = _seeds_ok(ok, group)
        for q in quantities:
            stat = describe(_values(ok, q))
            row[q.header] = format_stat(stat, q.decimals, q.how)
            tidy_rows.append(
                {
                    "section": section.index,
                    **section.key,
                    **keys,
                    "spec_hash": group[column("spec.hash")].iloc[0],
                    "quantity": q.column,
                    "unit": q.unit,
                    "aggregate": {"ci": "mean", "median": "median", "max": "max"}[q.how],
                    **{k: getattr(stat, k) for k in Stat.__dataclass_fields__},
                }
            )
        if name == "accuracy":
            row["status"] = _status(group)
        shown_rows.append(row)
    return Table(name, title, pd.DataFrame(shown_rows), pd.DataFrame(tidy_rows))


def _accuracy(section: Section) -> Table:
    rows = (({"spec": s, "backend": b}, g, ACCURACY) for s, b, g in _rows(section.cells))
    table = _table(section, "accuracy", "Accuracy over seeds", rows)
    table.notes.append(
        f"mean ± half-width of the {CONFIDENCE:.0%} Student-t confidence interval over the "
        "seeds that finished (a seed run in several runs counts once, its repeats averaged); "
        "the KD gain is distilled minus scratch accuracy of the same seed (paired), in "
        "percentage points. Test-set accuracy after the last epoch."
    )
    return table


def _phases(section: Section) -> Table:
    """One row per spec, phase and backend: the frameworks side by side per phase."""
    cells = section.cells
    rows: list[Row] = []
    for spec in dict.fromkeys(cells["spec"]):
        of_spec = cells[cells["spec"] == spec]
        for phase in phases_of(of_spec.dropna(axis=1, how="all")):
            quantities = [
                replace(q, column=phase_column(phase, q.column)) for q in PHASE_QUANTITIES
            ]
            for backend in backend_order(of_spec["backend"]):
                keys = {"spec": spec, "phase": phase, "backend": backend}
                rows.append((keys, of_spec[of_spec["backend"] == backend], quantities))
    table = _table(section, "phases", "Speed, compute and device memory per phase", rows)
    if not rows:
        table.notes.append("No phase timings in these records.")
        return table
    table.shown, dropped = _drop_empty(table.shown)
    table.notes.append(
        "Median over seeds of each cell's steady-state median step (the warm-up steps "
        "excluded, the device synchronised before the clock stops); IQR: each cell's "
        "interquartile range of step times; samples/s = batch size / median step. Warm-up ms: "
        "the warm-up steps, compilation included. GFLOP/s: analytic FLOPs per step / median "
        "step. Device peak MiB: the largest in-use peak the framework reported over seeds."
    )
    cached = cells.get("phases.teacher.from_cache")
    if cached is not None and cached.map(lambda v: v is True).any():
        table.notes.append(
            f"{int(cached.map(lambda v: v is True).sum())} cell(s) loaded a cached teacher: "
            "their teacher-training timings are those of the cell that trained it."
        )
    if dropped:
        table.notes.append(f"Not in these records: {', '.join(dropped)}.")
    return table


def _host(section: Section) -> Table:
    rows = (({"spec": s, "backend": b}, g, HOST_QUANTITIES) for s, b, g in _rows(section.cells))
    table = _table(section, "host", "Host memory and set-up per cell", rows)
    table.shown, dropped = _drop_empty(table.shown)
    table.notes.append(
        "Host peak RSS: the cell process's resident high-water mark (max over seeds); "
        "framework import: resident memory the framework's import and set-up added; "
        "cell wall: the whole cell, data loading and every phase included (median)."
    )
    if dropped:
        table.notes.append(f"Not in these records: {', '.join(dropped)}.")
    return table


def _drop_empty(shown: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Columns that no cell of the section has (a CPU has no device counter;
    older records have no FLOP/s) are left out and named in a note."""
    keys = ("spec", "phase", "backend", "compile mode")
    empty = [c for c in shown.columns if c not in keys and (shown[c] == "-").all()]
    return shown.drop(columns=empty), empty


def _failures(section: Section) -> Table | None:
    bad = section.cells[section.cells["status"] != "ok"]
    if bad.empty:
        return None
    rows = []
    for _, cell in bad.iterrows():
        rows.append(
            {
                "spec": cell["spec"],
                "backend": cell["backend"],
                "seed": as_text(cell.get("seed")),
                "status": cell["status"],
                "error": as_text(cell.get("error")),
                "cell": cell["cell_id"],
                "run": Path(cell["run_dir"]).name,
            }
        )
    tidy = pd.DataFrame([{"section": section.index, **section.key, **r} for r in rows])
    shown = pd.DataFrame(rows)
    shown["error"] = shown["error"].map(lambda e: e if len(e) <= 160 else e[:157] + "...")
    return Table(
        "failures",
        "Cells that did not finish",
        shown,
        tidy,
        ["Every failed, timed-out or out-of-memory cell; the tables above use finished cells."],
    )
