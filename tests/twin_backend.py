"""PyTorch under a second name, so that one run holds two same-code sides.

Registered through $KDBENCH_BACKENDS ("pytorch_twin=twin_backend:PyTorchTwin",
with this folder on PYTHONPATH). The runner's innermost loop is the backend, so
the cells of PyTorch and its twin alternate in time; its own name keeps the
twin's teachers apart from PyTorch's in the run's teacher cache (the key holds
the backend's name), so both sides train and time their teachers.
"""

from __future__ import annotations

from kdbench.backends.pytorch.backend import PyTorchBackend


class PyTorchTwin(PyTorchBackend):
    name = "pytorch_twin"
