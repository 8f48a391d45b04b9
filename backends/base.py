"""The contract between the harness and a framework (the registry: registry.py).

The harness owns the data, the initial weights, the batch plan, the loop and
the clock. A backend owns tensors and math only: it builds the neutral
architecture, loads numpy weights, runs one train or eval step on indices the
harness chose, synchronises its device and reads its own memory counters.
Everything a caller may rely on is declared here: the settings a backend
applies (kdbench.settings), the environment it reports, the device it runs
on, and the bare loop the overhead benchmark times beside the harness.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from kdbench.architectures import Architecture
from kdbench.settings import Settings

__all__ = [
    "Augment",
    "Backend",
    "BareLoop",
    "Environment",
    "LossConfig",
    "Settings",
    "Weights",
    "backend_names",
    "check_backend",
    "get_backend",
    "installed_backends",
    "is_installed",
]

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class LossConfig:
    """The training loss: a weighted sum of named terms (kdbench.methods).

    Without explicit weights, soft and hard put alpha on the distillation term
    and (1 - alpha) on the label cross-entropy; the other methods use their
    defaults. pairs are (teacher layer, student layer) whose outputs a feature
    term (hint, at) compares; FitNet's connector k ("hint<k>.kernel/.bias")
    maps student pair k's channels to the teacher's.
    """

    method: str = "none"
    temperature: float = 4.0
    alpha: float = 0.9
    weights: tuple[tuple[str, float], ...] = ()
    pairs: tuple[tuple[int, int], ...] = ()
    at_p: float = 2.0
    # ensemble: the members' weights, summing to 1, in the order of the teachers
    # init_train is given ((): one teacher).
    ensemble_weights: tuple[float, ...] = ()

    def terms(self) -> dict[str, float]:
        """Each term with its weight; terms weighted zero are left out."""
        return dict(self._terms)

    @cached_property
    def _terms(self) -> dict[str, float]:  # read every step: worked out once
        from kdbench.methods import METHODS, alpha_weights

        if self.weights:
            chosen = dict(self.weights)
        elif METHODS[self.method].uses_alpha:
            chosen = alpha_weights(self.method, self.alpha)
        else:
            chosen = dict(METHODS[self.method].defaults)
        return {term: w for term, w in chosen.items() if w != 0.0}

    @property
    def teacher_taps(self) -> tuple[int, ...]:
        return tuple(t for t, _ in self.pairs)

    @property
    def student_taps(self) -> tuple[int, ...]:
        return tuple(s for _, s in self.pairs)


@dataclass(frozen=True)
class Augment:
    """Random crop with zero padding and random horizontal flip, applied on the
    device inside the train step (RepDistiller's RandomCrop(32, padding=4) and
    RandomHorizontalFlip).

    The harness draws the per-sample parameters (kdbench.plan.draw_crops) and
    gives each step an int32 array crops of shape (batch, 3): row b is (dy, dx,
    flip). The step gathers x[indices], pads pad pixels on each side of H and W
    with fill (per channel: a black pixel after normalisation, -mean / std, as
    the reference pads before it normalises), takes the H x W window at (dy,
    dx) of each padded image, and mirrors the W axis of the rows whose flip is
    1. The teacher sees the same augmented batch as the student. Every
    framework produces the very same pixels (copies only, no arithmetic).
    """

    pad: int
    flip: bool
    fill: tuple[float, ...]


# The record keeps these three at its top level; the rest is its environment block.
TOP_LEVEL_FACTS = ("framework", "framework_version", "device")


@dataclass(frozen=True)
class Environment:
    """What a framework reports about itself, as applied (not as asked for)."""

    framework: str
    framework_version: str
    device: str  # the device's name; "cpu" on a CPU
    device_kind: Literal["cpu", "gpu"]
    compile_mode: str  # the framework's own name for the mode in force
    intra_op_threads: int | None
    inter_op_threads: int | None
    tf32_matmul: bool
    tf32_conv: bool
    deterministic: bool
    memory_counter: str | None  # the allocator counter behind device peaks; None: none
    cuda_version: str | None = None
    cudnn_version: int | str | None = None
    # What the layers compute in: bfloat16 under precision = "bf16" (the weights
    # the optimizer updates, the softmax and the loss stay float32).
    compute_dtype: str = "float32"
    extra: Mapping[str, Any] = field(default_factory=dict)  # framework-specific facts

    @property
    def on_gpu(self) -> bool:
        return self.device_kind == "gpu"

    def as_dict(self) -> dict[str, Any]:
        """Every fact, the framework-specific ones flattened in."""
        facts = asdict(self)
        extra = facts.pop("extra")
        return {**facts, **extra}

    def record_block(self) -> dict[str, Any]:
        """The record's environment block: every fact but the top-level three."""
        return {k: v for k, v in self.as_dict().items() if k not in TOP_LEVEL_FACTS}


