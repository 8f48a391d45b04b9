"""``kdbench show RUN_DIR...``: the side-by-side table of finished runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kdbench.commands.common import console
from kdbench.errors import KdbenchError
from kdbench.records.frame import load_runs
from kdbench.tables import rich_table, summary


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("show", help="the table of finished runs")
    p.add_argument("runs", nargs="+", help="run folders")
    return p


def print_table(runs: list[str], title: str) -> None:
    frame = load_runs(runs)
    if frame.empty:
        console.print("no records")
        return
    console.print(rich_table(summary(frame), title))


def run(args: argparse.Namespace) -> int:
    for folder in args.runs:
        if not Path(folder).exists():
            raise KdbenchError(f"run folder {folder} does not exist")
    print_table(args.runs, " + ".join(args.runs))
    return 0
