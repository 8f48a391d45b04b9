"""The compile-mode table: what compiling costs at the start of a phase against
what it saves on every later step, so a reader sees when compilation pays off.

Each compile mode is a fairness setting, so its cells sit in sections of their
own; this table puts side by side the modes of cells that agree on everything
else (hardware and every other setting). It is built only when such cells ran
in more than one mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from kdbench.records.schema import column, phase_column
from kdbench.report.aggregate import Section, Table
from kdbench.report.quantities import (
    PHASE_NAMES,
    as_text,
    backend_order,
    hardware_shown,
    settings_shown,
)

COMPILE = column("settings.compile")
COMPILE_MODE = column("settings.compile_mode")
MODES = ("eager", "default", "compiled")  # the order rows are shown in
PHASES = ("teacher", "distill")  # training phases: the teacher's, the distillation
BASES = ("eager", "default")  # what a mode's break-even is counted against

NOTE = (
    "One row per phase, backend and compile setting (compile mode: the framework's own name "
    "for it); each number is the median over the seeds that finished. Warm-up s: the phase's "
    "first {warmup} steps, compilation included; first step s: the first of them; step ms and "
    "IQR ms: the steady state after the warm-up; steps total s: every step of the phase, "
    "warm-up and any later recompilation included. Break-even: the step count of the phase "
    "from which this mode's time (its warm-up, then its median step) is below that of the "
    "framework's eager (or default) mode: never when its steady steps are not faster, at once "
    "when its warm-up is not slower either. 'within noise' marks a step-time difference "
    "smaller than the mean of the two IQRs, where the break-even is not to be trusted."
)


@dataclass
class Comparison:
    """Cells of several sections compared across one setting (here: compile)."""

    index: str  # an anchor, never a section number: no figures belong to it
    hardware: dict[str, str]
    settings: dict[str, str]  # the settings the compared sections share
    tables: list[Table] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"Compile modes: {hardware_shown(self.hardware)}"

    @property
    def settings_shown(self) -> dict[str, str]:
        return settings_shown(self.settings)


def break_even(
    warmup_s: float, step_s: float, base_warmup_s: float, base_step_s: float, warmup_steps: int
) -> float:
    """Steps of a phase after which a mode's time drops below the base mode's:
    inf when its steady step is not faster, 0 when it is never behind."""
    if not step_s < base_step_s:
        return math.inf
    extra = warmup_s - base_warmup_s
    if extra <= 0:
        return 0.0
    return float(warmup_steps + math.ceil(extra / (base_step_s - step_s)))


def break_even_text(steps: float, noisy: bool) -> str:
    """'never', 'at once' or the step count, marked when the step difference is noise."""
    text = "never" if math.isinf(steps) else "at once" if steps == 0 else f"{steps:,.0f}"
    return f"{text} (within noise)" if noisy else text


def compile_comparisons(sections: list[Section]) -> list[Comparison]:
    """One comparison per hardware and other settings whose cells ran in more
    than one compile mode; none when the runs used one mode."""
    groups: dict[tuple[str, ...], list[Section]] = {}
    for section in sections:
        if COMPILE not in section.settings:
            continue
        rest = {k: v for k, v in section.settings.items() if k != COMPILE}
        key = (*section.hardware.values(), *(f"{k}={v}" for k, v in sorted(rest.items())))
        groups.setdefault(key, []).append(section)
    out = []
    for group in groups.values():
        if len({s.settings[COMPILE] for s in group}) < 2:
            continue
        first = group[0]
        shared = {k: v for k, v in first.settings.items() if k != COMPILE}
        comparison = Comparison(f"compile-{len(out) + 1}", first.hardware, shared)
        cells = pd.concat([s.cells for s in group])
        cells["spec"] = _spec_label(cells)
        comparison.tables.append(_table(comparison, cells))
        out.append(comparison)
    return out


def _spec_label(cells: pd.DataFrame) -> pd.Series:
    """The spec as shown, without the compile mode a matrix label names: the
    modes of one spec and other axes share rows (hash shown when one name
    stands for several spec contents)."""
    rest = cells["label"].map(
        lambda text: ",".join(p for p in text.split(",") if p and not p.startswith("compile="))
    )
    label = cells[column("spec.name")] + rest.map(lambda x: f" [{x}]" if x else "")
    spec_hash = cells[column("spec.hash")]
    several = cells.groupby(label)[column("spec.hash")].transform("nunique") > 1
    return label + several.map({True: " #", False: ""}) + spec_hash.str[:7].where(several, "")


def _median(ok: pd.DataFrame, col: str) -> float:
    values = pd.to_numeric(ok[col], errors="coerce").dropna() if col in ok else pd.Series()
    return float(values.median()) if len(values) else math.nan


def _total(ok: pd.DataFrame, col: str) -> float:
    """Median over seeds of the sum of a phase's step times."""
    if col not in ok:
        return math.nan
    sums = [sum(v) for v in ok[col] if isinstance(v, list) and v]
    return float(pd.Series(sums).median()) if sums else math.nan


def _status(group: pd.DataFrame) -> str:
    bad = group[group["status"] != "ok"]
    if bad.empty:
        return "ok"
    counts = ", ".join(f"{n} {s}" for s, n in bad["status"].value_counts().items())
    return f"{counts}: {as_text(bad.iloc[0]['error']).splitlines()[0][:100]}"


def _fmt(value: float, scale: float, decimals: int) -> str:
    return "-" if math.isnan(value) else f"{value * scale:,.{decimals}f}"


