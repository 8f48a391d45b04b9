"""kdbench against the expert-written reference loop: throughput ratio per backend and spec.

    .venv/bin/python benchmarks/reference/ratio.py [--backends pytorch] [--specs mnist5k]
        [--phases distill teacher teacher-inference] [--precision float32 bf16]
        [--repeats 3] [--steps 216] [--threads 1]

For each backend that has a reference loop here (``<backend>.py`` beside this
file) and each spec, in a child process of its own (one framework per
process), the distillation phase runs through the real harness
(``train_phase`` on the backend adapter, exactly as a cell runs it) and
through the reference loop, from the same initial weights over the same
batches with the same learning rates. The timed epochs alternate between the
two, the order swapped every epoch, as in the overhead benchmark
(``kdbench.tools.overhead``, whose sides this reuses); the figure is the
median over pairs of kdbench / reference throughput, with its quartiles. A
pair's losses must agree: the reference computes the same step, not a
cheaper one. Goal: ratio >= 0.97; where kdbench is slower, the backend is
what gets fixed, never the reference.

Phase "teacher-inference" times the teacher's inference instead: the real
``eval_phase`` (one warm-up batch and EVAL_REPEATS timed batches of the
spec's eval batch, as a cell's ``eval_teacher``) against the reference's
``infer`` over the same batch as many times; a pair's batch cross-entropy
must agree.
"""

# ruff: noqa: E402 (the imports after the sys.path fix below must stay after it)
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

# Run as a script, this folder heads sys.path, where jax.py and tensorflow.py
# would shadow the frameworks themselves: out with it, before any import of one.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.special import logsumexp

from kdbench.backends.base import LossConfig
from kdbench.harness.phases import EVAL_REPEATS, eval_phase, train_phase
from kdbench.plan import BatchPlan, learning_rates
from kdbench.settings import Settings
from kdbench.tools.overhead.measure import Bench, Timing, prepare, split_plan, summarise

HERE = Path(__file__).resolve().parent
GOAL = 0.97
CHILD_TIMEOUT_S = 900


def reference_module(backend: str) -> ModuleType:
    """The reference loop of a backend, loaded by path (benchmarks/ is not a package)."""
    path = HERE / f"{backend}.py"
    spec = importlib.util.spec_from_file_location(f"kdbench_reference_{backend}", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise SystemExit(f"no reference loop for {backend!r}: {path} does not exist")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def backends_with_reference() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("ratio", "__init__"))


INFERENCE = "teacher-inference"
PHASES = ("distill", "teacher", INFERENCE)


@dataclass(frozen=True)
class PhaseInputs:
    """What one phase trains, as run_cell makes it: the net, its start, plan and loss."""

    name: str
    net: Any  # the spec's NetSpec: epochs, batch size, schedule
    arch: Any
    weights: Any
    seed: int
    optimizer: dict[str, Any]
    loss: LossConfig
    plan: BatchPlan
    frozen: tuple[Any, Any] | None  # the teacher's (arch, weights) when distilling


def phase_inputs(bench: Bench, phase: str) -> PhaseInputs:
    p = bench.prepared
    if phase == "teacher":  # trained on labels alone, from the initial teacher weights
        return PhaseInputs("teacher", p.spec.teacher, p.loaded.teacher_arch, p.teacher_weights,
                           p.teacher_seed, p.teacher_optimizer, LossConfig("none"),
                           p.teacher_plan, None)  # fmt: skip
    return PhaseInputs("distill", p.spec.student, p.loaded.student_arch, p.student_weights,
                       p.student_seed, p.student_optimizer, p.loss, p.student_plan,
                       (p.loaded.teacher_arch, p.teacher_weights))  # fmt: skip


class KdbenchSide:
    """The harness path: the backend's fresh state, then the real train_phase over each block."""

    def __init__(self, bench: Bench, phase: PhaseInputs, warm: BatchPlan) -> None:
        b, self.bench, self.phase = bench.backend, bench, phase
        model = b.build(phase.arch, phase.weights, seed=phase.seed)
        teacher = bench.teacher if phase.frozen else None
        self.state = b.init_train(model, phase.optimizer, phase.loss, teacher=teacher)
        self.state, _ = self._run(warm, bench.cell)
        b.sync(self.state)

    def _run(self, plan: BatchPlan, cell: Any) -> tuple[Any, Any]:
        p = self.phase
        return train_phase(cell, p.name, p.net, self.state, self.bench.train, plan)

    def settle(self, warm: BatchPlan) -> None:
        """The warm-up steps again, untimed, once both sides are set up."""
        self.state, _ = self._run(warm, self.bench.cell)
        self.bench.backend.sync(self.state)

    def timed(self, plan: BatchPlan) -> Timing:
        c0, t0 = time.process_time(), time.perf_counter()
        self.state, stats = self._run(plan, self.bench.steady)  # past the warm-up
        self.bench.backend.sync(self.state)  # train_phase synced its last step already
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return Timing(wall, cpu, np.asarray(stats.loss_epochs, dtype=np.float64))


