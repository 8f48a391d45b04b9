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


# The vector and matrix extensions that decide which kernels a framework runs
# (x86 "flags", Arm "Features"): one VM build with avx512_bf16 made bfloat16
# faster than float32 in PyTorch, the build before it ten times slower, and
# both called themselves the same CPU model.
KERNEL_ISA = frozenset(
    [
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "avx_vnni",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
        "amx_fp16",
        "asimd",
        "asimdhp",
        "sve",
        "sve2",
        "bf16",
        "i8mm",
        "sme",
    ]
)


def cpu_isa(cpuinfo: str | None = None) -> list[str] | None:
    """The KERNEL_ISA extensions this CPU reports (None where /proc/cpuinfo is missing)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return sorted(KERNEL_ISA.intersection(value.split()))
    return None


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
        "cpu_isa": cpu_isa(),
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
