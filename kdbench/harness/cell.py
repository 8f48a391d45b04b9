"""The pipeline of one cell: teacher, scratch student, distilled student.

The harness owns the loop and the clock. Every step is timed the same way
for every backend: the clock starts, the backend runs one step, the device is
synchronised, the clock stops. The first warm-up steps of each phase (which
include compilation) are reported apart from the steady state.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from kdbench.backends.base import Backend, LossConfig, Settings, Weights, get_backend
from kdbench.datasets import Dataset, load_dataset
from kdbench.flops import forward_flops, phase_flops_per_step
from kdbench.initial_weights import init_weights
from kdbench.plan import BatchPlan, learning_rates, make_plan, rng_for
from kdbench.spec import LoadedSpec, NetSpec, Spec

Emit = Callable[[dict[str, Any]], None]


def _no_emit(event: dict[str, Any]) -> None:
    pass


def step_stats(times: np.ndarray, warmup: int, batch_size: int) -> dict[str, Any]:
    """Warm-up apart; median, IQR and p90 of the steady-state steps."""
    warm = times[:warmup]
    steady = times[warmup:] if len(times) > warmup else times[-1:]
    median = float(np.median(steady))
    q25, q75, p90 = (float(v) for v in np.percentile(steady, [25, 75, 90]))
    return {
        "warmup_steps": int(len(warm)),
        "warmup_s": float(warm.sum()),
        "first_step_s": float(times[0]),
        "steady_steps": int(len(steady)),
        "step_time_median_s": median,
        "step_time_iqr_s": q75 - q25,
        "step_time_p90_s": p90,
        "step_time_mean_s": float(steady.mean()),
        "throughput_samples_per_s": batch_size / median,
    }


def host_peak_rss() -> int:
    """The process's resident-set high-water mark (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@dataclass
class Cell:
    """Everything one (spec, backend, seed) needs, built once."""

    loaded: LoadedSpec
    backend: Backend
    seed: int
    data: Dataset
    warmup: int
    emit: Emit = _no_emit
    peak_flops: float | None = None


def efficiency(cell: Cell, flops: int, median_step_s: float) -> dict[str, Any]:
    """Analytic FLOPs per step and the rate the median steady step achieved."""
    achieved = flops / median_step_s
    peak = cell.peak_flops
    return {
        "flops_per_step": flops,
        "achieved_flops_per_s": achieved,
        "fraction_of_peak": achieved / peak if peak else None,
    }


def train_phase(
    cell: Cell, phase: str, net: NetSpec, state: Any, data: Any, plan: BatchPlan
) -> tuple[Any, dict[str, Any]]:
    """Train through the whole plan, timing every step from dispatch to sync."""
    backend = cell.backend
    lrs = learning_rates(net, plan)
    times = np.empty(plan.total_steps)
    epoch_losses: list[float] = []
    loss0 = float("nan")
    backend.reset_peak_memory()
    started = time.perf_counter()
    step = 0
    for epoch in range(plan.epochs):
        handles = []
        for batch in range(plan.steps_per_epoch):
            t0 = time.perf_counter()
            state, loss = backend.train_step(state, data, plan.indices[epoch, batch], lrs[step])
            backend.sync(loss)
            times[step] = time.perf_counter() - t0
            handles.append(loss)
            step += 1
        losses = backend.to_numpy(handles).astype(np.float64)
        if epoch == 0:
            loss0 = float(losses[0])
        epoch_losses.append(float(losses.mean()))
        cell.emit({"phase": phase, "epoch": epoch + 1, "epochs": plan.epochs})
    wall = time.perf_counter() - started
    if not np.all(np.isfinite(epoch_losses)):
        raise FloatingPointError(f"{phase}: the training loss is not finite: {epoch_losses}")
    timing = step_stats(times, cell.warmup, plan.batch_size)
    flops = phase_flops_per_step(
        phase, cell.loaded.teacher_arch, cell.loaded.student_arch, plan.batch_size
    )
    stats = {
        "steps": plan.total_steps,
        "samples": plan.total_steps * plan.batch_size,
        "epochs": plan.epochs,
        "batch_size": plan.batch_size,
        "wall_s": wall,
        "loss_step0": loss0,
        "loss_epochs": epoch_losses,
        **timing,
        **efficiency(cell, flops, timing["step_time_median_s"]),
        "device_peak_bytes": backend.peak_memory(),
        "host_peak_rss_bytes": host_peak_rss(),
        "step_times_s": [round(float(t), 9) for t in times],
    }
    return state, stats


def predict_all(
    cell: Cell, model: Any, data: Any, n: int, batch: int
) -> tuple[np.ndarray, list[float]]:
    """Logits for a whole split, batch by batch, and each batch's synced time."""
    backend = cell.backend
    logits, times = [], []
    for start in range(0, n, batch):
        idx = np.arange(start, min(start + batch, n), dtype=np.int32)
        t0 = time.perf_counter()
        out = backend.predict(model, data, idx)
        backend.sync(out)
        times.append(time.perf_counter() - t0)
        logits.append(backend.to_numpy(out))
    return np.concatenate(logits), times


