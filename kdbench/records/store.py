"""Result records on disk: one JSON line per cell, appended and flushed at once.

Nothing ever rewrites a results file. Reading keeps every complete record of
a file whose last line was torn by a crash and says so; every record read
goes through ``schema.upgrade``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.records.schema import Record, upgrade

RESULTS_FILE = "results.jsonl"


def record_line(record: Record) -> str:
    """The stored form of a record: one line of standard JSON, keys sorted."""
    return json.dumps(_finite(record.to_json()), sort_keys=True, allow_nan=False)


def append_record(path: Path, record: Record) -> None:
    """Append one record and make it durable before the next cell starts."""
    line = record_line(record)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_record_file(path: Path, record: Record) -> None:
    """One record in a file of its own (a cell's result), replaced atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(record_line(record), encoding="utf-8")
    os.replace(tmp, path)


def read_record_file(path: Path) -> Record:
    return upgrade(json.loads(path.read_text(encoding="utf-8")), str(path))


def _finite(value: Any) -> Any:
    """NaN and infinities become null: standard JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def read_records(path: Path) -> list[Record]:
    """Every complete record in a results file; a torn last line is reported, not fatal.

    The whole file is parsed before any record is upgraded, so a damaged line
    is reported as such rather than as a bad record.
    """
    raws: list[tuple[int, Any]] = []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raws.append((number, json.loads(line)))
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
    return [upgrade(raw, f"{path}: line {number}") for number, raw in raws]


def results_path(run: Path) -> Path:
    """The results file of a run folder (or the file itself)."""
    path = run / RESULTS_FILE if run.is_dir() else run
    if not path.is_file():
        raise KdbenchError(
            f"{run}: no {RESULTS_FILE} here; give a run folder made by 'kdbench run' "
            "(for example results/runs/<timestamp>)"
        )
    return path