class BareLoop(Protocol):
    """The harness's distillation phase written directly in one framework.

    The overhead benchmark (kdbench.tools.overhead) times it beside the
    harness's train_phase: the same models, loss, optimizer, indices and
    learning rates, without the clock, the per-step sync and the adapter.
    Each backend's bare.py module implements it; ``Backend.bare_loop``
    returns that module.
    """

    def bare_setup(
        self,
        x: np.ndarray,
        y: np.ndarray,
        teacher_arch: Architecture,
        teacher_weights: Weights,
        student_arch: Architecture,
        student_weights: Weights,
        optimizer: dict[str, Any],
        loss: LossConfig,
        *,
        device: Any,
        teacher_seed: int = 0,
        student_seed: int = 0,
    ) -> Any:
        """The split on the device once, both models, the optimizer: the loop's state."""

    def bare_distill_loop(self, run: Any, indices: np.ndarray, lrs: np.ndarray) -> np.ndarray:
        """Train on every index row in order with its lr; the per-step losses (float64)."""


class Backend(ABC):
    """One framework. Handles (models, datasets, states) are opaque to the harness."""

    name: ClassVar[str]
    # True where sync() can wait for one step's outputs without waiting for the
    # step dispatched after it (JAX: block_until_ready on those arrays). The
    # harness then keeps one step in flight, as the framework's experts' loops
    # do; a backend whose sync waits for the whole device (a CUDA stream) or
    # whose steps finish before they return (PyTorch and TensorFlow on a CPU)
    # is timed step by step, which costs it nothing on a CPU.
    waits_per_handle: ClassVar[bool] = False

    def __init__(self) -> None:
        self.settings = Settings().resolved()

    def setup(self, settings: Settings) -> None:
        """Resolve the settings (0 threads: all cores) and apply them."""
        self.settings = settings.resolved()
        self.apply_settings(self.settings)

    @abstractmethod
    def apply_settings(self, settings: Settings) -> None:
        """Import the framework and apply precision, threads, determinism, device."""

    @property
    @abstractmethod
    def device(self) -> Any:
        """The framework's handle of the device cells run on (a torch.device,
        a TensorFlow device string, a jax.Device)."""

    @abstractmethod
    def environment(self) -> Environment:
        """Framework version, device, and every flag in force (as applied)."""

    @abstractmethod
    def bare_loop(self) -> BareLoop:
        """This framework's bare distillation loop (its bare.py module)."""

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
        connectors: Weights | None = None,
        kd_scale: float = 1.0,
    ) -> tuple[float, Weights]:
        """The training loss of one batch and its gradient per parameter.

        For parity tests; the model is in training mode (use dropout-free
        architectures to compare frameworks). The gradients of the
        connectors (FitNet's regressors) come back under their own names.
        """

    @abstractmethod
    def init_train(
        self,
        model: Any,
        optimizer: dict[str, Any],
        loss: LossConfig,
        teacher: Any | None = None,
        connectors: Weights | None = None,
        augment: Augment | None = None,
    ) -> Any:
        """A training state: the model, its optimizer and the compiled step.

        augment: every train_step of this state augments its batch (see
        Augment) with the crops it is given.

        connectors (the neutral weights of loss.method's student-side
        connectors) train with the student, in its optimizer. teacher is a
        model; for method 'ensemble' a list of models (their logits combined
        as kdbench.methods says, with loss.ensemble_weights); for method
        'offline' what teacher_table returned, gathered by the step's indices.

        optimizer is OptimizerSpec.resolved(): every hyper-parameter named,
        with PyTorch's conventions (momentum buffer v = mu * v + g; Adam's
        epsilon added to sqrt of the bias-corrected second moment; weight decay
        as L2 added to the gradient). The teacher is frozen and in inference
        mode.
        """

    @abstractmethod
    def train_step(
        self,
        state: Any,
        data: Any,
        indices: np.ndarray,
        lr: float,
        kd_scale: float = 1.0,
        crops: np.ndarray | None = None,
    ) -> tuple[Any, Any]:
        """One step on the batch data[indices]; returns (state, loss handle).

        kd_scale multiplies every distillation term (all but ce): the
        harness's warm-up factor for this step. crops: the augmentation of
        this batch, int32 (batch, 3), given exactly when init_train had an
        Augment."""

    @abstractmethod
    def augmented_batch(
        self, data: Any, indices: np.ndarray, augment: Augment, crops: np.ndarray
    ) -> np.ndarray:
        """The batch a train step with this augmentation sees, as numpy (the
        same on-device code the step runs): for the parity tests."""

    @abstractmethod
    def trained_connectors(self, state: Any) -> Weights:
        """The connectors' weights in a training state, neutral layouts ({} if none)."""

    @abstractmethod
    def teacher_table(self, model: Any, data: Any, batch_size: int) -> Any:
        """The model's inference logits of every sample of data (a put_dataset
        split), computed in batches of batch_size and kept on the device: the
        teacher of method 'offline', which then costs a gather per step."""

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
    def sync(self, *handles: Any) -> None:
        """Block until the device has finished the work behind these handles
        (states, losses, logits, datasets this backend returned), and all work
        queued before it where the framework can wait for that."""

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


# The registry lives in its own module; these names stay importable from here.
from kdbench.backends.registry import (  # noqa: E402
    backend_names,
    check_backend,
    get_backend,
    installed_backends,
    is_installed,
)
