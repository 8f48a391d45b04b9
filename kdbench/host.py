"""Facts about the machine and the code that every record carries."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from kdbench import __version__

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """The kdbench commit and whether the tree had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def host_environment() -> dict[str, Any]:
    return {
        "kdbench_version": __version__,
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "python_implementation": sys.implementation.name,
        "executable": sys.executable,
        # The CPUs the cell may run on: all of them, or a duet's share (--duet).
        "cpu_affinity": sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        # Other work on the machine skews timings (PyTorch's OpenMP threads
        # most of all): the 1, 5 and 15 minute load averages say how busy it was.
        "loadavg_start": list(os.getloadavg()),
        **{f"git_{k}": v for k, v in git_state().items()},
    }
