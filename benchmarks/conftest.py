"""pytest-benchmark setup for the step benchmarks in this folder.

Run them with `pytest benchmarks/` (they are not part of the test suite).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from kdbench.backends.base import installed_backends
from kdbench.host import host_environment

FRAMEWORK_DISTRIBUTIONS = (
    "torch",
    "tensorflow",
    "tensorflow-cpu",
    "jax",
    "jaxlib",
    "flax",
    "optax",
)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def pytest_benchmark_update_machine_info(config: Any, machine_info: dict[str, Any]) -> None:
    """Saved benchmarks carry the framework versions, the GPU and the kdbench commit,
    so a comparison across machines or versions is visible as such."""
    machine_info["kdbench"] = host_environment()
    machine_info["frameworks"] = {n: v for n in FRAMEWORK_DISTRIBUTIONS if (v := _version(n))}
    machine_info["backends_installed"] = installed_backends()
    machine_info["gpu"] = _gpu()


def _gpu() -> str | None:
    """The GPU's name from nvidia-smi, without importing a framework."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
