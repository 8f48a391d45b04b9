"""The contract between the harness and a framework, and the registry.

The harness owns the data, the initial weights, the batch plan, the loop and
the clock. A backend owns tensors and math only: it builds the neutral
architecture, loads numpy weights, runs one train or eval step on indices the
harness chose, synchronises its device and reads its own memory counters.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from kdbench.architectures import Architecture
from kdbench.errors import KdbenchError

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class Settings:
    """The fairness settings every backend applies the same way."""

    compile: str = "default"  # default | eager | compiled
    precision: str = "float32"  # float32 | tf32
    threads: int = 1  # intra-op threads, resolved (never 0 here)
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | gpu

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LossConfig:
    """alpha weighs the distillation term, (1 - alpha) the label cross-entropy."""

    method: str = "none"
    temperature: float = 4.0
    alpha: float = 0.9


class Backend(ABC):
    """One framework. Handles (models, datasets, states) are opaque to the harness."""

    name: ClassVar[str]

    @abstractmethod
    def setup(self, settings: Settings) -> None:
        """Import the framework and apply precision, threads, determinism, device."""

    @abstractmethod
    def environment(self) -> dict[str, Any]:
        """Framework version, device, and every flag in force (as applied)."""

    @abstractmethod
    def put_dataset(self, x: np.ndarray, y: np.ndarray) -> Any:
        """Move a whole split (NHWC float32, int32 labels) to the device once."""

    @abstractmethod
    def build(self, arch: Architecture, weights: Weights, seed: int = 0) -> Any:
        """A native model of arch holding these neutral-layout weights.

        seed feeds the framework's own dropout stream.
        """

    @abstractmethod
    def get_weights(self, model: Any) -> Weights:
        """The model's weights back in the neutral layouts, as float32 numpy."""

    @abstractmethod
    def forward(self, model: Any, x: np.ndarray) -> np.ndarray:
        """Inference logits for a numpy batch (no dropout)."""

    @abstractmethod
    def loss_and_grads(
        self,
        model: Any,
        x: np.ndarray,
        y: np.ndarray,
        loss: LossConfig,
        teacher: Any | None = None,
    ) -> tuple[float, Weights]:
        """The training loss of one batch and its gradient per parameter.

        For parity tests; the model is in training mode (use dropout-free
        architectures to compare frameworks).
        """

    @abstractmethod
    def init_train(
        self,
        model: Any,
        optimizer: dict[str, Any],
        loss: LossConfig,
        teacher: Any | None = None,
    ) -> Any:
        """A training state: the model, its optimizer and the compiled step.

        optimizer is OptimizerSpec.resolved(): every hyper-parameter named,
        with PyTorch's conventions (momentum buffer v = mu * v + g; Adam's
        epsilon added to sqrt of the bias-corrected second moment; weight decay
        as L2 added to the gradient). The teacher is frozen and in inference
        mode.
        """

    @abstractmethod
    def train_step(self, state: Any, data: Any, indices: np.ndarray, lr: float) -> tuple[Any, Any]:
        """One step on the batch data[indices]; returns (state, loss handle)."""

    @abstractmethod
    def trained_model(self, state: Any) -> Any:
        """The model inside a training state, ready for predict/get_weights."""

    @abstractmethod
    def predict(self, model: Any, data: Any, indices: np.ndarray) -> Any:
        """Inference logits handle for data[indices] (one compiled eval step)."""

    @abstractmethod
    def to_numpy(self, handle: Any) -> np.ndarray:
        """A device value (loss, logits) as numpy; synchronises."""

    @abstractmethod
    def sync(self, handle: Any = None) -> None:
        """Block until the device has finished all work queued so far."""

    @abstractmethod
    def matmul_probe(self, n: int, dtype: str) -> Callable[[], Any]:
        """A function that multiplies two n x n matrices (dtype 'float32' or
        'bfloat16') already on the device and returns the result's handle.

        The harness times it, synchronised, to measure the matrix-multiply
        rate this framework achieves on this device: the 'peak' that achieved
        FLOP/s are a fraction of.
        """

    @abstractmethod
    def reset_peak_memory(self) -> None:
        """Start a fresh high-water mark of device memory in use."""

    @abstractmethod
    def peak_memory(self) -> int | None:
        """Peak device bytes in use since the last reset; None without a counter."""


# name -> (module holding the Backend subclass, class name, import names it needs)
REGISTRY: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "pytorch": ("kdbench.backends.pytorch.backend", "PyTorchBackend", ("torch",)),
    "tensorflow": ("kdbench.backends.tensorflow.backend", "TensorFlowBackend", ("tensorflow",)),
    "jax": ("kdbench.backends.jax.backend", "JaxBackend", ("jax", "flax", "optax")),
}

INSTALL_HINT = {
    "pytorch": "pip install 'kdbench[torch]'",
    "tensorflow": "pip install 'kdbench[tensorflow]'",
    "jax": "pip install 'kdbench[jax]'",
}


def backend_names() -> list[str]:
    return list(REGISTRY)


def is_installed(name: str) -> bool:
    """Whether the framework can be imported, without importing it."""
    module, _, needs = REGISTRY[name]
    if not all(importlib.util.find_spec(n) is not None for n in needs):
        return False
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the backend's package itself is missing
        return False


def installed_backends() -> list[str]:
    return [name for name in REGISTRY if is_installed(name)]


def check_backend(name: str) -> None:
    """One-line errors for an unknown or missing backend."""
    if name not in REGISTRY:
        raise KdbenchError(f"unknown backend {name!r}; allowed: {', '.join(REGISTRY)}")
    if not is_installed(name):
        raise KdbenchError(
            f"backend {name!r} is not installed here; install it with {INSTALL_HINT[name]}"
        )


def get_backend(name: str) -> Backend:
    """Import one backend's package (and so its framework) and instantiate it."""
    check_backend(name)
    module, cls, _ = REGISTRY[name]
    return getattr(importlib.import_module(module), cls)()