class ReferenceSide:
    """The reference loop: fresh networks from the same weights, then the loop over each block."""

    def __init__(
        self, bench: Bench, phase: PhaseInputs, module: ModuleType, warm: BatchPlan, precision: str
    ) -> None:
        data = bench.prepared.data
        self.phase, self.module = phase, module
        frozen_arch, frozen_weights = phase.frozen or (None, None)
        self.run = module.setup(
            data.x_train,
            data.y_train,
            frozen_arch,
            frozen_weights,
            phase.arch,
            phase.weights,
            phase.optimizer,
            phase.loss,
            seed=phase.seed,
            precision=precision,
        )
        self.settle(warm)

    def settle(self, warm: BatchPlan) -> None:
        """The warm-up steps (again, once both sides are set up), untimed."""
        self.module.train(self.run, warm.indices, learning_rates(self.phase.net, warm))

    def timed(self, plan: BatchPlan) -> Timing:
        lrs = learning_rates(self.phase.net, plan)
        c0, t0 = time.process_time(), time.perf_counter()
        losses = self.module.train(self.run, plan.indices, lrs)  # numpy: the device is done
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return Timing(wall, cpu, losses.reshape(plan.epochs, -1).mean(axis=1))


def batch_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The cross-entropy of one batch's logits: both sides must compute the same net."""
    z = logits.astype(np.float64)
    return np.array([np.mean(logsumexp(z, axis=1) - z[np.arange(len(z)), labels])])


class KdbenchInference:
    """The harness's inference phase of the teacher: eval_phase as a cell runs it
    (one warm-up batch, then EVAL_REPEATS timed batches of the eval batch)."""

    def __init__(self, bench: Bench, batch: int) -> None:
        data, b = bench.prepared.data, bench.backend
        self.bench, self.batch, self.labels = bench, batch, data.y_test[:batch]
        self.test = b.put_dataset(data.x_test, data.y_test)
        self.arch = bench.prepared.loaded.teacher_arch
        self.settle(None)  # compiles

    def settle(self, warm: Any) -> None:
        self.timed(None)

    def timed(self, block: Any) -> Timing:
        b = self.bench.backend
        c0, t0 = time.process_time(), time.perf_counter()
        eval_phase(self.bench.cell, self.bench.teacher, self.arch, self.test, self.batch)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        logits = b.to_numpy(
            b.predict(self.bench.teacher, self.test, np.arange(self.batch, dtype=np.int32))
        )
        return Timing(wall, cpu, batch_loss(logits, self.labels))


class ReferenceInference:
    """The reference's inference loop over the same batch, as many times."""

    def __init__(self, bench: Bench, module: ModuleType, batch: int, precision: str) -> None:
        p = bench.prepared
        self.module, self.labels = module, p.data.y_test[:batch]
        self.run = module.setup_inference(
            p.data.x_test, p.loaded.teacher_arch, p.teacher_weights, precision=precision
        )
        self.idx = np.arange(batch, dtype=np.int32)
        self.settle(None)  # compiles

    def settle(self, warm: Any) -> None:
        self.module.infer(self.run, self.idx, 1)

    def timed(self, block: Any) -> Timing:
        c0, t0 = time.process_time(), time.perf_counter()
        logits = self.module.infer(self.run, self.idx, 1 + EVAL_REPEATS)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return Timing(wall, cpu, batch_loss(logits, self.labels))


def training_sides(
    bench: Bench, module: ModuleType, phase: str, steps: int, precision: str, block_epochs: int
) -> tuple[Callable[[], dict[str, Any]], list[BatchPlan]]:
    """Fresh sides for one repeat (each compiles anew), and the timed blocks."""
    inputs = phase_inputs(bench, phase)
    epochs = max(1, round(steps / inputs.plan.steps_per_epoch))
    epochs = min(epochs, inputs.plan.epochs - 1)  # epoch 0's start is the warm-up
    warm, _ = split_plan(inputs.plan, bench.cell.warmup, epochs)  # timed blocks: cut below
    # Timed blocks of block_epochs epochs each: a cell pays train_phase's fixed
    # cost (its record: about 1 ms) once per phase, a block once per block.
    k = max(1, min(block_epochs, epochs))
    blocks = [
        BatchPlan(inputs.plan.indices[1 + e : 1 + e + k]) for e in range(0, epochs - k + 1, k)
    ]

    def sides() -> dict[str, Any]:
        made = {
            "kdbench": KdbenchSide(bench, inputs, warm),
            "reference": ReferenceSide(bench, inputs, module, warm, precision),
        }
        # The side set up first ran its first steps before the other side's
        # set-up; its next step ran slow (TensorFlow, resnet-speed: 0.4 s
        # against 0.08, every repeat), a cost of the tool, not of either side.
        # Both take the warm-up steps once more, in lock step, untimed.
        for side in made.values():
            side.settle(warm)
        return made

    return sides, blocks


