"""``kdbench report RUN_DIR...``: published tables, figures and one HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kdbench.report import FORMATS, MANIFEST, REPORT_DIR, parse_formats, write_report


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report",
        help="tables, figures and an HTML page from finished runs",
        description="Turn one or more run folders into published tables (Markdown, CSV, "
        "HTML, LaTeX) and figures. Cells are grouped by hardware and fairness settings; "
        "accuracy is shown as mean and 95% confidence interval over seeds.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders made by 'kdbench run'")
    p.add_argument("--out", help=f"report folder (default: <first run>/{REPORT_DIR})")
    p.add_argument(
        "--format",
        default=",".join(FORMATS),
        help=f"comma-separated formats among {', '.join(FORMATS)} (default: all)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the figures (faster)")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into a folder that holds other files or the report of other runs",
    )
    return p


def run(args: argparse.Namespace) -> int:
    formats = parse_formats(args.format)
    out = Path(args.out) if args.out else None
    written = write_report(
        args.runs, out, formats, plots=not args.no_plots, force=bool(getattr(args, "force", False))
    )
    folder = written[-1].parent  # the manifest, written last, sits at the top
    names = [str(p.relative_to(folder)) for p in written if p.name != MANIFEST]
    pages = [n for n in names if "/" not in n]
    csvs = [n for n in names if n.startswith("csv/")]
    pngs = [n for n in names if n.startswith("plots/")]
    parts = pages + ([f"csv/ ({len(csvs)} tables)"] if csvs else [])
    parts += [f"plots/ ({len(pngs)} figures)"] if pngs else []
    print(f"kdbench: report of {len(args.runs)} run(s) -> {folder}: {', '.join(parts)}")
    return 0
