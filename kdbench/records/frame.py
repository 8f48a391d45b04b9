"""Records as a pandas table: one row per cell, nested fields flattened with dots.

The column names are the schema's field paths (``schema.column`` checks a
name against the schema).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.records.schema import Record
from kdbench.records.store import latest, read_records, results_path


def to_frame(rows: Iterable[tuple[Record, str]], keep_step_times: bool = False) -> pd.DataFrame:
    """(record, run folder) pairs as a table; a run_dir column says where each came from."""
    flat: list[dict[str, Any]] = []
    for record, run_dir in rows:
        row = record.to_json()
        row["run_dir"] = run_dir
        if not keep_step_times:
            for phase in row.get("phases", {}).values():
                phase.pop("step_times_s", None)
        flat.append(row)
    if not flat:
        return pd.DataFrame()
    return pd.json_normalize(flat, sep=".")


def load_runs(runs: Iterable[str | Path], keep_step_times: bool = False) -> pd.DataFrame:
    """One row per cell of one or more run folders (or results files): each
    cell's latest record (a retried cell's newer attempt supersedes the older)."""
    rows: list[tuple[Record, str]] = []
    for run in runs:
        path = results_path(Path(run))
        rows += [(record, str(path.parent)) for record in latest(read_records(path))]
    return to_frame(rows, keep_step_times)
