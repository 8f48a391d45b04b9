"""A framework-free backend whose cells take about a second, for the run-store tests.

Registered through $KDBENCH_BACKENDS ("stub=stub_backend:StubBackend", with
this folder on PYTHONPATH), so real cell processes run it. Its model is a
fixed random linear map of the input, its training step a little numpy;
the numbers are not a benchmark, the records they make are real.

$KDBENCH_STUB_STEP_S makes every training step sleep (to stop a run mid-cell),
$KDBENCH_STUB_PREDICT_S every prediction batch (a steady eval time);
$KDBENCH_STUB_FAIL lists seeds whose cells fail ("0,2"), and
$KDBENCH_STUB_FAIL_ONCE_DIR makes each failing cell fail only while a marker
file is absent from that folder (so a retry can succeed);
$KDBENCH_STUB_DISK_FULL names a file that the first cell turns into a link to
/dev/full, where every write fails with "No space left on device".
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from oracles.augment import augment_batch

from kdbench.architectures import Architecture
from kdbench.backends.base import Augment, Backend, Environment, LossConfig, Settings, Weights


def fake_environment(**facts: Any) -> Environment:
    """An Environment for stub and fake backends; facts override the defaults."""
    defaults: dict[str, Any] = {
        "framework": "stub",
        "framework_version": "1.0",
        "device": "cpu",
        "device_kind": "cpu",
        "compile_mode": "eager",
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "tf32_matmul": False,
        "tf32_conv": False,
        "deterministic": True,
        "memory_counter": None,
    }
    return Environment(**{**defaults, **facts})


@dataclass
class StubModel:
    arch: Architecture
    projection: np.ndarray  # flat input -> logits
    steps: int = 0


@dataclass
class StubState:
    model: StubModel
    loss: LossConfig
    augment: Augment | None = None
    losses: list[float] = field(default_factory=list)


def _cell_seed() -> int:
    """The seed of the cell this process runs (from the job file the worker reads)."""
    job = Path(sys.argv[-1]) if sys.argv else None
    if job is None or not job.name.endswith(".job.json"):
        return -1
    return int(json.loads(job.read_text())["seed"])


def _fails(seed: int) -> bool:
    seeds = {int(s) for s in os.environ.get("KDBENCH_STUB_FAIL", "").split(",") if s.strip()}
    if seed not in seeds:
        return False
    folder = os.environ.get("KDBENCH_STUB_FAIL_ONCE_DIR")
    if not folder:
        return True
    marker = Path(folder) / f"failed-seed{seed}"
    if marker.exists():
        return False
    marker.write_text("failed once")
    return True


class StubBackend(Backend):
    name = "stub"

    def __init__(self) -> None:
        super().__init__()
        self.seed = 0

    def apply_settings(self, settings: Settings) -> None:
        pass

    @property
    def device(self) -> str:
        return "cpu"

    def environment(self) -> Environment:
        return fake_environment(framework_version="0", compile_mode="numpy")

    def bare_loop(self) -> Any:
        raise NotImplementedError("the stub backend has no bare loop")

    def put_dataset(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x.reshape(len(x), -1), y

    def build(self, arch: Architecture, weights: Weights, seed: int = 0) -> StubModel:
        features = int(np.prod(arch.input_shape))
        rng = np.random.default_rng(seed)
        return StubModel(arch, rng.normal(size=(features, arch.classes)).astype(np.float32))

    def get_weights(self, model: StubModel) -> Weights:
        return {"projection": model.projection}

    def forward(self, model: StubModel, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) @ model.projection

    def loss_and_grads(self, *args: Any, **kwargs: Any) -> tuple[float, Weights]:
        raise NotImplementedError

    def init_train(
        self,
        model: StubModel,
        optimizer: dict[str, Any],
        loss: LossConfig,
        teacher: StubModel | None = None,
        connectors: Weights | None = None,
        augment: Augment | None = None,
    ) -> StubState:
        return StubState(model, loss, augment)

    def trained_connectors(self, state: StubState) -> Weights:
        return {}

    def teacher_table(self, model: Any, data: Any, batch_size: int) -> Any:
        raise NotImplementedError("the stub distils from its teacher model")

    def augmented_batch(
        self, data: Any, indices: np.ndarray, augment: Augment, crops: np.ndarray
    ) -> np.ndarray:
        return augment_batch(data[0][indices], augment, crops)

    def train_step(
        self,
        state: StubState,
        data: Any,
        indices: np.ndarray,
        lr: float,
        kd_scale: float = 1.0,
        crops: np.ndarray | None = None,
    ) -> tuple[StubState, float]:
        x, y = data
        if (crops is None) != (state.augment is None):
            raise ValueError("crops are given exactly when init_train had an Augment")
        if state.model.steps == 0 and _fails(_cell_seed()):
            raise RuntimeError("the stub backend fails this seed on purpose")
        full = os.environ.get("KDBENCH_STUB_DISK_FULL")
        if full and not Path(full).is_symlink():
            Path(full).unlink(missing_ok=True)
            Path(full).symlink_to("/dev/full")
        delay = float(os.environ.get("KDBENCH_STUB_STEP_S", "0"))
        if delay:
            time.sleep(delay)
        batch = x[indices]
        if crops is not None:  # the stub keeps images flat: crop them in their own shape
            images = batch.reshape(len(batch), *state.model.arch.input_shape)
            batch = augment_batch(images, state.augment, crops).reshape(len(batch), -1)
        logits = batch @ state.model.projection
        state.model.projection -= np.float32(lr * 1e-3) * np.sign(state.model.projection)
        state.model.steps += 1
        loss = float(np.mean(np.abs(logits)) / (1 + state.model.steps))
        return state, loss

    def trained_model(self, state: StubState) -> StubModel:
        return state.model

    def predict(self, model: StubModel, data: Any, indices: np.ndarray) -> np.ndarray:
        x, _ = data
        delay = float(os.environ.get("KDBENCH_STUB_PREDICT_S", "0"))
        if delay:
            time.sleep(delay)
        return x[indices] @ model.projection

    def to_numpy(self, handle: Any) -> np.ndarray:
        return np.asarray(handle, dtype=np.float64)

    def sync(self, *handles: Any) -> None:
        pass

    def matmul_probe(self, n: int, dtype: str) -> Any:
        a = np.ones((64, 64), np.float32)
        return lambda: a @ a

    def reset_peak_memory(self) -> None:
        pass

    def peak_memory(self) -> int | None:
        return None
