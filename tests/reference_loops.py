"""What the reference-loop tests share: loading benchmarks/reference/ modules,
the default spec's cell, and the losses of kdbench's backend and of a reference
over the same steps (test_reference_loops_<backend>.py, one file a framework)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "reference"


def load(name: str) -> ModuleType:
    """A module of benchmarks/reference/ by path (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"reference_under_test_{name}", REFERENCE / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def mnist5k_cell() -> Any:
    from kdbench.harness.prepare import prepare_cell
    from kdbench.spec import load_spec

    return prepare_cell(load_spec("mnist5k"), seed=0)


def kdbench_losses(
    backend_name: str, cell: Any, steps: int, optimizer: dict | None = None
) -> np.ndarray:
    """The distillation's first steps through the backend's train_step."""
    from kdbench.backends.base import Settings, get_backend
    from kdbench.plan import learning_rates

    backend = get_backend(backend_name)
    backend.setup(Settings(threads=1))
    data = backend.put_dataset(cell.data.x_train, cell.data.y_train)
    teacher = backend.build(cell.loaded.teacher_arch, cell.teacher_weights, seed=cell.teacher_seed)
    student = backend.build(cell.loaded.student_arch, cell.student_weights, seed=cell.student_seed)
    state = backend.init_train(student, optimizer or cell.student_optimizer, cell.loss, teacher)
    lrs = learning_rates(cell.spec.student, cell.student_plan)[:steps]
    losses = []
    for idx, lr in zip(cell.student_plan.indices[0, :steps], lrs, strict=True):
        state, loss = backend.train_step(state, data, idx, float(lr))
        losses.append(float(backend.to_numpy(loss)))
    return np.array(losses)


def reference_losses(
    module: ModuleType, cell: Any, steps: int, optimizer: dict | None = None
) -> np.ndarray:
    """The same steps through a reference loop."""
    from kdbench.plan import learning_rates

    run = module.setup(
        cell.data.x_train, cell.data.y_train,
        cell.loaded.teacher_arch, cell.teacher_weights,
        cell.loaded.student_arch, cell.student_weights,
        optimizer or cell.student_optimizer, cell.loss, seed=cell.student_seed,
    )  # fmt: skip
    lrs = learning_rates(cell.spec.student, cell.student_plan)[:steps]
    return module.train(run, cell.student_plan.indices[0, :steps], lrs)


def assert_same_steps(backend_name: str, cell: Any, steps: int = 20) -> None:
    """The reference takes the backend's steps: same losses, and they fall."""
    ours = kdbench_losses(backend_name, cell, steps)
    theirs = reference_losses(load(backend_name), cell, steps)
    assert theirs.dtype == np.float64 and theirs.shape == (steps,)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5)
    assert ours[-1] < ours[0]  # it learns: the steps are real updates


def kdbench_logits(backend_name: str, cell: Any, rows: int) -> np.ndarray:
    """The teacher's logits of the first test images through the backend's predict."""
    from kdbench.backends.base import Settings, get_backend

    backend = get_backend(backend_name)
    backend.setup(Settings(threads=1))
    test = backend.put_dataset(cell.data.x_test, cell.data.y_test)
    teacher = backend.build(cell.loaded.teacher_arch, cell.teacher_weights, seed=cell.teacher_seed)
    out = backend.predict(teacher, test, np.arange(rows, dtype=np.int32))
    return backend.to_numpy(out).astype(np.float64)


def reference_logits(module: ModuleType, cell: Any, rows: int) -> np.ndarray:
    """The same images through a reference's inference loop."""
    run = module.setup_inference(cell.data.x_test, cell.loaded.teacher_arch, cell.teacher_weights)
    return module.infer(run, np.arange(rows, dtype=np.int32), 2)


def assert_same_inference(backend_name: str, cell: Any, rows: int = 64) -> None:
    """The reference's inference runs the backend's network: same logits."""
    ours = kdbench_logits(backend_name, cell, rows)
    theirs = reference_logits(load(backend_name), cell, rows)
    assert theirs.dtype == np.float64 and theirs.shape == (rows, 10)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())


def ratio_figures(backend_name: str, phase: str) -> dict[str, Any]:
    """ratio.measure on one short round, with what every backend's figures must show.

    A training block is 54 steps; an inference block is eval_phase's 11 batches."""
    steps = 11 if phase == "teacher-inference" else 54
    figures = load("ratio").measure(
        backend_name, "mnist5k", repeats=1, steps=steps, threads=1, phase=phase
    )
    assert figures["phase"] == phase
    assert figures["pairs"] == 1 and figures["steps_per_block"] == steps
    assert figures["loss_max_rel_diff"] < 1e-5  # the pair took the same steps
    assert 0.2 < figures["ratio"] < 5.0  # a throughput ratio, not a placeholder
    return figures