def _table(comparison: Comparison, cells: pd.DataFrame) -> Table:
    shown, tidy = [], []
    warmups = set()
    cached = 0
    for spec in dict.fromkeys(cells["spec"]):
        of_spec = cells[cells["spec"] == spec]
        for phase in PHASES:
            for backend in backend_order(of_spec["backend"]):
                mine = of_spec[of_spec["backend"] == backend]
                rows = _phase_rows(mine, phase)
                if not rows:
                    continue
                for mode, row in rows.items():
                    group = mine[mine[COMPILE] == mode]
                    warmups |= {as_text(w) for w in row["_warmup_steps"]}
                    cached += row.pop("_cached")
                    keys = {"spec": spec, "phase": phase, "backend": backend, "compile": mode}
                    evens = {b: _versus(row, rows.get(b)) for b in BASES if b != mode}
                    shown.append(_shown(keys, row, evens, group))
                    tidy += _tidy(comparison, keys, row, evens, group)
    notes = [NOTE.format(warmup="/".join(sorted(warmups - {"-"})) or "warm-up")]
    if cached:
        notes.append(
            f"{cached} row(s) include cells that loaded a cached teacher: their teacher-training "
            "timings are those of the cell that trained it."
        )
    title = "Compile time against steady-state step time"
    return Table("compile", title, pd.DataFrame(shown), pd.DataFrame(tidy), notes)


def _phase_rows(cells: pd.DataFrame, phase: str) -> dict[str, dict]:
    """Per compile setting of one backend: the phase's numbers (medians over seeds)."""
    col = {
        f: phase_column(phase, f)
        for f in ("warmup_s", "first_step_s", "step_time_median_s", "step_time_iqr_s", "steps")
    }
    if not any(c in cells for c in col.values()):
        return {}
    modes = sorted(set(cells[COMPILE]), key=lambda m: (MODES.index(m) if m in MODES else 9, m))
    rows = {}
    for mode in modes:
        ok = cells[(cells[COMPILE] == mode) & (cells["status"] == "ok")]
        from_cache = ok.get(phase_column(phase, "from_cache"), pd.Series(dtype=object))
        rows[mode] = {
            "seeds": ok["seed"].map(as_text).nunique(),
            "compile_mode": ", ".join(sorted({as_text(m) for m in ok.get(COMPILE_MODE, [])})),
            "warmup_s": _median(ok, col["warmup_s"]),
            "first_step_s": _median(ok, col["first_step_s"]),
            "step_s": _median(ok, col["step_time_median_s"]),
            "iqr_s": _median(ok, col["step_time_iqr_s"]),
            "steps": _median(ok, col["steps"]),
            "total_s": _total(ok, phase_column(phase, "step_times_s")),
            "_warmup_steps": set(ok.get(phase_column(phase, "warmup_steps"), [])),
            "_cached": int(from_cache.map(lambda v: v is True).any()),
        }
    return rows


def _versus(row: dict, base: dict | None) -> tuple[float, bool]:
    """Break-even steps against a base row, and whether the step difference is noise."""
    needed = (row["warmup_s"], row["step_s"], base["warmup_s"], base["step_s"]) if base else ()
    if not needed or any(math.isnan(x) for x in needed):
        return math.nan, False
    warmups = [int(w) for w in row["_warmup_steps"] if as_text(w) != "-"]
    steps = break_even(
        row["warmup_s"], row["step_s"], base["warmup_s"], base["step_s"], max(warmups, default=0)
    )
    noisy = abs(base["step_s"] - row["step_s"]) < (row["iqr_s"] + base["iqr_s"]) / 2
    return steps, noisy


def _shown(
    keys: dict, row: dict, evens: dict[str, tuple[float, bool]], group: pd.DataFrame
) -> dict[str, str]:
    out = {
        "spec": keys["spec"],
        "phase": PHASE_NAMES.get(keys["phase"], keys["phase"]),
        "backend": keys["backend"],
        "compile": keys["compile"],
        "compile mode": row["compile_mode"] or "-",
        "steps": _fmt(row["steps"], 1, 0),
        "warm-up s": _fmt(row["warmup_s"], 1, 3),
        "first step s": _fmt(row["first_step_s"], 1, 3),
        "step ms": _fmt(row["step_s"], 1e3, 3),
        "step IQR ms": _fmt(row["iqr_s"], 1e3, 3),
        "steps total s": _fmt(row["total_s"], 1, 2),
    }
    for base in BASES:
        steps, noisy = evens.get(base, (math.nan, False))
        out[f"break-even vs {base}"] = "-" if math.isnan(steps) else break_even_text(steps, noisy)
    out["status"] = _status(group)
    return out


def _tidy(
    comparison: Comparison,
    keys: dict,
    row: dict,
    evens: dict[str, tuple[float, bool]],
    group: pd.DataFrame,
) -> list[dict]:
    """The numbers in their units: break-even steps are inf for never, empty where none."""
    base_row = {
        "comparison": comparison.index,
        **{f"hardware.{k}": v for k, v in comparison.hardware.items()},
        **comparison.settings,
        **keys,
        "compile_mode": row["compile_mode"],
        "spec_hash": group[column("spec.hash")].iloc[0],
        "seeds_ok": row["seeds"],
        "status": "ok" if (group["status"] == "ok").all() else "not all ok",
    }
    values = [
        ("steps", "steps", row["steps"]),
        ("warmup_s", "s", row["warmup_s"]),
        ("first_step_s", "s", row["first_step_s"]),
        ("step_time_median_s", "s", row["step_s"]),
        ("step_time_iqr_s", "s", row["iqr_s"]),
        ("step_times_total_s", "s", row["total_s"]),
        *((f"break_even_steps_vs_{b}", "steps", steps) for b, (steps, _) in evens.items()),
    ]
    return [{**base_row, "quantity": q, "unit": u, "value": v} for q, u, v in values]
