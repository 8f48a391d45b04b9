"""``kdbench compare BASELINE CANDIDATE`` (or ``RUN --envs A B``): exit 1 when the candidate regressed.

The rules are in kdbench.compare; this module reads the two runs, renders
the verdicts and sets the exit status (1: a regression, a lost cell included;
2: bad input, or nothing compared and nothing lost).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console

from kdbench.compare.model import STATISTICS, Thresholds
from kdbench.compare.render import render, to_json
from kdbench.compare.verdicts import compare_records, load_side, provenance
from kdbench.errors import KdbenchError
from kdbench.records.schema import Record


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "compare",
        help="regression check: compare a candidate run with a baseline run",
        description="Compare two runs cell by cell; exit 1 if the candidate regressed.",
    )
    p.add_argument("baseline", help="baseline run folder or results.jsonl")
    p.add_argument(
        "candidate",
        nargs="?",
        help="candidate run folder or results.jsonl (none with --envs: one A/B run)",
    )
    p.add_argument(
        "--envs",
        nargs=2,
        metavar=("BASE", "CAND"),
        help="compare two labelled environments of one A/B run (kdbench run --env), "
        "pairing their cells seed by seed and round by round",
    )
    d = Thresholds()
    p.add_argument(
        "--time-threshold",
        "--threshold",
        type=float,
        default=d.time,
        help=f"relative step-time change that counts (default {d.time:g}: 5%% slower)",
    )
    p.add_argument(
        "--memory-threshold",
        type=float,
        default=d.memory,
        help=f"relative peak-memory growth that counts (default {d.memory:g})",
    )
    p.add_argument(
        "--accuracy-threshold",
        type=float,
        default=d.accuracy,
        help=f"mean accuracy drop in points that counts (default {d.accuracy:g})",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=d.alpha,
        help=f"significance level of the step-time tests (default {d.alpha:g})",
    )
    p.add_argument(
        "--statistic",
        choices=STATISTICS,
        default=d.statistic,
        help="what a phase's step-time change is the ratio of: the fastest block of "
        "consecutive steps on each side (default; steadier on a shared machine, where other "
        "load only adds time) or the median step",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="compare cells whose device, settings or spec content differ (marked as forced)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the comparison as JSON ('-': stdout)")
    return p


def env_records(records: list[Record], label: str, path: str) -> list[Record]:
    """The records of one environment of an A/B run."""
    found = [r for r in records if r.env == label]
    if not found:
        there = sorted({r.env for r in records if r.env})
        raise KdbenchError(
            f"{path}: no records of environment {label!r}; "
            + (
                f"it has: {', '.join(there)}"
                if there
                else "it is not an A/B run (kdbench run --env)"
            )
        )
    return found


def one_env(records: list[Record], path: str) -> None:
    """Two runs compare cell by cell; an A/B run holds each cell once per environment."""
    envs = sorted({r.env for r in records if r.env})
    if len(envs) > 1:
        raise KdbenchError(
            f"{path} is an A/B run of environments {', '.join(envs)}: compare them with "
            f"kdbench compare {path} --envs {envs[0]} {envs[1]}"
        )


def run(args: argparse.Namespace) -> int:
    th = Thresholds(
        args.time_threshold,
        args.memory_threshold,
        args.accuracy_threshold,
        args.alpha,
        args.statistic,
    )
    for name in ("time", "memory", "accuracy"):
        if not getattr(th, name) >= 0:
            raise KdbenchError(f"--{name}-threshold must be 0 or more (got {getattr(th, name)})")
    if not 0 < th.alpha < 1:
        raise KdbenchError(f"--alpha must be between 0 and 1 (got {th.alpha})")
    if args.envs:
        if args.candidate:
            raise KdbenchError("--envs compares two environments of one run: give one run")
        records, base_warnings = load_side(args.baseline)
        base, cand = (env_records(records, label, args.baseline) for label in args.envs)
        cand_warnings: list[str] = []
        names = tuple(f"{args.baseline} env {label}" for label in args.envs)
    else:
        if not args.candidate:
            raise KdbenchError("give a baseline and a candidate run, or one A/B run with --envs")
        base, base_warnings = load_side(args.baseline)
        cand, cand_warnings = load_side(args.candidate)
        for path, records in ((args.baseline, base), (args.candidate, cand)):
            one_env(records, path)
        names = (args.baseline, args.candidate)
    cmp = compare_records(base, cand, th, args.force, names)
    cmp.warnings = base_warnings + cand_warnings
    cmp.provenance = (provenance(base), provenance(cand))

    # With --json - the JSON owns stdout, so the table goes to stderr.
    to_stderr = args.json == "-"
    stream = sys.stderr if to_stderr else sys.stdout
    console = Console(file=stream, soft_wrap=False, width=None if stream.isatty() else 200)
    render(cmp, console)
    if args.json:
        text = json.dumps(to_json(cmp), indent=2, allow_nan=False)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            try:
                Path(args.json).write_text(text + "\n", encoding="utf-8")
            except OSError as exc:
                raise KdbenchError(f"--json {args.json}: cannot write it ({exc})") from None
    if not cmp.compared and not cmp.regressed:
        reasons: dict[str, int] = defaultdict(int)
        for cell in cmp.cells:
            reasons["refused" if cell.refused else cell.reason.split(":")[0]] += 1
        listed = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        hint = "; --force compares the refused ones" if reasons.get("refused") else ""
        raise KdbenchError(f"no cell could be compared ({listed}); see the table above{hint}")
    return cmp.exit_code
