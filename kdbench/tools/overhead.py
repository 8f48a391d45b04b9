"""What the harness costs: its steady-state throughput against a bare loop.

``python -m kdbench.tools.overhead [--backends ...] [--repeats N] [--steps N]``

For each backend, in a child process of its own (one framework per process),
on the default spec (mnist5k, the distillation phase: cnn-small teacher,
mlp-64 student, batch 64), this times

- the harness: the real ``kdbench.harness.train_phase`` on a Cell, through
  the Backend adapter, exactly as a benchmark cell runs it;
- the bare loop: ``backends/<fw>/bare.py`` (``Backend.bare_loop``), the same steps written directly in
  the framework (same models, loss, optimizer, indices and learning rates),
  with no clock, no per-step sync and no adapter;

side by side. Each of ``--repeats`` rounds builds fresh state for both sides
(a fresh student and optimizer from the same initial weights), runs the
spec's warm-up steps untimed through each path (they compile: a new
tf.function or jax.jit per fresh state), then times ``--steps`` steps a side
(rounded to whole epochs of the plan), alternating harness and bare loop one
epoch at a time, the order swapped every epoch. Each block is one wall-clock
interval that ends after the device is synchronised (train_phase syncs every
step and converts its losses at the epoch end; the bare loop returns numpy).
A pair (both sides over the same epoch from the same state, back to back)
sees the same machine load, so the figure is the median over pairs of
harness / bare throughput, its quartiles beside it; the overhead is
1 - ratio and the target is at most 2%. Process CPU time is reported the same
way, to tell extra work (CPU) from waiting or lost overlap (wall only).

The teacher keeps its initial (untrained) weights: the cost of a step does not
depend on the weights' values, and training it would only lengthen the run.
Both sides start from the same weights and see the same batches, so their
losses must agree; every round checks that they do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from kdbench.backends.base import REGISTRY, Backend, BareLoop, Settings, get_backend
from kdbench.harness.phases import Cell, train_phase
from kdbench.harness.prepare import PreparedCell, prepare_cell
from kdbench.plan import BatchPlan, learning_rates
from kdbench.records.schema import Phase
from kdbench.spec import DEFAULT_SPEC, load_spec

TARGET = 0.02  # the harness may cost at most 2% of the bare loop's throughput
DEFAULT_REPEATS = 3  # fresh states (each compiles anew)
DEFAULT_STEPS = 216  # per repeat and side: four epochs of mnist5k's student plan
CHILD_TIMEOUT_S = 600
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


def harness_run(bench: Bench, state: Any, plan: BatchPlan) -> tuple[Any, Phase]:
    """The real train_phase over plan, as the distill phase of a cell."""
    return train_phase(bench.cell, "distill", bench.prepared.spec.student, state, bench.train, plan)


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
        self.state, stats = harness_run(self.bench, self.state, plan)
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


def run_child(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """measure() in a fresh process: one framework per process, as cells run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "kdbench.tools.overhead",
            "--child",
            backend,
            "--out",
            str(out),
            "--repeats",
            str(args.repeats),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            "--device",
            args.device,
        ]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            return {"backend": backend, "error": f"timed out after {CHILD_TIMEOUT_S} s"}
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"backend": backend, "error": f"exit {proc.returncode}: {tail[0][:300]}"}
        return json.loads(out.read_text())


COLUMNS = (
    "backend",
    "mode",
    "device",
    "pairs x steps",
    "harness samples/s",
    "bare samples/s",
    "ratio",
    "overhead %",
    "IQR %",
    "best-of %",
    "CPU %",
    "µs/step",
    "losses agree",
    f"≤ {TARGET:.0%}",
)


def table(results: list[dict[str, Any]], title: str) -> Table:
    """All backends side by side, with the verdict against the target."""
    out = Table(title=title, header_style="bold")
    for header in COLUMNS:
        left = header in ("backend", "mode", "device")
        out.add_column(header, justify="left" if left else "right")
    for r in results:
        if "error" in r:
            out.add_row(r["backend"], *["-"] * (len(COLUMNS) - 2), r["error"])
            continue
        out.add_row(
            r["backend"],
            str(r["compile_mode"]),
            str(r["device"]),
            f"{r['pairs']} x {r['steps_per_block']}",
            f"{r['harness_samples_per_s']:,.0f}",
            f"{r['bare_samples_per_s']:,.0f}",
            f"{r['ratio']:.3f}",
            f"{100 * r['overhead']:.1f}",
            f"{100 * r['overhead_q1']:.1f} .. {100 * r['overhead_q3']:.1f}",
            f"{100 * r['overhead_best_of']:.1f}",
            f"{100 * r['cpu_overhead']:.1f}",
            f"{r['extra_us_per_step']:.0f}",
            "exactly" if r["loss_max_rel_diff"] == 0 else f"{r['loss_max_rel_diff']:.0e}",
            "yes" if r["meets_target"] else "MISSED",
        )
    return out


LEGEND = """\
ratio: median over pairs of harness/bare throughput (a pair: both sides over the same
epoch from the same state, back to back); overhead = 1 - ratio; IQR: quartiles of the
pairs' overheads; best-of: from the fastest block of each side; CPU: the same median from
process CPU time instead of wall time (extra work, without waits or lost overlap);
µs/step: median extra wall time per step; losses agree: largest relative difference
of the per-epoch mean losses."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kdbench.tools.overhead",
        description="Harness vs bare-loop throughput per backend on the default spec.",
    )
    p.add_argument("--backends", nargs="+", choices=list(REGISTRY), help="default: installed")
    p.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help=f"rounds, each with fresh state (default {DEFAULT_REPEATS})",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"timed steps per round and side, rounded to whole epochs (default {DEFAULT_STEPS})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"intra-op threads (default {DEFAULT_THREADS}; 0: all cores)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.steps < 1:
        p.error("--repeats and --steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(threads=args.threads or os.cpu_count() or 1, device=args.device)
    if args.child:
        result = measure(args.child, args.repeats, args.steps, settings)
        args.out.write_text(json.dumps(result))
        return 0
    from kdbench.backends.base import installed_backends

    # Wide enough for the table when the output is a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 200)
    results = []
    for name in args.backends or installed_backends():
        console.print(f"[dim]{name}: {args.repeats} repeats of {args.steps} steps a side ...[/dim]")
        results.append(run_child(name, args))
    console.print(
        table(
            results, f"Harness overhead on {DEFAULT_SPEC} (distill phase), threads={args.threads}"
        )
    )
    console.print(LEGEND, highlight=False)
    if args.json:
        payload = {
            "spec": DEFAULT_SPEC,
            "target_overhead": TARGET,
            "settings": settings.as_dict(),
            "repeats": args.repeats,
            "steps": args.steps,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
