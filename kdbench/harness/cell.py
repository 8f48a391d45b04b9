"""One cell: prepare, train the teacher, train both students, evaluate.

Both students start from the same weights and see the same batches; the
scratch student learns from the labels alone, the distilled one from the
frozen teacher too. Accuracies are measured on the test split after the last
epoch, and on the validation split for tuning; with measure.best_epoch also
at the epoch of best validation accuracy (never chosen on the test split).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from kdbench.backends.base import Backend, Environment, LossConfig, Settings, get_backend
from kdbench.harness.best_epoch import best_epoch_metrics, trackers
from kdbench.harness.phases import Cell, Emit, eval_phase, no_emit, predict_all, train_phase
from kdbench.harness.prepare import PreparedCell, prepare_cell
from kdbench.harness.probe import matmul_probe
from kdbench.harness.sources import Target, distillation_target
from kdbench.harness.teachers import train_teacher
from kdbench.harness.timing import host_peak_rss
from kdbench.records.schema import DataInfo, Memory, Metrics, Phase, Probe, Timings
from kdbench.spec import LoadedSpec

MODELS = ("teacher", "scratch", "distilled")


@dataclass
class CellResult:
    """The measured part of a cell's record."""

    environment: Environment
    metrics: Metrics
    phases: dict[str, Phase]
    timings: Timings
    probe: Probe
    data: DataInfo
    memory: Memory


@dataclass
class Splits:
    """The splits on the device; no validation split when the spec asks for none."""

    train: Any
    test: Any
    val: Any | None


def put_splits(cell: Cell) -> Splits:
    data, backend = cell.prepared.data, cell.backend
    splits = Splits(
        train=backend.put_dataset(data.x_train, data.y_train),
        test=backend.put_dataset(data.x_test, data.y_test),
        val=backend.put_dataset(data.x_val, data.y_val) if len(data.y_val) else None,
    )
    backend.sync(*(s for s in (splits.train, splits.test, splits.val) if s is not None))
    return splits


def train_students(
    cell: Cell, train: Any, target: Target, tracked: dict[str, Any] | None = None
) -> tuple[Any, Any, dict[str, Phase]]:
    """The scratch student (labels only) and the distilled one, from the same start.

    tracked: per phase, what runs after every epoch (best_epoch.trackers)."""
    p, backend = cell.prepared, cell.backend
    tracked = tracked or {}
    arch, net = p.loaded.student_arch, p.spec.student
    scratch = backend.build(arch, p.student_weights, seed=p.scratch_seed)
    state = backend.init_train(
        scratch, p.student_optimizer, LossConfig("none"), augment=p.student_augment
    )
    state, scratch_phase = train_phase(
        cell, "scratch", net, state, train, p.student_plan, epoch_end=tracked.get("scratch")
    )
    scratch = backend.trained_model(state)

    student = backend.build(arch, p.student_weights, seed=p.student_seed)
    state = backend.init_train(
        student,
        p.student_optimizer,
        p.loss,
        teacher=target.teacher,
        connectors=p.connectors,
        augment=p.student_augment,
    )
    state, distill_phase = train_phase(
        cell,
        "distill",
        net,
        state,
        train,
        p.student_plan,
        p.spec.distill.warmup_epochs,
        target.distill_flops_per_step,
        tracked.get("distill"),
    )
    phases = {"scratch": scratch_phase, "distill": distill_phase}
    for name, tracker in tracked.items():
        phases[name] = phases[name].model_copy(
            update={"val_acc_epochs": tracker.val_acc, "test_acc_epochs": tracker.test_acc}
        )
    return scratch, backend.trained_model(state), phases


def accuracy_metrics(
    test_preds: dict[str, np.ndarray],
    y_test: np.ndarray,
    val_preds: dict[str, np.ndarray] | None,
    y_val: np.ndarray,
) -> Metrics:
    """Accuracies, gain and agreements from the predicted classes of each model."""
    acc = {name: float(np.mean(p == y_test)) for name, p in test_preds.items()}
    val = {name: float(np.mean(p == y_val)) for name, p in (val_preds or {}).items()}
    return Metrics(
        teacher_acc=acc["teacher"],
        scratch_acc=acc["scratch"],
        distilled_acc=acc["distilled"],
        gain=acc["distilled"] - acc["scratch"],
        agreement=float(np.mean(test_preds["teacher"] == test_preds["distilled"])),
        agreement_scratch=float(np.mean(test_preds["teacher"] == test_preds["scratch"])),
        teacher_val_acc=val.get("teacher"),
        scratch_val_acc=val.get("scratch"),
        distilled_val_acc=val.get("distilled"),
    )


def evaluate(
    cell: Cell, splits: Splits, models: dict[str, Any]
) -> tuple[Metrics, dict[str, Phase]]:
    """Accuracy of every model on the test (and validation) split, and timed inference."""
    p = cell.prepared
    data, batch = p.data, p.spec.measure.eval_batch_size
    cell.emit({"phase": "eval"})

    def classes(model: Any, split: Any, n: int) -> np.ndarray:
        return predicted_classes(cell, model, split, n)

    test_preds = {name: classes(models[name], splits.test, len(data.y_test)) for name in MODELS}
    val_preds = None
    if splits.val is not None:
        val_preds = {name: classes(models[name], splits.val, len(data.y_val)) for name in MODELS}
    eval_batch = min(batch, len(data.y_test))
    # Inference speed of one teacher (an ensemble's first member).
    one_teacher = models["teacher"][0] if isinstance(models["teacher"], list) else models["teacher"]
    phases = {
        "eval_teacher": eval_phase(
            cell, one_teacher, p.loaded.teacher_arch, splits.test, eval_batch
        ),
        "eval_student": eval_phase(
            cell, models["distilled"], p.loaded.student_arch, splits.test, eval_batch
        ),
    }
    return accuracy_metrics(test_preds, data.y_test, val_preds, data.y_val), phases


