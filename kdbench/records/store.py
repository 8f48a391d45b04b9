"""Result records: one JSON line per cell, appended and flushed at once.

Nothing ever rewrites a results file. Reading keeps every complete record of
a file whose last line was torn by a crash and says so.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.errors import KdbenchError

SCHEMA_VERSION = 1
RESULTS_FILE = "results.jsonl"


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record and make it durable before the next cell starts."""
    line = json.dumps(_finite(record), sort_keys=True, allow_nan=False, default=_jsonable)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _finite(value: Any) -> Any:
    """NaN and infinities become null: standard JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a record")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record in a results file; a torn last line is reported, not fatal."""
    records: list[dict[str, Any]] = []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            is_last = all(not rest.strip() for rest in lines[number:])
            if is_last:
                warnings.warn(
                    f"{path}: line {number} is incomplete (the run was cut off while writing it);"
                    " it was skipped",
                    stacklevel=2,
                )
                continue
            raise KdbenchError(
                f"{path}: line {number} is not a JSON record; the file is damaged"
            ) from None
    return records


def results_path(run: Path) -> Path:
    """The results file of a run folder (or the file itself)."""
    path = run / RESULTS_FILE if run.is_dir() else run
    if not path.is_file():
        raise KdbenchError(
            f"{run}: no {RESULTS_FILE} here; give a run folder made by 'kdbench run' "
            "(for example results/runs/<timestamp>)"
        )
    return path


def load_runs(runs: Iterable[str | Path], keep_step_times: bool = False) -> pd.DataFrame:
    """One row per cell of one or more runs, nested fields flattened with dots."""
    rows: list[dict[str, Any]] = []
    for run in runs:
        path = results_path(Path(run))
        for record in read_records(path):
            record = dict(record)
            record["run_dir"] = str(path.parent)
            if not keep_step_times:
                for phase in (record.get("phases") or {}).values():
                    phase.pop("step_times_s", None)
            rows.append(record)
    if not rows:
        return pd.DataFrame()
    return pd.json_normalize(rows, sep=".")
