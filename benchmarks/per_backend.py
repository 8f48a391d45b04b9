"""Run a parity script's measurement once per backend, each in a process of its
own (one framework per process), and collect what each child printed as JSON.

    results = measure_per_backend(__file__, measure, description)

A script calls it from main(): with --child NAME it is the child and prints
measure(NAME) as JSON; otherwise it starts one child per --backends entry.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

BACKENDS = ("pytorch", "tensorflow", "jax")


def measure_per_backend(
    script: str, measure: Callable[[str], dict[str, Any]], description: str
) -> dict[str, dict[str, Any]] | None:
    """Every backend's measurement, by name; None in a child (it has printed)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return None
    results = {}
    for name in args.backends:
        proc = subprocess.run(
            [sys.executable, script, "--child", name], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise SystemExit(f"{name}: {proc.stderr.strip().splitlines()[-1]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results
