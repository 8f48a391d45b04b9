"""Where the numbers came from: runs, commits, machines and framework facts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.records.schema import column
from kdbench.report.quantities import as_text, backend_order


def code_notes(frame: pd.DataFrame) -> list[str]:
    """Warnings about the code behind the numbers: a comparison is only as
    good as knowing which code produced each side."""
    notes = []
    for run_dir, cells in frame.groupby("run_dir", sort=False):
        commits = {as_text(c) for c in cells.get("host.git_commit", pd.Series([None]))} - {"-"}
        if len(commits) > 1:
            notes.append(
                f"Run {run_dir}: its cells ran from {len(commits)} different git commits "
                "(the code changed during the run)."
            )
        dirty = cells.get("host.git_dirty", pd.Series([None]))
        if dirty.map(lambda v: v is True).any():
            notes.append(
                f"Run {run_dir}: cells ran from a working tree with uncommitted changes "
                "(git dirty), so the commit does not name their code exactly."
            )
    return notes


def _unique(values: pd.Series) -> str:
    found = [as_text(v) for v in dict.fromkeys(values.tolist())]
    found = [v for v in found if v != "-"] or ["-"]
    return found[0] if len(found) == 1 else f"{', '.join(found)} (mixed)"


def runs_environment(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: where and from which code it ran."""
    rows = []
    for run_dir, cells in frame.groupby("run_dir", sort=False):
        manifest = _manifest(Path(run_dir))
        commits = cells.get("host.git_commit", pd.Series(dtype=object)).map(
            lambda c: as_text(c)[:12]
        )
        rows.append(
            {
                "run": _unique(cells.get("run_id", pd.Series([Path(run_dir).name]))),
                "folder": run_dir,
                "cells ok": f"{(cells['status'] == 'ok').sum()}/{len(cells)}",
                "started": as_text(cells["started_at"].min()) if "started_at" in cells else "-",
                "git commit": _unique(commits),
                "dirty tree": _unique(cells.get("host.git_dirty", pd.Series([None]))),
                "kdbench": _unique(cells.get("host.kdbench_version", pd.Series([None]))),
                "os": _unique(cells.get("host.os", pd.Series([None]))),
                "cpu": _unique(cells[column("host.cpu")]),
                "cpu ISA": _unique(cells.get("host.cpu_isa", pd.Series([None])).map(_isa)),
                "CPUs": _unique(cells[column("host.cpu_count")]),
                "python": _unique(cells.get("host.python", pd.Series([None]))),
                "command": " ".join(manifest.get("argv", [])) or "-",
            }
        )
    return pd.DataFrame(rows)


def _isa(value: Any) -> str | None:
    """A record's cpu_isa list as one cell of text (older records: none)."""
    return " ".join(value) if isinstance(value, list | tuple) else None


def _manifest(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def frameworks_environment(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows: framework facts (version, device, flags); columns: run and backend."""
    env_cols = sorted(c for c in frame.columns if c.startswith("environment."))
    columns: dict[str, dict[str, str]] = {}
    for run_dir, cells in frame.groupby("run_dir", sort=False):
        for backend in backend_order(cells["backend"]):
            ok = cells[(cells["backend"] == backend) & (cells["status"] == "ok")]
            if ok.empty:
                ok = cells[cells["backend"] == backend]
            facts = {
                "framework": _unique(ok["framework"]),
                "framework version": _unique(ok["framework_version"]),
                "device": _unique(ok["device"]),
                "compile mode": _unique(ok.get("settings.compile_mode", pd.Series([None]))),
            }
            for c in env_cols:
                if c == column("environment.compile_mode"):  # shown as "compile mode" above
                    continue
                value = _unique(ok[c]) or "(empty)"
                if value != "-":
                    facts[c.removeprefix("environment.")] = value
            name = (
                f"{backend} ({Path(run_dir).name})" if frame["run_dir"].nunique() > 1 else backend
            )
            columns[name] = facts
    table = pd.DataFrame(columns).fillna("-")
    table.index.name = "fact"
    return table.reset_index()
