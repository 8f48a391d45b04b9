"""kdbench against the expert-written reference loop: throughput ratio per backend and spec.

    .venv/bin/python benchmarks/reference/ratio.py [--backends pytorch] [--specs mnist5k]
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
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table

from kdbench.settings import Settings
from kdbench.tools.overhead.measure import (
    Bench,
    HarnessSide,
    Timing,
    bare_lrs,
    prepare,
    split_plan,
    summarise,
)

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


class ReferenceSide:
    """The reference loop: fresh networks from the same weights, then the loop over each block."""

    def __init__(self, bench: Bench, module: ModuleType, warm: Any) -> None:
        p = bench.prepared
        self.bench, self.module = bench, module
        self.run = module.setup(
            p.data.x_train,
            p.data.y_train,
            p.loaded.teacher_arch,
            p.teacher_weights,
            p.loaded.student_arch,
            p.student_weights,
            p.student_optimizer,
            p.loss,
            seed=p.student_seed,
        )
        module.train(self.run, warm.indices, bare_lrs(bench, warm))

    def timed(self, plan: Any) -> Timing:
        lrs = bare_lrs(self.bench, plan)
        c0, t0 = time.process_time(), time.perf_counter()
        losses = self.module.train(self.run, plan.indices, lrs)  # numpy: the device is done
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return Timing(wall, cpu, losses.reshape(plan.epochs, -1).mean(axis=1))


def measure(backend: str, spec: str, repeats: int, steps: int, threads: int) -> dict[str, Any]:
    """Interleaved kdbench and reference blocks in this process; the figures."""
    started = time.perf_counter()
    module = reference_module(backend)
    bench = prepare(backend, spec=spec, settings=Settings(threads=threads))
    epochs = max(1, round(steps / bench.plan.steps_per_epoch))
    warm, blocks = split_plan(bench.plan, bench.cell.warmup, epochs)
    pairs: list[tuple[Timing, Timing]] = []
    for r in range(repeats):
        sides = {
            "kdbench": HarnessSide(bench, warm),
            "reference": ReferenceSide(bench, module, warm),
        }
        for k, block in enumerate(blocks):
            swap = (r * len(blocks) + k) % 2
            order = ("reference", "kdbench") if swap else ("kdbench", "reference")
            got = {side: sides[side].timed(block) for side in order}
            pairs.append((got["kdbench"], got["reference"]))
    figures = summarise(backend, bench, pairs, blocks, time.perf_counter() - started)
    figures["memory_format"] = bench.backend.environment().as_dict().get("memory_format", "-")
    return figures


def run_child(backend: str, spec: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", backend, "--specs", spec, "--out", str(out),
               "--repeats", str(args.repeats), "--steps", str(args.steps),
               "--threads", str(args.threads)]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"backend": backend, "spec": spec, "error": f"timed out ({CHILD_TIMEOUT_S} s)"}
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"backend": backend, "spec": spec, "error": tail[0][:300]}
        return json.loads(out.read_text())


def table(results: list[dict[str, Any]], threads: int) -> Table:
    out = Table(title=f"kdbench / reference throughput, distill phase, threads={threads}")
    for header in ("backend", "spec", "mode", "memory", "pairs x steps", "kdbench samples/s",
                   "reference samples/s", "ratio", "IQR", "losses agree", f">= {GOAL}"):  # fmt: skip
        out.add_column(header, justify="left" if header in ("backend", "spec") else "right")
    for r in results:
        if "error" in r:
            out.add_row(r["backend"], r["spec"], *["-"] * 8, r["error"])
            continue
        out.add_row(
            r["backend"],
            r["spec"],
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
    p.add_argument("--repeats", type=int, default=3, help="rounds, each with fresh state")
    p.add_argument("--steps", type=int, default=216, help="timed steps per round and side")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (0: all cores)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        figures = measure(args.child, args.specs[0], args.repeats, args.steps, args.threads)
        args.out.write_text(json.dumps(figures, default=float))
        return 0
    console = Console(width=None if sys.stdout.isatty() else 200)
    results = []
    for backend in args.backends or backends_with_reference():
        for spec in args.specs:
            console.print(f"[dim]{backend} on {spec}: {args.repeats} x {args.steps} steps ...[/]")
            results.append(run_child(backend, spec, args))
    console.print(table(results, args.threads))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
