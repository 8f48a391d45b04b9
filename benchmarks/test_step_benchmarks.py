"""pytest-benchmark timings of one distillation train step and one eval step
per installed backend and mode, on the speed workload of the compile and
precision tables (mnist5k) and on a ResNet (resnet-speed: resnet20 -> resnet8
on 32x32x3 images, batch 64).

Modes: float32 in each framework's usual way, bf16 mixed precision, and each
framework's compiler (`compile = "compiled"`: torch.compile, TF's XLA, jax.jit).
The ResNet runs in float32 only, with fewer rounds: its step takes a few
hundred milliseconds on a CPU (and bf16 ten times that in PyTorch on AVX2).

The distillation step is the teacher's forward, the student's forward and
backward, and the update. Warm-up rounds (compilation) are excluded and every
timed call ends with the backend's device synchronisation. Regression
workflow: `pytest benchmarks/ --benchmark-autosave` on the base commit, then
`pytest benchmarks/ --benchmark-compare --benchmark-compare-fail=median:10%`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from kdbench.backends.base import Settings, backend_names, get_backend, is_installed
from kdbench.harness.prepare import prepare_cell
from kdbench.spec import load_spec

# spec -> (modes, rounds, warm-up rounds)
WORKLOADS = {
    "mnist5k": (("float32", "bf16", "compiled"), 100, 10),
    "resnet-speed": (("float32",), 20, 3),
}


# (precision, compile) of each mode.
MODES = {
    "float32": ("float32", "default"),
    "bf16": ("bf16", "default"),
    "compiled": ("float32", "compiled"),
}


def _params() -> list[Any]:
    return [
        pytest.param(
            (n, spec, mode),
            marks=pytest.mark.skipif(not is_installed(n), reason=f"{n} not installed"),
            id=f"{n}-{spec}-{mode}",
        )
        for spec, (modes, _, _) in WORKLOADS.items()
        for n in backend_names()
        for mode in modes
    ]


@pytest.fixture(scope="module", params=_params())
def cell(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A spec's cell as the harness prepares it (seed 0), on one backend and mode."""
    name, spec, mode = request.param
    precision, compile_mode = MODES[mode]
    p = prepare_cell(load_spec(spec), seed=0)
    backend = get_backend(name)
    backend.setup(Settings(threads=os.cpu_count() or 1, precision=precision, compile=compile_mode))
    train = backend.put_dataset(p.data.x_train, p.data.y_train)
    teacher = backend.build(p.loaded.teacher_arch, p.teacher_weights, seed=p.teacher_seed)
    student = backend.build(p.loaded.student_arch, p.student_weights, seed=p.student_seed)
    state = backend.init_train(student, p.student_optimizer, p.loss, teacher)
    _, rounds, warmup = WORKLOADS[spec]
    return {
        "spec": spec,
        "rounds": rounds,
        "warmup": warmup,
        "mode": mode,
        "backend": backend,
        "train": train,
        "teacher": teacher,
        "state": state,
        "indices": p.student_plan.indices[0],
        "eval_idx": np.arange(p.spec.measure.eval_batch_size, dtype=np.int32),
    }


def test_distill_train_step(benchmark: Any, cell: dict[str, Any]) -> None:
    backend, batches = cell["backend"], cell["indices"]
    box = {"state": cell["state"], "i": 0}

    def step() -> None:
        i = box["i"] % len(batches)
        box["state"], loss = backend.train_step(box["state"], cell["train"], batches[i], 1e-4)
        backend.sync(box["state"], loss)
        box["i"] += 1

    benchmark.extra_info.update(backend=backend.name, spec=cell["spec"], mode=cell["mode"])
    benchmark.extra_info.update(backend.environment().as_dict())
    benchmark.pedantic(step, rounds=cell["rounds"], iterations=1, warmup_rounds=cell["warmup"])


def test_teacher_eval_step(benchmark: Any, cell: dict[str, Any]) -> None:
    backend = cell["backend"]

    def step() -> None:
        backend.sync(backend.predict(cell["teacher"], cell["train"], cell["eval_idx"]))

    benchmark.extra_info.update(backend=backend.name, spec=cell["spec"], mode=cell["mode"])
    rounds, warmup = cell["rounds"] // 2, max(1, cell["warmup"] // 2)
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=warmup)