def predicted_classes(cell: Cell, model: Any, split: Any, n: int) -> np.ndarray:
    """A model's predicted classes; an ensemble's (a list of members) are the
    argmax of the weighted mean of the members' softmax outputs."""
    batch = cell.prepared.spec.measure.eval_batch_size
    if not isinstance(model, list):
        return predict_all(cell, model, split, n, batch)[0].argmax(axis=-1)
    weights = cell.prepared.loss.ensemble_weights
    mean = 0.0
    for member, weight in zip(model, weights, strict=True):
        logits = predict_all(cell, member, split, n, batch)[0].astype(np.float64)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        mean = mean + weight * probs / probs.sum(axis=-1, keepdims=True)
    return np.asarray(mean).argmax(axis=-1)


def extra_accuracies(cell: Cell, splits: Splits, models: dict[str, Any]) -> dict[str, Any]:
    """Each ensemble member's test accuracy; the assistant's test and validation accuracy."""
    data = cell.prepared.data
    out: dict[str, Any] = {}

    def acc(model: Any, split: Any, y: np.ndarray) -> float:
        return float(np.mean(predicted_classes(cell, model, split, len(y)) == y))

    if isinstance(models["teacher"], list):
        out["teacher_members_acc"] = [acc(m, splits.test, data.y_test) for m in models["teacher"]]
    if "assistant" in models:
        out["assistant_acc"] = acc(models["assistant"], splits.test, data.y_test)
        if splits.val is not None:
            out["assistant_val_acc"] = acc(models["assistant"], splits.val, data.y_val)
    return out


def start_backend(name: str, settings: Settings) -> tuple[Backend, float]:
    """The backend, its framework imported and the settings applied; seconds taken."""
    t0 = time.perf_counter()
    backend = get_backend(name)
    backend.setup(settings)
    return backend, time.perf_counter() - t0


def run_cell(
    loaded: LoadedSpec,
    backend_name: str,
    seed: int,
    settings: Settings,
    data_dir: str | None = None,
    emit: Emit = no_emit,
    teacher_cache: Path | None = None,
) -> CellResult:
    """Train and evaluate one cell; returns the measured part of its record."""
    rss_start = psutil.Process().memory_info().rss
    backend, setup_s = start_backend(backend_name, settings)
    rss_framework = psutil.Process().memory_info().rss
    probe = matmul_probe(backend, backend.environment().on_gpu, settings.bf16)

    t0 = time.perf_counter()
    prepared = prepare_cell(loaded, seed, data_dir)
    data_load_s = time.perf_counter() - t0
    peak = probe.flops_per_s["bfloat16" if settings.bf16 else "float32"]
    cell = Cell(prepared, backend, emit, peak)
    t0 = time.perf_counter()
    splits = put_splits(cell)
    put_dataset_s = time.perf_counter() - t0

    teacher, teacher_phase, from_cache = train_teacher(cell, splits.train, settings, teacher_cache)
    target = distillation_target(
        cell,
        splits.train,
        teacher,
        lambda member: train_teacher(cell, splits.train, settings, teacher_cache, member),
    )
    tracked = trackers(cell, splits.val, splits.test)
    scratch, student, student_phases = train_students(cell, splits.train, target, tracked)
    models = {"teacher": target.teacher if prepared.loss.ensemble_weights else teacher}
    models.update(scratch=scratch, distilled=student, **target.models)
    metrics, eval_phases = evaluate(cell, splits, models)
    metrics = metrics.model_copy(
        update={
            **extra_accuracies(cell, splits, models),
            **best_epoch_metrics(tracked),
            "teacher_from_cache": from_cache,
            "teacher_params": loaded.teacher_arch.param_count(),
            "student_params": loaded.student_arch.param_count(),
            "connector_params": sum(int(v.size) for v in cell.prepared.connectors.values()),
        }
    )
    return CellResult(
        environment=backend.environment(),
        metrics=metrics,
        phases={"teacher": teacher_phase, **target.phases, **student_phases, **eval_phases},
        timings=Timings(setup_s=setup_s, data_load_s=data_load_s, put_dataset_s=put_dataset_s),
        probe=probe,
        data=data_info(prepared),
        memory=Memory(
            host_rss_start_bytes=rss_start,
            host_rss_after_framework_bytes=rss_framework,
            framework_import_bytes=rss_framework - rss_start,
            host_peak_rss_bytes=host_peak_rss(),
        ),
    )


def data_info(prepared: PreparedCell) -> DataInfo:
    data = prepared.data
    return DataInfo(
        dataset=data.name,
        train=len(data.y_train),
        val=len(data.y_val),
        test=len(data.y_test),
        shape=list(data.shape),
        classes=data.classes,
    )
