"""Summary tables: the frameworks side by side, one row per backend."""

from __future__ import annotations

import pandas as pd
from rich.table import Table

from kdbench.records.schema import column

# Rows group by content, not by name: the spec's content hash, the matrix's
# settings label (e.g. "student.epochs=5"), the environment of an A/B run,
# the device and every runtime setting. Two contents under one spec name are
# two rows, the name marked with the hash ("mnist5k #cb83a1f").
GROUP = [
    "spec.name",
    "spec.hash",
    "label",
    "env",
    "device",
    "settings.compile_mode",
    "settings.precision",
    "settings.threads",
    "settings.deterministic",
    "backend",
]
NAMES = [
    "spec",
    "hash",
    "settings",
    "env",
    "device",
    "compile",
    "precision",
    "threads",
    "deterministic",
    "backend",
]
HIDDEN = ("hash",)  # in the spec name where it matters

# column in the records -> (header with unit, scale, decimals, aggregate)
COLUMNS: dict[str, tuple[str, float, int, str]] = {
    "metrics.teacher_acc": ("teacher acc %", 100.0, 2, "mean_std"),
    "metrics.scratch_acc": ("scratch acc %", 100.0, 2, "mean_std"),
    "metrics.distilled_acc": ("distilled acc %", 100.0, 2, "mean_std"),
    "metrics.gain": ("gain pts", 100.0, 2, "mean_std"),
    "metrics.agreement": ("agreement %", 100.0, 1, "mean_std"),
    "phases.teacher.step_time_median_s": ("teacher step ms", 1e3, 2, "median"),
    "phases.distill.step_time_median_s": ("distill step ms", 1e3, 2, "median"),
    "phases.distill.throughput_samples_per_s": ("distill samples/s", 1.0, 0, "median"),
    "phases.distill.warmup_s": ("distill warm-up s", 1.0, 3, "median"),
    "duration_s": ("cell wall s", 1.0, 1, "median"),
}
for _name in [*COLUMNS, *GROUP]:
    column(_name)  # every column is a field of the record schema


def _fmt(values: pd.Series, scale: float, decimals: int, how: str) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna() * scale
    if values.empty:
        return "-"
    if how == "median":
        return f"{values.median():.{decimals}f}"
    if len(values) == 1:
        return f"{values.iloc[0]:.{decimals}f}"
    return f"{values.mean():.{decimals}f} ± {values.std(ddof=1):.{decimals}f}"


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per content (spec hash, settings, device, backend): mean ± sd
    over seeds; "seeds ok" counts distinct seeds (repeats of a seed said apart)."""
    if frame.empty:
        return pd.DataFrame()
    frame = frame.copy()
    for col in GROUP:
        if col not in frame:
            frame[col] = "-"
        frame[col] = frame[col].map(lambda v: "-" if v is None or v == "" or v != v else str(v))
    hashes = frame.groupby("spec.name")["spec.hash"].transform("nunique")
    frame["spec.name"] = frame["spec.name"].where(
        hashes <= 1, frame["spec.name"] + " #" + frame["spec.hash"].str[:7]
    )
    rows = []
    for keys, group in frame.groupby(GROUP, sort=False):
        ok = group[group["status"] == "ok"]
        row = {k: v for k, v in zip(NAMES, keys, strict=True) if k not in HIDDEN}
        seeds = group["seed"].nunique()
        row["seeds ok"] = f"{ok['seed'].nunique()}/{seeds}"
        if len(group) > seeds:
            row["seeds ok"] += f" ({len(ok)}/{len(group)} cells)"
        for col, (header, scale, decimals, how) in COLUMNS.items():
            row[header] = _fmt(ok[col], scale, decimals, how) if col in ok else "-"
        failed = group[group["status"] != "ok"]
        if not failed.empty:
            first = failed.iloc[0]
            row["failures"] = f"{first['status']}: {first.get('error') or ''}"[:120]
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


KEYS = (*(n for n in NAMES if n not in HIDDEN), "failures")


def rich_table(table: pd.DataFrame, title: str) -> Table:
    """The summary as a rich table; key columns that never vary go to the caption."""
    constant = [c for c in KEYS[:-2] if c in table and table[c].nunique() == 1]
    caption = ", ".join(f"{c}: {table[c].iloc[0]}" for c in constant if table[c].iloc[0] != "-")
    table = table.drop(columns=constant)
    out = Table(title=title, caption=caption, header_style="bold")
    for col in table.columns:
        numeric = col not in KEYS
        out.add_column(col, justify="right" if numeric else "left")
    for _, row in table.iterrows():
        out.add_row(*(str(v) for v in row.tolist()))
    return out
