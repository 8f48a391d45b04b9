"""Interpreters for A/B runs in tests: this Python, as is or made slower.

Each is a small shell script that sets its environment and execs the test's
own interpreter, so an A/B run needs no second virtual environment. A slowed
one puts tests/slow_env first on PYTHONPATH (its sitecustomize stretches every
training step by the factor).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SLOW_ENV = TESTS / "slow_env"


def script(path: Path, *lines: str) -> str:
    """An executable shell script of these lines, in a folder made if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["#!/bin/sh", *lines]) + "\n")
    path.chmod(0o755)
    return str(path)


def interpreter(folder: Path, name: str, slowdown: float = 1.0) -> str:
    """An executable that runs this Python; slowdown > 1 makes its steps that much slower."""
    lines = []
    if slowdown != 1.0:
        lines += [
            f"export KDBENCH_SLOWDOWN={slowdown!r}",
            f'export PYTHONPATH={shlex.quote(str(SLOW_ENV))}"${{PYTHONPATH:+:$PYTHONPATH}}"',
        ]
    return script(folder / name, *lines, f'exec {shlex.quote(sys.executable)} "$@"')


def env_flags(*envs: tuple[str, str]) -> list[str]:
    """--env LABEL=PYTHON for each (label, interpreter)."""
    return [flag for label, python in envs for flag in ("--env", f"{label}={python}")]
