"""`kdbench report`: finished runs in, publishable tables, figures and a page out.

The report reads only records (results.jsonl and run.json of each run
folder) and writes only into its own folder, which it marks with a manifest
(report.json): a report is rewritten in place for the same runs, and a
folder holding anything else is left alone unless --force says otherwise.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kdbench import __version__
from kdbench.errors import KdbenchError
from kdbench.records import RESULTS_FILE, results_path

FORMATS = ("md", "csv", "html", "tex")
MANIFEST = "report.json"
REPORT_DIR = "report"

__all__ = ["FORMATS", "parse_formats", "write_report"]


def parse_formats(value: str) -> list[str]:
    """'md,html' -> ['md', 'html']; anything unknown is a one-line error."""
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise KdbenchError(
            f"unknown report format {', '.join(map(repr, unknown)) or repr(value)}; "
            f"choose from {', '.join(FORMATS)} (comma-separated)"
        )
    return list(dict.fromkeys(names))


def _check_out_dir(out: Path, runs: list[str], force: bool) -> list[str]:
    """Whether the report may be written there; returns the files a previous
    report of the folder wrote (so stale ones can go)."""
    if out.exists() and not out.is_dir():
        raise KdbenchError(f"--out {out} is a file, not a folder")
    if (out / RESULTS_FILE).exists():
        raise KdbenchError(
            f"{out} is a run folder ({RESULTS_FILE}); a report never writes into a run's own "
            f"folder: give --out {out / REPORT_DIR} or another folder"
        )
    if not out.is_dir() or not any(out.iterdir()):
        return []
    manifest = out / MANIFEST
    previous: dict[str, Any] = {}
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text())
        except ValueError:
            previous = {}
    if not previous:
        if force:
            return []
        raise KdbenchError(
            f"{out} holds files that are not a kdbench report; choose another --out "
            "(or --force to write beside them)"
        )
    if sorted(previous.get("runs", [])) != sorted(runs) and not force:
        raise KdbenchError(
            f"{out} holds the report of other runs ({', '.join(previous.get('runs', []))}); "
            "choose another --out (or --force to replace it)"
        )
    return [str(f) for f in previous.get("files", [])]


def write_report(
    runs: list[str],
    out: Path | None = None,
    formats: list[str] | None = None,
    plots: bool = True,
    force: bool = False,
) -> list[Path]:
    """Build the report of the runs and write it; returns the files written."""
    from kdbench.report.aggregate import build
    from kdbench.report.htmlpage import html
    from kdbench.report.plots import draw_all
    from kdbench.report.render import csv_tables, latex, markdown

    formats = formats or list(FORMATS)
    report = build(runs)  # checks the run folders before anything is written
    folders = [results_path(r).parent for r in report.runs]
    out = out or folders[0] / REPORT_DIR
    run_ids = [str(f.resolve()) for f in folders]
    stale = _check_out_dir(out, run_ids, force)
    out.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    figures = draw_all(report.sections, out / "plots") if plots else []
    written += [p.path for p in figures]
    if "md" in formats:
        written.append(_write(out / "report.md", markdown(report, figures, out)))
    if "csv" in formats:
        for name, table in csv_tables(report).items():
            path = out / "csv" / f"{name}.csv"
            path.parent.mkdir(exist_ok=True)
            table.to_csv(path, index=False)
            written.append(path)
    if "html" in formats:
        written.append(_write(out / "report.html", html(report, figures)))
    if "tex" in formats:
        written.append(_write(out / "report.tex", latex(report, figures, out)))

    names = {str(p.relative_to(out)) for p in written}
    for old in stale:  # files of the previous report of these runs that are gone now
        if old not in names and is_report_file(out, old):
            (out / old).unlink()
    manifest = {
        "kdbench_report": 1,
        "kdbench_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": run_ids,
        "formats": formats,
        "files": sorted(names),
    }
    written.append(_write(out / MANIFEST, json.dumps(manifest, indent=2) + "\n"))
    return written


# What a report writes, relative to its folder: nothing else is ever removed.
REPORT_FILES = re.compile(
    r"(report\.(md|html|tex)|csv/[A-Za-z0-9_.-]+\.csv|plots/[A-Za-z0-9_.-]+\.png)"
)


def is_report_file(out: Path, name: str) -> bool:
    """Whether name (from a manifest, which anyone could have edited) is a file
    this report may remove: one of the names it writes, inside out, no link."""
    if not isinstance(name, str) or not REPORT_FILES.fullmatch(name):
        return False
    path = out / name
    try:
        inside = path.resolve().is_relative_to(out.resolve())
    except OSError:
        return False
    return inside and path.is_file() and not path.is_symlink()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