# A CIFAR-style ResNet pair at test size: 8x8x3 synthetic images, resnet14 ->
# resnet8 at full width (projection shortcuts on 16 and 32 channels), SGD with
# momentum and weight decay as in the ResNet specs; a step takes milliseconds.
TINY_RESNET_SPEC = """
name = "tiny-resnet"
[data]
dataset = "synthetic"
samples = 400
shape = [8, 8, 3]
classes = 10
val_fraction = 0.1
test_fraction = 0.1
[teacher]
arch = "resnet14"
epochs = 2
batch_size = 32
optimizer = { name = "sgd", lr = 0.05, momentum = 0.9, weight_decay = 5e-4 }
schedule = { name = "cosine" }
[student]
arch = "resnet8"
epochs = 2
batch_size = 32
optimizer = { name = "sgd", lr = 0.05, momentum = 0.9, weight_decay = 5e-4 }
schedule = { name = "cosine" }
[distill]
method = "soft"
temperature = 4.0
alpha = 0.9
[measure]
warmup_steps = 2
seeds = 1
"""


def tiny_resnet_cell() -> Any:
    """The cell of TINY_RESNET_SPEC, seed 0."""
    import tempfile

    from kdbench.harness.prepare import prepare_cell
    from kdbench.spec import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny-resnet.toml"
        path.write_text(TINY_RESNET_SPEC)
        return prepare_cell(load_spec(str(path)), seed=0)


def phase_inputs(cell: Any, phase: str) -> dict[str, Any]:
    """What a phase trains, as ratio.py's phase_inputs has it: "distill" (the
    student from the frozen initial teacher, the spec's loss) or "teacher" (the
    teacher on labels alone, method "none")."""
    from kdbench.backends.base import LossConfig

    if phase == "teacher":
        return {"arch": cell.loaded.teacher_arch, "weights": cell.teacher_weights,
                "seed": cell.teacher_seed, "optimizer": cell.teacher_optimizer,
                "loss": LossConfig("none"), "plan": cell.teacher_plan, "net": cell.spec.teacher,
                "frozen": (None, None)}  # fmt: skip
    return {"arch": cell.loaded.student_arch, "weights": cell.student_weights,
            "seed": cell.student_seed, "optimizer": cell.student_optimizer, "loss": cell.loss,
            "plan": cell.student_plan, "net": cell.spec.student,
            "frozen": (cell.loaded.teacher_arch, cell.teacher_weights)}  # fmt: skip


def kdbench_phase_losses(
    backend_name: str, cell: Any, phase: str, steps: int, precision: str = "float32"
) -> np.ndarray:
    """A phase's first steps through the backend's train_step at a precision."""
    from kdbench.backends.base import Settings, get_backend
    from kdbench.plan import learning_rates

    p = phase_inputs(cell, phase)
    backend = get_backend(backend_name)
    backend.setup(Settings(threads=1, precision=precision))
    data = backend.put_dataset(cell.data.x_train, cell.data.y_train)
    teacher = None
    if p["frozen"][0] is not None:
        teacher = backend.build(*p["frozen"], seed=cell.teacher_seed)
    model = backend.build(p["arch"], p["weights"], seed=p["seed"])
    state = backend.init_train(model, p["optimizer"], p["loss"], teacher)
    lrs = learning_rates(p["net"], p["plan"])[:steps]
    losses = []
    for idx, lr in zip(p["plan"].indices[0, :steps], lrs, strict=True):
        state, loss = backend.train_step(state, data, idx, float(lr))
        losses.append(float(backend.to_numpy(loss)))
    return np.array(losses)


def reference_phase_losses(
    module: ModuleType, cell: Any, phase: str, steps: int, precision: str = "float32"
) -> np.ndarray:
    """The same steps through a reference loop."""
    from kdbench.plan import learning_rates

    p = phase_inputs(cell, phase)
    run = module.setup(
        cell.data.x_train, cell.data.y_train, *p["frozen"], p["arch"], p["weights"],
        p["optimizer"], p["loss"], seed=p["seed"], precision=precision,
    )  # fmt: skip
    lrs = learning_rates(p["net"], p["plan"])[:steps]
    return module.train(run, p["plan"].indices[0, :steps], lrs)
