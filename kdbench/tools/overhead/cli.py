"""The command line of the overhead benchmark: every backend in a child process, one table."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import typing
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kdbench.backends.base import Settings, installed_backends
from kdbench.backends.registry import REGISTRY
from kdbench.settings import Device
from kdbench.spec import DEFAULT_SPEC
from kdbench.tools.overhead.measure import (
    DEFAULT_REPEATS,
    DEFAULT_STEPS,
    DEFAULT_THREADS,
    TARGET,
    measure,
)

CHILD_TIMEOUT_S = 600


def run_child(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """measure() in a fresh process: one framework per process, as cells run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "kdbench.tools.overhead",
            "--child",
            backend,
            "--out",
            str(out),
            "--repeats",
            str(args.repeats),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            "--device",
            args.device,
        ]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            return {"backend": backend, "error": f"timed out after {CHILD_TIMEOUT_S} s"}
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"backend": backend, "error": f"exit {proc.returncode}: {tail[0][:300]}"}
        return json.loads(out.read_text())


COLUMNS = (
    "backend",
    "mode",
    "device",
    "pairs x steps",
    "harness samples/s",
    "bare samples/s",
    "ratio",
    "overhead %",
    "IQR %",
    "best-of %",
    "CPU %",
    "µs/step",
    "losses agree",
    f"≤ {TARGET:.0%}",
)


def table(results: list[dict[str, Any]], title: str) -> Table:
    """All backends side by side, with the verdict against the target."""
    out = Table(title=title, header_style="bold")
    for header in COLUMNS:
        left = header in ("backend", "mode", "device")
        out.add_column(header, justify="left" if left else "right")
    for r in results:
        if "error" in r:
            out.add_row(r["backend"], *["-"] * (len(COLUMNS) - 2), r["error"])
            continue
        out.add_row(
            r["backend"],
            str(r["compile_mode"]),
            str(r["device"]),
            f"{r['pairs']} x {r['steps_per_block']}",
            f"{r['harness_samples_per_s']:,.0f}",
            f"{r['bare_samples_per_s']:,.0f}",
            f"{r['ratio']:.3f}",
            f"{100 * r['overhead']:.1f}",
            f"{100 * r['overhead_q1']:.1f} .. {100 * r['overhead_q3']:.1f}",
            f"{100 * r['overhead_best_of']:.1f}",
            f"{100 * r['cpu_overhead']:.1f}",
            f"{r['extra_us_per_step']:.0f}",
            "exactly" if r["loss_max_rel_diff"] == 0 else f"{r['loss_max_rel_diff']:.0e}",
            "yes" if r["meets_target"] else "MISSED",
        )
    return out


LEGEND = """\
ratio: median over pairs of harness/bare throughput (a pair: both sides over the same
epoch from the same state, back to back); overhead = 1 - ratio; IQR: quartiles of the
pairs' overheads; best-of: from the fastest block of each side; CPU: the same median from
process CPU time instead of wall time (extra work, without waits or lost overlap);
µs/step: median extra wall time per step; losses agree: largest relative difference
of the per-epoch mean losses."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kdbench.tools.overhead",
        description="Harness vs bare-loop throughput per backend on the default spec.",
    )
    p.add_argument("--backends", nargs="+", choices=list(REGISTRY), help="default: installed")
    p.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help=f"rounds, each with fresh state (default {DEFAULT_REPEATS})",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"timed steps per round and side, rounded to whole epochs (default {DEFAULT_STEPS})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"intra-op threads (default {DEFAULT_THREADS}; 0: all cores)",
    )
    p.add_argument("--device", choices=typing.get_args(Device), default="auto")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.steps < 1:
        p.error("--repeats and --steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(threads=args.threads, device=args.device)
    if args.child:
        result = measure(args.child, args.repeats, args.steps, settings)
        args.out.write_text(json.dumps(result))
        return 0
    # Wide enough for the table when the output is a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 200)
    results = []
    for name in args.backends or installed_backends():
        console.print(f"[dim]{name}: {args.repeats} repeats of {args.steps} steps a side ...[/dim]")
        results.append(run_child(name, args))
    console.print(
        table(
            results, f"Harness overhead on {DEFAULT_SPEC} (distill phase), threads={args.threads}"
        )
    )
    console.print(LEGEND, highlight=False)
    if args.json:
        payload = {
            "spec": DEFAULT_SPEC,
            "target_overhead": TARGET,
            "settings": settings.as_dict(),
            "repeats": args.repeats,
            "steps": args.steps,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 1 if any("error" in r for r in results) else 0
