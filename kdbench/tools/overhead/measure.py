"""Both sides of the overhead benchmark, built from prepare_cell, and their figures."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdbench.backends.base import Backend, BareLoop, Settings, get_backend
from kdbench.errors import KdbenchError
from kdbench.harness.phases import Cell, train_phase
from kdbench.harness.prepare import PreparedCell, prepare_cell
from kdbench.plan import BatchPlan, learning_rates
from kdbench.records.schema import Phase
from kdbench.spec import DEFAULT_SPEC, load_spec

TARGET = 0.02  # the harness may cost at most 2% of the bare loop's throughput
DEFAULT_REPEATS = 3  # fresh states (each compiles anew)
DEFAULT_STEPS = 216  # per repeat and side: four epochs of mnist5k's student plan
# One intra-op thread by default: on a shared 2-core machine two threads make
# every step wait for the slower thread (150-480 ms a step instead of 20 ms),
# noise that drowns a 2% effect. The harness's extra cost per step is Python
# on the main thread, the same at any thread count; the us/step column
# carries it over to any step time.
DEFAULT_THREADS = 1


@dataclass
class Bench:
    """Everything both sides share, built once per process from prepare_cell."""

    prepared: PreparedCell
    backend: Backend
    cell: Cell
    train: Any  # the backend's device-resident training split
    teacher: Any  # the harness side's frozen teacher model (never updated)
    bare: BareLoop

    @property
    def plan(self) -> BatchPlan:
        """The distillation phase's full plan."""
        return self.prepared.student_plan

    @property
    def steady(self) -> Cell:
        """The cell for a timed block, which continues a phase past its warm-up."""
        return SteadyCell(
            self.cell.prepared, self.cell.backend, self.cell.emit, self.cell.peak_flops
        )


@dataclass
class SteadyCell(Cell):
    """A cell whose warm-up steps already ran (the warm-up plan): a timed block
    continues its phase, as the steps after the warm-up of a real cell do, so
    none of its steps is timed alone as a warm-up step is (where a backend
    keeps one step in flight, that would sync a third of a 15-step block)."""

    @property
    def warmup(self) -> int:
        return 0


def prepare(
    backend_name: str,
    spec: str = DEFAULT_SPEC,
    seed: int = 0,
    settings: Settings | None = None,
    backend: Backend | None = None,
) -> Bench:
    """The distill phase's inputs, made as run_cell makes them (initial teacher weights).

    backend: one already set up (the tests share theirs); otherwise a new one
    is set up with settings.
    """
    prepared = prepare_cell(load_spec(spec), seed)
    if prepared.student_augment is not None:  # the distillation phase is what is timed
        raise KdbenchError(
            f"{spec}: the bare loops do not augment, so the overhead benchmark takes specs "
            "whose students train on plain batches (no data.augment, or augment.nets = "
            "'teacher')"
        )
    if backend is None:
        backend = get_backend(backend_name)
        backend.setup(settings or Settings(threads=DEFAULT_THREADS))
    data = prepared.data
    train = backend.put_dataset(data.x_train, data.y_train)
    teacher_arch = prepared.loaded.teacher_arch
    teacher = backend.build(teacher_arch, prepared.teacher_weights, seed=prepared.teacher_seed)
    backend.sync(train, teacher)
    return Bench(prepared, backend, Cell(prepared, backend), train, teacher, backend.bare_loop())


def harness_state(bench: Bench) -> Any:
    """A fresh distillation state, as run_cell makes it."""
    p, b = bench.prepared, bench.backend
    student = b.build(p.loaded.student_arch, p.student_weights, seed=p.student_seed)
    return b.init_train(student, p.student_optimizer, p.loss, teacher=bench.teacher)


def harness_run(
    bench: Bench, state: Any, plan: BatchPlan, cell: Cell | None = None
) -> tuple[Any, Phase]:
    """The real train_phase over plan, as the distill phase of a cell."""
    cell = cell or bench.cell
    return train_phase(cell, "distill", bench.prepared.spec.student, state, bench.train, plan)


def bare_run(bench: Bench) -> Any:
    """A fresh bare-loop state from the same weights, seeds and device."""
    p = bench.prepared
    return bench.bare.bare_setup(
        p.data.x_train,
        p.data.y_train,
        p.loaded.teacher_arch,
        p.teacher_weights,
        p.loaded.student_arch,
        p.student_weights,
        p.student_optimizer,
        p.loss,
        device=bench.backend.device,
        teacher_seed=p.teacher_seed,
        student_seed=p.student_seed,
    )


def bare_lrs(bench: Bench, plan: BatchPlan) -> np.ndarray:
    """The learning rates train_phase uses for this plan."""
    return learning_rates(bench.prepared.spec.student, plan)


def split_plan(plan: BatchPlan, warmup: int, epochs: int) -> tuple[BatchPlan, list[BatchPlan]]:
    """The warm-up steps (the start of epoch 0) and the timed epochs after it, one by one."""
    if epochs + 1 > plan.epochs:
        raise ValueError(f"the plan has {plan.epochs} epochs; {epochs} + 1 were asked for")
    warm = BatchPlan(plan.indices[:1, :warmup])
    return warm, [BatchPlan(plan.indices[e : e + 1]) for e in range(1, 1 + epochs)]


@dataclass
class Timing:
    """One timed block of one side: wall and process CPU seconds, per-epoch mean losses."""

    wall_s: float
    cpu_s: float
    losses: np.ndarray


