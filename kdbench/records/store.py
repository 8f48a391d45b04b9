"""Result records on disk: one file per cell attempt, and one JSON line per record.

A cell's record is first published as a file of its own (written to a temp
file, flushed, fsynced and renamed into place, so it is whole or absent);
then the run's single writer appends it to ``results.jsonl``, the merged
view every reader uses. Record files are never deleted: if the append
fails, the file is still there and the next ``--resume`` merges it.

Appending never writes onto a torn line: a fragment left by a crash is moved
to a side file first. Reading skips a damaged line with a warning (the
writer moves it aside the next time it opens the run), so one bad line costs
that line only. Every record read goes through ``schema.upgrade``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.records.schema import Record, upgrade

RESULTS_FILE = "results.jsonl"
TORN_FILE = "results.torn.txt"  # fragments of lines a crash cut off
QUARANTINE_FILE = "results.quarantine.txt"  # damaged lines, with their line numbers


def record_line(record: Record) -> str:
    """The stored form of a record: one line of standard JSON, keys sorted."""
    return json.dumps(_finite(record.to_json()), sort_keys=True, allow_nan=False)


def _finite(value: Any) -> Any:
    """NaN and infinities become null: standard JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in folder durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """path holds text entirely or keeps what it held: temp file, fsync, rename.

    The temp file is removed if anything fails (disk full, permissions).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def publish_record(path: Path, record: Record) -> None:
    """One record in a file of its own (a cell attempt's result), atomically."""
    write_atomic(path, record_line(record) + "\n")


def read_record_file(path: Path) -> Record:
    return upgrade(json.loads(path.read_text(encoding="utf-8")), str(path))


def append_record(path: Path, record: Record) -> None:
    """Append one record and make it durable before the next cell starts.

    A torn last line (a crash mid-write) is moved aside first, so the record
    never lands on a fragment.
    """
    line = record_line(record)
    set_aside_torn_tail(path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def set_aside_torn_tail(path: Path) -> str | None:
    """Move an unterminated last line to TORN_FILE and cut it from path; what was done."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as fh:
        data = fh.read()
    if data.endswith(b"\n"):
        return None
    keep = data.rfind(b"\n") + 1
    side = path.with_name(TORN_FILE)
    with open(side, "ab") as fh:
        fh.write(data[keep:] + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    with open(path, "r+b") as fh:
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    line = data[:keep].count(b"\n") + 1
    return (
        f"{path}: line {line} was cut off by a crash; its {len(data) - keep} bytes moved to {side}"
    )


def _lines(path: Path) -> list[tuple[int, str, Any]]:
    """(line number, text, parsed JSON or None if damaged) of every non-empty line."""
    out = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            out.append((number, line, json.loads(line)))
        except (json.JSONDecodeError, RecursionError):
            out.append((number, line, None))
    return out


def quarantine_damaged(path: Path) -> list[str]:
    """Move damaged lines (not JSON) to QUARANTINE_FILE and rewrite path without them.

    For the run's writer, under its lock. Returns what was moved, one line each.
    """
    if not path.exists():
        return []
    lines = _lines(path)
    damaged = [(n, text) for n, text, raw in lines if raw is None]
    if not damaged:
        return []
    side = path.with_name(QUARANTINE_FILE)
    with open(side, "a", encoding="utf-8") as fh:
        for number, text in damaged:
            fh.write(json.dumps({"file": path.name, "line": number, "text": text}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    kept = "".join(text + "\n" for _, text, raw in lines if raw is not None)
    write_atomic(path, kept)
    return [f"{path}: line {n} was damaged; moved to {side}" for n, _ in damaged]


def read_records(path: Path) -> list[Record]:
    """Every readable record in a results file, in file order.

    A torn last line or a damaged line is skipped with a warning that names
    it; every other record stays usable.
    """
    lines = _lines(path)
    torn = bool(lines) and not path.read_bytes().endswith(b"\n")
    records = []
    for number, _, raw in lines:
        if raw is None:
            what = (
                "is incomplete (the run was cut off while writing it)"
                if torn and number == lines[-1][0]
                else "is not a JSON record (damaged)"
            )
            warnings.warn(f"{path}: line {number} {what}; it was skipped", stacklevel=2)
            continue
        records.append(upgrade(raw, f"{path}: line {number}"))
    return records


def latest(records: Iterable[Record]) -> list[Record]:
    """The last record of each cell, in the order the cells first appear.

    A retried cell (--resume --retry-failed) appends a newer attempt; it
    supersedes the older one everywhere a run is read.
    """
    records = list(records)

    def key(record: Record) -> tuple[str, str, str | None, str]:
        # A retry has the same id, spec content and settings (compile_mode is
        # only known once a cell ran); cells that differ stay apart under one id.
        settings = record.settings.model_dump_json(exclude={"compile_mode"})
        return (record.cell_id, record.label, record.spec.hash, settings)

    last = {key(record): record for record in records}  # later ones win
    return [last[k] for k in dict.fromkeys(key(r) for r in records)]


def results_path(run: Path) -> Path:
    """The results file of a run folder (or the file itself)."""
    path = run / RESULTS_FILE if run.is_dir() else run
    if not path.is_file():
        raise KdbenchError(
            f"{run}: no {RESULTS_FILE} here; give a run folder made by 'kdbench run' "
            "(for example results/runs/<timestamp>)"
        )
    return path