def teacher_key(loaded: LoadedSpec, backend: str, seed: int, settings: Settings) -> str:
    """What determines a trained teacher: its data, its network and training,
    the seed, the backend and the settings that change numerics (not threads)."""
    spec = loaded.spec
    content = {
        "data": spec.data.model_dump(mode="json"),
        "teacher": spec.teacher.model_dump(mode="json"),
        "warmup": spec.measure.warmup_steps,
        "backend": backend,
        "seed": seed,
        "settings": {k: v for k, v in settings.as_dict().items() if k != "threads"},
    }
    text = json.dumps(content, sort_keys=True)
    return f"{backend}-seed{seed}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def load_cached_teacher(cache: Path, key: str) -> tuple[Weights, dict[str, Any]] | None:
    weights_file, stats_file = cache / f"{key}.npz", cache / f"{key}.json"
    if not (weights_file.is_file() and stats_file.is_file()):
        return None
    with np.load(weights_file) as data:
        weights = {name: data[name] for name in data.files}
    return weights, json.loads(stats_file.read_text())


def save_cached_teacher(cache: Path, key: str, weights: Weights, stats: dict[str, Any]) -> None:
    """Weights first, stats last: a teacher counts as cached once both exist."""
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"{key}.tmp.npz"
    np.savez(tmp, **weights)
    os.replace(tmp, cache / f"{key}.npz")
    tmp_json = cache / f"{key}.json.tmp"
    tmp_json.write_text(json.dumps(stats))
    os.replace(tmp_json, cache / f"{key}.json")


EVAL_REPEATS = 10
PROBE_REPEATS = 10


def matmul_probe(backend: Backend, gpu: bool) -> dict[str, Any]:
    """The matrix-multiply rate this framework reaches here, under the precision
    policy in force: float32 always, bfloat16 too on GPUs. The median of
    PROBE_REPEATS synchronised products after two warm-ups."""
    n = 4096 if gpu else 1024
    rates: dict[str, float] = {}
    started = time.perf_counter()
    for dtype in ("float32", "bfloat16") if gpu else ("float32",):
        run = backend.matmul_probe(n, dtype)
        for _ in range(2):
            backend.sync(run())
        times = []
        for _ in range(PROBE_REPEATS):
            t0 = time.perf_counter()
            backend.sync(run())
            times.append(time.perf_counter() - t0)
        rates[dtype] = 2 * n**3 / float(np.median(times))
    return {
        "n": n,
        "repeats": PROBE_REPEATS,
        "flops_per_s": rates,
        "wall_s": time.perf_counter() - started,
    }


def eval_phase(cell: Cell, model: Any, arch: Any, data: Any, batch: int) -> dict[str, Any]:
    """Inference speed: one warm-up batch, then EVAL_REPEATS timed batches.

    Accuracy comes from predict_all over the whole split; this times a fixed
    full batch so every framework runs one static shape.
    """
    backend = cell.backend
    idx = np.arange(batch, dtype=np.int32)
    backend.reset_peak_memory()
    times = []
    for _ in range(1 + EVAL_REPEATS):
        t0 = time.perf_counter()
        out = backend.predict(model, data, idx)
        backend.sync(out)
        times.append(time.perf_counter() - t0)
    timing = step_stats(np.array(times), 1, batch)
    return {
        "batch_size": batch,
        **timing,
        **efficiency(cell, forward_flops(arch) * batch, timing["step_time_median_s"]),
        "device_peak_bytes": backend.peak_memory(),
        "step_times_s": [round(t, 9) for t in times],
    }


def load_spec_data(spec: Spec, seed: int, data_dir: str | None = None) -> Dataset:
    """The spec's dataset, split and normalised for this seed."""
    d = spec.data
    return load_dataset(
        d.dataset,
        seed=seed,
        path=data_dir or d.path,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        train_limit=d.train_limit,
        synthetic_samples=d.samples or 2048,
        synthetic_shape=tuple(d.shape) if d.shape else (28, 28, 1),
        synthetic_classes=d.classes or 10,
    )


