"""Shared fixtures: backends set up once per test session, caches kept out of $HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

# Two test workers share two cores, and every cell a test starts is one more
# process: libgomp's spinning threads (PyTorch's) then burn the cores the
# others wait for, and a quick PyTorch cell took 22-31 s instead of 10 s
# next to a busy process. Tests time nothing that spinning would speed up;
# set before anything loads an OpenMP runtime, inherited by every cell.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from kdbench.backends.base import Backend, Settings, backend_names, get_backend, is_installed

MARKS = {"pytorch": "torch", "tensorflow": "tensorflow", "jax": "jax"}
_BACKENDS: dict[str, Backend] = {}


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("KDBENCH_CACHE_DIR", str(config.rootpath / ".pytest_cache" / "kdbench"))


def tiny_spec(
    name: str = "tiny",
    epochs: int = 2,
    batch_size: int = 32,
    student_epochs: int | None = None,
    student_batch: int | None = None,
    seeds: int = 1,
    warmup: int = 2,
    augment: str | None = None,
) -> str:
    """A spec on the 8x8 digits that runs in seconds: MLP-64 teacher, MLP-16 student.
    augment: the [data] augment table's TOML, e.g. '{ crop_padding = 1 }'."""
    augment_line = f"augment = {augment}" if augment else ""
    return f"""
name = "{name}"
[data]
dataset = "digits"
{augment_line}
[teacher]
arch = "mlp-64"
epochs = {epochs}
batch_size = {batch_size}
optimizer = {{ name = "sgd", lr = 0.05 }}
[student]
arch = "mlp-16"
epochs = {student_epochs or epochs}
batch_size = {student_batch or batch_size}
optimizer = {{ name = "adam", lr = 3e-3 }}
[distill]
method = "soft"
[measure]
seeds = {seeds}
warmup_steps = {warmup}
"""


def backend_params(exclude: tuple[str, ...] = ()) -> list:
    """One param per backend, marked with its framework and skipped where absent."""
    return [
        pytest.param(
            name,
            marks=[
                getattr(pytest.mark, MARKS[name]),
                pytest.mark.skipif(not is_installed(name), reason=f"{name} is not installed"),
            ],
            id=name,
        )
        for name in backend_names()
        if name not in exclude
    ]


def backend(name: str) -> Backend:
    """A set-up backend, shared by every test in the session."""
    if name not in _BACKENDS:
        b = get_backend(name)
        b.setup(Settings(threads=2))
        _BACKENDS[name] = b
    return _BACKENDS[name]


def run_kdbench(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, **kwargs: Any
) -> subprocess.CompletedProcess:
    """`kdbench ARGS` in a process of its own (env: variables to add)."""
    return subprocess.run(
        [sys.executable, "-m", "kdbench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
        **kwargs,
    )
