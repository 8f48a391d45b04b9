"""Labelled environments of an A/B run: ``--env LABEL=PYTHON``, checked before any cell.

An environment is a Python interpreter (of another virtual environment: two
framework versions, two checkouts of kdbench) in which cells run instead of
the runner's own, with the runner's environment variables (so a PYTHONPATH
set for the runner applies there too). Each is asked, once, which backends it
can run, so a wrong path or a missing framework is one line before the first
cell, not a failed record per cell.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from kdbench.errors import KdbenchError

LABEL = re.compile(r"[A-Za-z0-9_.+-]{1,40}")
# What an environment is asked: its backends, and whether its kdbench knows
# the job fields of an A/B run (an older one would fail every cell).
PROBE = (
    "import json; from kdbench.backends.base import installed_backends; "
    "from kdbench.runner.job import CellJob; import kdbench.runner.worker; "
    "print(json.dumps({'backends': installed_backends(), "
    "'ab': {'env', 'python', 'round'} <= set(CellJob.__dataclass_fields__)}))"
)
PROBE_TIMEOUT_S = 120
MAX_ROUNDS = 100


def parse_envs(values: list[str] | None) -> dict[str, str]:
    """LABEL=PYTHON items -> {label: absolute interpreter path}, in the order given.

    The path is made absolute but its links are kept: a virtual environment's
    python is a link, and it is that path that makes the environment.
    """
    envs: dict[str, str] = {}
    for item in values or []:
        label, sep, python = item.partition("=")
        if not sep or not LABEL.fullmatch(label) or not python:
            raise KdbenchError(
                f"--env {item!r}: expected LABEL=PYTHON, a label of letters, digits and "
                "'_.+-' (at most 40) and the path of a Python interpreter, "
                "e.g. --env base=../base/.venv/bin/python"
            )
        if label in envs:
            raise KdbenchError(f"--env {label}: given twice; give each environment its own label")
        path = Path(python).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise KdbenchError(f"--env {label}={python}: no executable file there")
        envs[label] = os.path.abspath(path)
    return envs


def check_rounds(rounds: int | None) -> None:
    if rounds is not None and not 1 <= rounds <= MAX_ROUNDS:
        raise KdbenchError(f"--rounds must be at least 1 and at most {MAX_ROUNDS} (got {rounds})")


def check_envs(envs: dict[str, str], backends: list[str]) -> None:
    """Each environment imports kdbench and has every backend the run needs."""
    for label, python in envs.items():
        try:
            done = subprocess.run(
                [python, "-c", PROBE],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KdbenchError(f"--env {label}={python}: cannot run it ({exc})") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise KdbenchError(
                f"--env {label}={python}: cannot import kdbench's runner there ({last}); "
                "install kdbench in that environment (pip install -e <checkout>)"
            )
        try:
            answer = json.loads(done.stdout.strip().splitlines()[-1])
            there, ab = list(answer["backends"]), bool(answer["ab"])
        except (ValueError, IndexError, KeyError, TypeError):
            raise KdbenchError(
                f"--env {label}={python}: kdbench there did not answer ({done.stdout[-200:]!r})"
            ) from None
        if not ab:
            raise KdbenchError(
                f"--env {label}={python}: its kdbench predates A/B runs and would fail every "
                "cell; install this kdbench (or a newer one) in that environment"
            )
        missing = [b for b in backends if b not in there]
        if missing:
            raise KdbenchError(
                f"--env {label}={python}: backend {', '.join(missing)} is not installed there "
                f"(it has: {', '.join(there) or 'none'}); install it in that environment or "
                "choose --backend"
            )