class HarnessSide:
    """The harness path: fresh state, then train_phase over each block."""

    def __init__(self, bench: Bench, warm: BatchPlan) -> None:
        self.bench = bench
        self.state, _ = harness_run(bench, harness_state(bench), warm)
        bench.backend.sync(self.state)

    def timed(self, plan: BatchPlan) -> Timing:
        backend = self.bench.backend
        c0, t0 = time.process_time(), time.perf_counter()
        self.state, stats = harness_run(self.bench, self.state, plan, self.bench.steady)
        backend.sync(self.state)  # train_phase already synced its last step; a no-op here
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return Timing(wall, cpu, np.asarray(stats.loss_epochs, dtype=np.float64))


class BareSide:
    """The bare loop: fresh state from the same weights, then the loop over each block.

    The loop returns its losses as numpy, so the device is synchronised when
    the clock stops. The learning rates are computed outside the clock; the
    harness computes them inside train_phase (a few microseconds per phase).
    """

    def __init__(self, bench: Bench, warm: BatchPlan) -> None:
        self.bench, self.bare = bench, bench.bare
        self.run = bare_run(bench)
        self.bare.bare_distill_loop(self.run, warm.indices, bare_lrs(bench, warm))

    def timed(self, plan: BatchPlan) -> Timing:
        lrs = bare_lrs(self.bench, plan)
        c0, t0 = time.process_time(), time.perf_counter()
        losses = self.bare.bare_distill_loop(self.run, plan.indices, lrs)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        per_epoch = losses.reshape(plan.epochs, plan.steps_per_epoch).mean(axis=1)
        return Timing(wall, cpu, per_epoch)


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest relative difference between two loss curves."""
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def measure(
    backend_name: str,
    repeats: int = DEFAULT_REPEATS,
    steps: int = DEFAULT_STEPS,
    settings: Settings | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Interleaved harness and bare-loop blocks in this process; the figures.

    Each of the repeats builds fresh state for both sides and warms both up
    (untimed: a fresh tf.function or jax.jit compiles here); then the timed
    epochs alternate between the sides, one epoch (one train_phase call) at a
    time, the order swapped every epoch. Each (harness, bare) pair over the
    same epoch from the same state is one paired sample.
    """
    started = time.perf_counter()
    bench = prepare(backend_name, seed=seed, settings=settings)
    epochs = max(1, round(steps / bench.plan.steps_per_epoch))
    warm, blocks = split_plan(bench.plan, bench.cell.warmup, epochs)
    pairs: list[tuple[Timing, Timing]] = []
    for r in range(repeats):
        sides = {"harness": HarnessSide(bench, warm), "bare": BareSide(bench, warm)}
        for k, block in enumerate(blocks):
            # Swap the order each block: a drift in the load then favours neither side.
            order = ("harness", "bare") if (r * len(blocks) + k) % 2 == 0 else ("bare", "harness")
            got = {side: sides[side].timed(block) for side in order}
            pairs.append((got["harness"], got["bare"]))
    return summarise(backend_name, bench, pairs, blocks, time.perf_counter() - started)


def _overheads(harness: list[float], bare: list[float]) -> list[float]:
    """1 - (harness throughput / bare throughput) of each pair, i.e. 1 - bare_s / harness_s."""
    return [1.0 - b / h for h, b in zip(harness, bare, strict=True)]


def summarise(
    backend_name: str,
    bench: Bench,
    pairs: list[tuple[Timing, Timing]],
    blocks: list[BatchPlan],
    elapsed: float,
) -> dict[str, Any]:
    """Medians of both sides and of the paired (same-block) ratios, wall and CPU."""
    steps = blocks[0].total_steps
    samples = steps * blocks[0].batch_size
    h_wall = [h.wall_s for h, _ in pairs]
    b_wall = [b.wall_s for _, b in pairs]
    overheads = _overheads(h_wall, b_wall)
    cpu_overheads = _overheads([h.cpu_s for h, _ in pairs], [b.cpu_s for _, b in pairs])
    overhead = statistics.median(overheads)
    q1, _, q3 = statistics.quantiles(overheads, n=4) if len(pairs) > 1 else [overhead] * 3
    extra_us = [(h - b) / steps * 1e6 for h, b in zip(h_wall, b_wall, strict=True)]
    env = bench.backend.environment()
    return {
        "backend": backend_name,
        "framework": env.framework,
        "framework_version": env.framework_version,
        "device": env.device,
        "compile_mode": env.compile_mode,
        "intra_op_threads": env.intra_op_threads,
        "spec": bench.prepared.spec.name,
        "phase": "distill",
        "teacher_weights": "initial (untrained)",
        "batch_size": blocks[0].batch_size,
        "steps_per_block": steps,
        "blocks_per_repeat": len(blocks),
        "repeats": len(pairs) // len(blocks),
        "pairs": len(pairs),
        "timed_steps_per_side": steps * len(pairs),
        "warmup_steps": bench.cell.warmup,
        "harness_wall_s": h_wall,
        "bare_wall_s": b_wall,
        "harness_cpu_s": [h.cpu_s for h, _ in pairs],
        "bare_cpu_s": [b.cpu_s for _, b in pairs],
        "harness_samples_per_s": statistics.median(samples / w for w in h_wall),
        "bare_samples_per_s": statistics.median(samples / w for w in b_wall),
        "ratio": 1.0 - overhead,
        "overhead": overhead,
        "overhead_q1": q1,
        "overhead_q3": q3,
        "overhead_best_of": 1.0 - min(b_wall) / min(h_wall),
        "cpu_overhead": statistics.median(cpu_overheads),
        "extra_us_per_step": statistics.median(extra_us),
        "loss_max_rel_diff": max(rel_diff(h.losses, b.losses) for h, b in pairs),
        "meets_target": overhead <= TARGET,
        "elapsed_s": elapsed,
    }