def run_cell(
    loaded: LoadedSpec,
    backend_name: str,
    seed: int,
    settings: Settings,
    data_dir: str | None = None,
    emit: Emit = _no_emit,
    teacher_cache: Path | None = None,
) -> dict[str, Any]:
    """Train and evaluate one cell; returns the metric part of its record."""
    spec = loaded.spec
    timings: dict[str, float] = {}
    rss_start = psutil.Process().memory_info().rss

    t0 = time.perf_counter()
    backend = get_backend(backend_name)
    backend.setup(settings)
    timings["setup_s"] = time.perf_counter() - t0
    rss_framework = psutil.Process().memory_info().rss
    probe = matmul_probe(backend, backend.environment().get("device_kind") == "gpu")

    t0 = time.perf_counter()
    data = load_spec_data(spec, seed, data_dir)
    timings["data_load_s"] = time.perf_counter() - t0
    cell = Cell(
        loaded,
        backend,
        seed,
        data,
        spec.measure.warmup_steps,
        emit,
        probe["flops_per_s"]["float32"],
    )

    t0 = time.perf_counter()
    train = backend.put_dataset(data.x_train, data.y_train)
    test = backend.put_dataset(data.x_test, data.y_test)
    val = backend.put_dataset(data.x_val, data.y_val) if len(data.y_val) else None
    backend.sync()
    timings["put_dataset_s"] = time.perf_counter() - t0

    n_train = len(data.y_train)
    teacher_w = init_weights(loaded.teacher_arch, rng_for(seed, "teacher-init"))
    student_w = init_weights(loaded.student_arch, rng_for(seed, "student-init"))
    t_plan = make_plan(
        n_train, spec.teacher.batch_size, spec.teacher.epochs, rng_for(seed, "teacher-plan")
    )
    # The scratch and distilled students see the same batches from the same start.
    s_plan = make_plan(
        n_train, spec.student.batch_size, spec.student.epochs, rng_for(seed, "student-plan")
    )
    dropout_seeds = rng_for(seed, "dropout").integers(0, 2**31 - 1, size=3)

    phases: dict[str, dict[str, Any]] = {}
    key = teacher_key(loaded, backend_name, seed, settings)
    cached = load_cached_teacher(teacher_cache, key) if teacher_cache else None
    if cached is not None:
        # Trained by an earlier cell with the same teacher; its phase record
        # (timings included) is that cell's, marked as such.
        teacher = backend.build(loaded.teacher_arch, cached[0], seed=int(dropout_seeds[0]))
        phases["teacher"] = {**cached[1], "from_cache": True}
        cell.emit({"phase": "teacher", "cached": True})
    else:
        teacher = backend.build(loaded.teacher_arch, teacher_w, seed=int(dropout_seeds[0]))
        state = backend.init_train(teacher, spec.teacher.optimizer.resolved(), LossConfig("none"))
        state, phases["teacher"] = train_phase(cell, "teacher", spec.teacher, state, train, t_plan)
        teacher = backend.trained_model(state)
        if teacher_cache is not None:
            save_cached_teacher(teacher_cache, key, backend.get_weights(teacher), phases["teacher"])
        phases["teacher"]["from_cache"] = False

    scratch = backend.build(loaded.student_arch, student_w, seed=int(dropout_seeds[1]))
    state = backend.init_train(scratch, spec.student.optimizer.resolved(), LossConfig("none"))
    state, phases["scratch"] = train_phase(cell, "scratch", spec.student, state, train, s_plan)
    scratch = backend.trained_model(state)

    distill = spec.distill
    loss = LossConfig(distill.method, distill.temperature, distill.alpha)
    student = backend.build(loaded.student_arch, student_w, seed=int(dropout_seeds[2]))
    state = backend.init_train(student, spec.student.optimizer.resolved(), loss, teacher=teacher)
    state, phases["distill"] = train_phase(cell, "distill", spec.student, state, train, s_plan)
    student = backend.trained_model(state)

    cell.emit({"phase": "eval"})
    batch = spec.measure.eval_batch_size
    preds: dict[str, np.ndarray] = {}
    val_acc: dict[str, float | None] = {}
    for name, model in (("teacher", teacher), ("scratch", scratch), ("distilled", student)):
        logits, _ = predict_all(cell, model, test, len(data.y_test), batch)
        preds[name] = logits.argmax(axis=-1)
        if val is not None:
            vlogits, _ = predict_all(cell, model, val, len(data.y_val), batch)
            val_acc[name] = float(np.mean(vlogits.argmax(axis=-1) == data.y_val))
        else:
            val_acc[name] = None
    eval_batch = min(batch, len(data.y_test))
    phases["eval_teacher"] = eval_phase(cell, teacher, loaded.teacher_arch, test, eval_batch)
    phases["eval_student"] = eval_phase(cell, student, loaded.student_arch, test, eval_batch)

    y = data.y_test
    acc = {name: float(np.mean(p == y)) for name, p in preds.items()}
    metrics = {
        "teacher_acc": acc["teacher"],
        "scratch_acc": acc["scratch"],
        "distilled_acc": acc["distilled"],
        "gain": acc["distilled"] - acc["scratch"],
        "agreement": float(np.mean(preds["teacher"] == preds["distilled"])),
        "agreement_scratch": float(np.mean(preds["teacher"] == preds["scratch"])),
        "teacher_val_acc": val_acc["teacher"],
        "scratch_val_acc": val_acc["scratch"],
        "distilled_val_acc": val_acc["distilled"],
        "teacher_from_cache": cached is not None,
        "teacher_params": loaded.teacher_arch.param_count(),
        "student_params": loaded.student_arch.param_count(),
    }
    return {
        "environment": backend.environment(),
        "metrics": metrics,
        "phases": phases,
        "timings": timings,
        "probe": probe,
        "data": {
            "dataset": data.name,
            "train": n_train,
            "val": len(data.y_val),
            "test": len(y),
            "shape": list(data.shape),
            "classes": data.classes,
        },
        "memory": {
            "host_rss_start_bytes": rss_start,
            "host_rss_after_framework_bytes": rss_framework,
            "framework_import_bytes": rss_framework - rss_start,
            "host_peak_rss_bytes": host_peak_rss(),
        },
    }
