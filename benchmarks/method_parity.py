"""The method parity table: worst errors per method and backend.

    .venv/bin/python benchmarks/method_parity.py [--backends pytorch jax tensorflow]

Runs the cases of tests/method_checks.py (the ones tests/test_methods_parity.py
asserts on) and prints, instead of pass or fail, how far each backend is from
the float64 oracle and from PyTorch: the loss and the worst gradient of one
batch (connectors included), then the worst per-step loss and the worst final
weight of a 20-step trajectory with a changing lr and warm-up factor. The
tolerances the tests hold them to: loss 1e-5, gradients and trajectories 1e-4.
Each backend runs in its own process (one framework per process).
"""

# ruff: noqa: E402 (the imports after the sys.path fix below must stay after it)
from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from per_backend import measure_per_backend
from rich.console import Console
from rich.table import Table


def measure(name: str) -> dict:
    """Every case's errors for one backend, and its raw results for PyTorch's comparison."""
    import method_checks as mc
    from oracles import methods as oracle
    from parity_checks import rel_err, weights

    from kdbench.backends.base import Settings, get_backend

    backend = get_backend(name)
    backend.setup(Settings(threads=2))
    out: dict = {}
    for case_name, case in mc.CASES.items():
        row: dict = {}
        if not case.offline:  # a table of logits: its trajectory is what counts
            w = weights(case.student)
            x, y = mc.method_batch(case.student)
            model = backend.build(case.student, w)
            teacher = mc.backend_teacher(backend, case)
            loss, grads = backend.loss_and_grads(
                model, x, y, case.loss, teacher, dict(case.connectors), 0.5
            )
            want_loss, want = oracle.loss_and_grads(
                case.student, w, x, y, case.loss, mc.oracle_teacher(case), case.connectors, 0.5
            )
            row["loss"] = abs(loss - want_loss) / abs(want_loss)
            row["grad"] = max(rel_err(grads[k], want[k]) for k in want)
            row["grads"] = {k: v.tolist() for k, v in grads.items()}
        losses, final = mc.method_trajectory(backend, case)
        want_losses, want_final = mc.oracle_method_trajectory(case)
        row["traj_loss"] = float(np.max(np.abs(losses - want_losses) / np.abs(want_losses)))
        row["traj_weights"] = max(rel_err(final[k], want_final[k]) for k in want_final)
        row["losses"] = losses.tolist()
        row["final"] = {k: v.tolist() for k, v in final.items()}
        out[case_name] = row
    return out


def versus(ours: dict, ref: dict) -> tuple[float | None, float]:
    from parity_checks import rel_err

    grad = None
    if "grads" in ours:
        grad = max(
            rel_err(np.array(ours["grads"][k]), np.array(ref["grads"][k])) for k in ref["grads"]
        )
    a, b = np.array(ours["losses"]), np.array(ref["losses"])
    traj = max(
        float(np.max(np.abs(a - b) / np.abs(b))),
        max(rel_err(np.array(ours["final"][k]), np.array(ref["final"][k])) for k in ref["final"]),
    )
    return grad, traj


def main() -> None:
    results = measure_per_backend(__file__, measure, __doc__.splitlines()[0])
    if results is None:
        return
    table = Table(title="method parity: worst relative errors (loss 1e-5, the rest 1e-4 allowed)")
    for col in ("method case", "backend", "loss", "grad", "20-step loss", "20-step weights"):
        table.add_column(col, justify="left" if col in ("method case", "backend") else "right")
    table.add_column("vs PyTorch: grad / 20 steps", justify="right")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1e}"

    for case in next(iter(results.values())):
        for name, rows in results.items():
            row = rows[case]
            vs = "-"
            if name != "pytorch" and "pytorch" in results:
                grad, traj = versus(row, results["pytorch"][case])
                vs = f"{fmt(grad)} / {fmt(traj)}"
            table.add_row(
                case,
                name,
                fmt(row.get("loss")),
                fmt(row.get("grad")),
                fmt(row["traj_loss"]),
                fmt(row["traj_weights"]),
                vs,
            )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
