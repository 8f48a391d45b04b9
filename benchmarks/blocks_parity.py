"""The batch norm / residual / padding / augmentation parity table.

    .venv/bin/python benchmarks/blocks_parity.py [--backends pytorch jax tensorflow]

Runs the nets of tests/blocks_checks.py (a ResNet stage with a strided,
padded projection shortcut and a pre-activation block; a VGG stage with conv
biases before batch norm) and prints how far each backend is from the
float64 oracle: inference logits with running statistics, the training-mode
loss and worst gradient, the running statistics and parameters after 20 SGD
steps, the augmented pixels, and the padding trap (TensorFlow's 'SAME' at
stride 2 against the explicit symmetric padding, on the oracle). The tests
hold them to: logits and loss 1e-5, gradients and weights 1e-4, running
statistics 1e-5, pixels exactly. Each backend runs in its own process.
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


def _err(a: np.ndarray, b: np.ndarray, floor: float = 0.0) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max()) / max(float(np.abs(b).max()), floor, 1e-30)


def measure(name: str) -> dict:
    import blocks_checks as bc
    from oracles import backward, network
    from oracles.augment import augment_batch

    from kdbench.backends.base import Augment, LossConfig, Settings, get_backend
    from kdbench.plan import make_plan, rng_for, with_crops

    backend = get_backend(name)
    backend.setup(Settings(threads=2))
    out: dict = {}
    for net_name, arch in bc.block_nets().items():
        w = bc.trained_weights(arch)
        x, y = bc.data(arch)
        row: dict = {}
        row["logits"] = _err(
            backend.forward(backend.build(arch, w), x), network.forward(arch, w, x)
        )
        xb, yb = x[:16], y[:16]
        loss, grads = backend.loss_and_grads(backend.build(arch, w), xb, yb, LossConfig("none"))
        want_loss, want = backward.loss_and_grads(arch, w, xb, yb, "none")
        row["loss"] = abs(loss - want_loss) / abs(want_loss)
        row["grad"] = max(bc.floored_errors(grads, want, list(want)).values())
        x64, y64 = bc.data(arch, n=64)
        plan, lrs = bc.plan_for(64)
        got = bc.backend_run(backend, arch, w, x64, y64, plan, lrs)
        ref = bc.oracle_run(arch, w, x64, y64, plan, lrs)
        row["stats"] = max(_err(got[k], ref[k]) for k in arch.state_shapes())
        row["weights"] = max(bc.floored_errors(got, ref, list(arch.param_shapes())).values())
        row["final"] = {k: v.tolist() for k, v in got.items()}
        out[net_name] = row
    aug = Augment(pad=4, flip=True, fill=(-1.9, -1.9, -1.7))
    x, y = bc.data(bc.block_nets()["vgg-block"], n=64)
    plan = with_crops(make_plan(64, 16, 2, rng_for(0, "p")), 4, True, rng_for(0, "a"))
    handle = backend.put_dataset(x, y)
    mismatched = 0
    for epoch in range(2):
        for step in range(4):
            idx, crops = plan.indices[epoch, step], plan.crops[epoch, step]
            got = backend.augmented_batch(handle, idx, aug, crops)
            mismatched += int(np.sum(got != augment_batch(x[idx], aug, crops)))
    out["augment_mismatched_pixels"] = mismatched
    return out


def padding_trap() -> float:
    """How far TF's 'SAME' at stride 2 (pads 0 before, 1 after) is from one zero per side."""
    from oracles import network

    rng = np.random.default_rng(0)
    x, k = rng.normal(size=(4, 8, 8, 3)), rng.normal(size=(3, 3, 3, 6))
    symmetric = network.conv2d(x, k, 0.0, 2, 1)
    same = network.conv2d(np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))), k, 0.0, 2, 0)
    return _err(same, symmetric)


def main() -> None:
    import blocks_checks as bc

    results = measure_per_backend(__file__, measure, __doc__.splitlines()[0])
    if results is None:
        return
    table = Table(title="batch norm / residual / padding parity: worst relative errors vs float64")
    cols = ("net", "backend", "logits (eval)", "loss (train)", "grad", "20-step running stats")
    for col in (*cols, "20-step weights", "vs PyTorch 20 steps", "augmented pixels off"):
        table.add_column(col, justify="left" if col in ("net", "backend") else "right")
    for net in ("resnet-block", "vgg-block"):
        for name, rows in results.items():
            r = rows[net]
            vs = "-"
            if name != "pytorch" and "pytorch" in results:
                ref = results["pytorch"][net]["final"]
                final = {k: np.array(v) for k, v in r["final"].items()}
                errors = bc.floored_errors(
                    final, {k: np.array(v) for k, v in ref.items()}, list(ref)
                )
                vs = f"{max(errors.values()):.1e}"
            table.add_row(
                net,
                name,
                *(f"{r[c]:.1e}" for c in ("logits", "loss", "grad", "stats", "weights")),
                vs,
                str(rows["augment_mismatched_pixels"]),
            )
    Console(width=160).print(table)
    print(
        f"padding trap: TF 'SAME' at stride 2 vs one zero per side differ by {padding_trap():.2f} "
        "(relative), which the explicit padding avoids"
    )


if __name__ == "__main__":
    main()
