"""The same matrix on every executor: same numbers? how long? what does the driver cost?

Runs one matrix (1 thread per cell, the same seeds) on the local executor, on
a local Ray cluster with N worker CPUs, and through submitit's local executor
(the Slurm job path on this machine) with at most N jobs at once; then a Ray
cluster of 1 CPU, whose cells run one at a time as the local executor's do.
Prints, per executor: records ok, whether every metric (accuracies,
agreement) and every phase's losses equal the local executor's, wall time, and the driver's overhead per cell, (wall - the cells'
own durations) / cells, for the two that run one cell at a time.

    python benchmarks/executor_check.py --matrix quick --workers 2 --out /tmp/exec

Needs Ray and submitit (pip install 'kdbench[ray,slurm]').
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kdbench.runner.matrix import find_matrix

LOSSES = ("loss_step0", "loss_epochs")


def computed(record: dict) -> dict:
    """What a cell computed: every metric, and each phase's losses (not its times)."""
    phases = record.get("phases") or {}
    return {
        "status": record["status"],
        "metrics": record.get("metrics"),
        "losses": {name: [phase.get(k) for k in LOSSES] for name, phase in phases.items()},
    }


def executors(workers: int) -> dict[str, str]:
    """Name -> the [executor] table of the matrix file it runs."""
    return {
        "local": "kind = 'local'",
        f"ray ({workers} CPUs)": f"kind = 'ray'\nworkers = {workers}\ncpus_per_cell = 1",
        f"submitit local ({workers} at once)": (
            f"kind = 'slurm'\ncluster = 'local'\ncpus_per_cell = 1\nmax_parallel = {workers}\n"
            "poll_s = 0.5"
        ),
        "ray (1 CPU)": "kind = 'ray'\nworkers = 1\ncpus_per_cell = 1",
    }


def matrix_with(source: Path, table: str, folder: Path) -> Path:
    """The matrix file with its [executor] table replaced; its specs by absolute path."""
    text = source.read_text().split("[executor]")[0]
    lines = []
    for line in text.splitlines():
        if line.startswith("specs"):
            names = json.loads(line.split("=", 1)[1].replace("'", '"'))
            resolved = [
                str((source.parent / n).resolve()) if n.endswith(".toml") else n for n in names
            ]
            line = f"specs = {json.dumps(resolved)}"
        lines.append(line)
    path = folder / source.name
    path.write_text("\n".join(lines) + f"\n[executor]\n{table}\n")
    return path


def run_on(name: str, table: str, args: argparse.Namespace) -> dict:
    folder = (
        Path(args.out) / name.split()[0] / name.replace(" ", "_").replace("(", "").replace(")", "")
    )
    folder.mkdir(parents=True, exist_ok=True)
    matrix = matrix_with(find_matrix(args.matrix), table, folder)
    command = [sys.executable, "-m", "kdbench", "run", "--matrix", str(matrix)]
    command += ["--threads", "1", "--out", str(folder / "run")]
    command += ["--backend", args.backend] if args.backend else []
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name}: kdbench run failed:\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (folder / "run" / "results.jsonl").open()]
    return {"wall_s": wall, "records": {r["cell_id"]: r for r in records}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", default="quick")
    parser.add_argument("--backend", help="comma-separated (default: the matrix's)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    results = {name: run_on(name, table, args) for name, table in executors(args.workers).items()}
    local = results["local"]["records"]
    table = Table(title=f"matrix {args.matrix}: {len(local)} cells, 1 thread each")
    for column in ("executor", "records ok", "metrics, losses = local's", "wall s",
                   "driver overhead s/cell"):  # fmt: skip
        table.add_column(column)
    figures = {}
    for name, result in results.items():
        records = result["records"]
        ok = sum(r["status"] == "ok" for r in records.values())
        same = set(records) == set(local) and all(
            computed(records[c]) == computed(local[c]) for c in local
        )
        cells = sum(r["duration_s"] for r in records.values())
        one_at_a_time = name in ("local", "ray (1 CPU)")
        overhead = (result["wall_s"] - cells) / len(records) if one_at_a_time else None
        figures[name] = {"ok": ok, "cells": len(records), "same_as_local": same,
                         "wall_s": result["wall_s"], "cells_s": cells,
                         "overhead_s_per_cell": overhead}  # fmt: skip
        table.add_row(name, f"{ok}/{len(records)}", "yes" if same else "NO",
                      f"{result['wall_s']:.1f}", "" if overhead is None else f"{overhead:.2f}")  # fmt: skip
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