def inference_sides(
    bench: Bench, module: ModuleType, steps: int, precision: str
) -> tuple[Callable[[], dict[str, Any]], list[BatchPlan]]:
    """Fresh sides for one repeat, and the blocks: each one eval_phase's batches."""
    batch = min(bench.prepared.spec.measure.eval_batch_size, len(bench.prepared.data.y_test))
    rows = np.broadcast_to(np.arange(batch), (1, 1 + EVAL_REPEATS, batch))
    blocks = [BatchPlan(np.array(rows))] * max(1, round(steps / (1 + EVAL_REPEATS)))

    def sides() -> dict[str, Any]:
        made = {
            "kdbench": KdbenchInference(bench, batch),
            "reference": ReferenceInference(bench, module, batch, precision),
        }
        for side in made.values():  # as training_sides does
            side.settle(None)
        return made

    return sides, blocks


def measure(
    backend: str,
    spec: str,
    repeats: int,
    steps: int,
    threads: int,
    phase: str = "distill",
    precision: str = "float32",
    block_epochs: int = 1,
) -> dict[str, Any]:
    """Interleaved kdbench and reference blocks of one phase in this process; the figures."""
    started = time.perf_counter()
    module = reference_module(backend)
    bench = prepare(backend, spec=spec, settings=Settings(threads=threads, precision=precision))
    if phase == INFERENCE:
        make_sides, blocks = inference_sides(bench, module, steps, precision)
    else:
        make_sides, blocks = training_sides(bench, module, phase, steps, precision, block_epochs)
    pairs: list[tuple[Timing, Timing]] = []
    for r in range(repeats):
        sides = make_sides()
        for k, block in enumerate(blocks):
            swap = (r * len(blocks) + k) % 2
            order = ("reference", "kdbench") if swap else ("kdbench", "reference")
            got = {side: sides[side].timed(block) for side in order}
            pairs.append((got["kdbench"], got["reference"]))
    figures = summarise(backend, bench, pairs, blocks, time.perf_counter() - started)
    figures["phase"] = phase
    figures["precision"] = precision
    figures["memory_format"] = bench.backend.environment().as_dict().get("memory_format", "-")
    return figures


def run_child(
    backend: str, spec: str, phase: str, precision: str, args: argparse.Namespace
) -> dict[str, Any]:
    failed = {"backend": backend, "spec": spec, "phase": phase, "precision": precision}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", backend, "--specs", spec, "--phases", phase,
               "--precision", precision, "--out", str(out),
               "--repeats", str(args.repeats), "--steps", str(args.steps),
               "--block-epochs", str(args.block_epochs),
               "--threads", str(args.threads)]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {**failed, "error": f"timed out ({CHILD_TIMEOUT_S} s)"}
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {**failed, "error": tail[0][:300]}
        return json.loads(out.read_text())


def table(results: list[dict[str, Any]], threads: int) -> Table:
    out = Table(title=f"kdbench / reference throughput, threads={threads}")
    for header in ("backend", "spec", "phase", "precision", "mode", "memory", "pairs x steps", "kdbench samples/s",
                   "reference samples/s", "ratio", "IQR", "losses agree", f">= {GOAL}"):  # fmt: skip
        out.add_column(header, justify="left" if header in ("backend", "spec") else "right")
    for r in results:
        if "error" in r:
            out.add_row(r["backend"], r["spec"], r["phase"], r["precision"], *["-"] * 8, r["error"])
            continue
        out.add_row(
            r["backend"],
            r["spec"],
            r["phase"],
            r["precision"],
            r["compile_mode"],
            r["memory_format"],
            f"{r['pairs']} x {r['steps_per_block']}",
            f"{r['harness_samples_per_s']:,.0f}",
            f"{r['bare_samples_per_s']:,.0f}",
            f"{r['ratio']:.3f}",
            f"{1 - r['overhead_q3']:.3f} .. {1 - r['overhead_q1']:.3f}",
            f"{r['loss_max_rel_diff']:.0e}",
            "yes" if r["ratio"] >= GOAL else "NO",
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", nargs="+", choices=backends_with_reference())
    p.add_argument("--specs", nargs="+", default=["mnist5k"])
    p.add_argument("--phases", nargs="+", choices=PHASES, default=["distill", "teacher"])
    p.add_argument("--precision", nargs="+", choices=("float32", "bf16"), default=["float32"])
    p.add_argument("--repeats", type=int, default=3, help="rounds, each with fresh state")
    p.add_argument("--steps", type=int, default=216, help="timed steps per round and side")
    p.add_argument(
        "--block-epochs",
        type=int,
        default=1,
        help="epochs per timed block (more for specs with short epochs: a block pays "
        "train_phase's fixed cost once, a cell once per phase)",
    )
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (0: all cores)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        figures = measure(
            args.child, args.specs[0], args.repeats, args.steps, args.threads, args.phases[0],
            args.precision[0], args.block_epochs,
        )  # fmt: skip
        args.out.write_text(json.dumps(figures, default=float))
        return 0
    console = Console(width=None if sys.stdout.isatty() else 200)
    results = []
    for backend in args.backends or backends_with_reference():
        for spec in args.specs:
            for precision in args.precision:
                for phase in args.phases:
                    what = f"{backend}, {spec}, {precision}, {phase}"
                    console.print(f"[dim]{what}: {args.repeats} x {args.steps}[/]")
                    results.append(run_child(backend, spec, phase, precision, args))
    console.print(table(results, args.threads))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
