"""PyTorch-specific duties: layouts, a frozen teacher, compile mode, counters."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import backend
from parity_checks import parity_architectures, weights

from kdbench.architectures import resolve
from kdbench.backends.base import LossConfig, Settings

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
ARCHS = parity_architectures()


@pytest.fixture
def pt():
    return backend("pytorch")


def test_weights_round_trip_in_neutral_layouts(pt) -> None:
    arch = ARCHS["conv-same-stride"]
    w = weights(arch)
    back = pt.get_weights(pt.build(arch, w))
    assert set(back) == set(w)
    for name in w:
        np.testing.assert_array_equal(back[name], w[name])


def test_teacher_is_frozen_and_runs_without_dropout(pt) -> None:
    arch = resolve("cnn-small", None, (28, 28, 1), 10)  # has dropout
    x = np.random.default_rng(0).normal(size=(64, 28, 28, 1)).astype(np.float32)
    y = np.zeros(64, dtype=np.int32)
    teacher_w = weights(arch, "teacher")
    teacher = pt.build(arch, teacher_w)
    student = pt.build(arch, weights(arch))
    data = pt.put_dataset(x, y)
    state = pt.init_train(
        student,
        {"name": "sgd", "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
        LossConfig("soft", 4.0, 0.9),
        teacher,
    )
    idx = np.arange(32, dtype=np.int32)
    first = pt.to_numpy(pt.predict(teacher, data, idx))
    for _ in range(3):
        state, _ = pt.train_step(state, data, idx, 0.1)
    assert not teacher.module.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.module.parameters())
    after = pt.get_weights(teacher)
    for name in teacher_w:
        np.testing.assert_array_equal(after[name], teacher_w[name])
    np.testing.assert_array_equal(pt.to_numpy(pt.predict(teacher, data, idx)), first)
    assert state.model.module.training  # the student trains with dropout on


def test_environment_records_the_flags_in_force(pt) -> None:
    env = pt.environment().as_dict()
    assert env["framework"] == "torch" and env["framework_version"] == torch.__version__
    assert env["compile_mode"] == "eager" and env["device_kind"] == "cpu"
    assert env["intra_op_threads"] == 2 and env["tf32_matmul"] is False
    assert env["memory_counter"] is None and pt.peak_memory() is None
    assert env["memory_format"] == "channels_last"


@pytest.mark.slow
def test_compiled_mode_trains_like_eager(tmp_path, monkeypatch) -> None:
    """...and compiles from scratch: in a fresh inductor cache directory of its
    own, its FX graph cache left empty (with the caches, a second run's compiled
    warm-up was 1.9 s against 14.9 s cold)."""
    from kdbench.backends.pytorch.backend import PyTorchBackend
    from kdbench.backends.pytorch.runtime import CACHE_ENV, FRESH_PREFIX_PATH

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "inductor"))  # a cache already in use

    arch = ARCHS["mlp-16"]
    x = np.random.default_rng(0).normal(size=(64, 28, 28, 1)).astype(np.float32)
    y = (np.arange(64) % 10).astype(np.int32)
    losses = {}
    for mode in ("eager", "compiled"):
        b = PyTorchBackend()
        b.setup(Settings(compile=mode, threads=2))
        data = b.put_dataset(x, y)
        state = b.init_train(
            b.build(arch, weights(arch)),
            {"name": "adam", "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
            LossConfig("none"),
        )
        out = []
        for step in range(5):
            state, loss = b.train_step(
                state, data, np.arange(step, step + 32, dtype=np.int32), 1e-3
            )
            out.append(loss)
        losses[mode] = b.to_numpy(out)
        assert b.environment().compile_mode == ("torch.compile" if mode == "compiled" else "eager")
        assert b.environment().as_dict()["compilation_cache"] == "off"
    np.testing.assert_allclose(losses["compiled"], losses["eager"], rtol=1e-5)
    fresh = Path(os.environ[CACHE_ENV])
    assert str(fresh).startswith(FRESH_PREFIX_PATH) and fresh.is_dir()
    assert any(p.is_file() for p in fresh.rglob("*"))  # inductor compiled, there
    assert not [p for p in fresh.rglob("fxgraph/**/*") if p.is_file()]
    assert not [p for p in (tmp_path / "inductor").rglob("*") if p.is_file()]  # nothing there


def test_gpu_request_without_a_gpu_fails_clearly() -> None:
    from kdbench.backends.pytorch.backend import PyTorchBackend

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        PyTorchBackend().setup(Settings(device="gpu", threads=2))


def test_relu_overwrites_only_fresh_tensors_never_the_input(pt) -> None:
    """In place after a conv, dense or pool (no backward needs their outputs);
    after a flatten (a view of the batch) or dropout (eval: the same tensor) not."""
    from kdbench.architectures import Dense, Flatten, ReLU
    from kdbench.backends.pytorch.model import build_module

    arch = resolve(None, [Flatten(), ReLU(), Dense(units=8), ReLU(), Dense(units=3)], (2, 2, 1), 3)
    relus = [m.inplace for m in build_module(arch) if isinstance(m, torch.nn.ReLU)]
    assert relus == [False, True]
    x = np.random.default_rng(0).normal(size=(5, 2, 2, 1)).astype(np.float32)
    before = x.copy()
    model = pt.build(arch, weights(arch))
    pt.forward(model, x)
    pt.loss_and_grads(model, x, np.zeros(5, dtype=np.int32), LossConfig("none"))
    np.testing.assert_array_equal(x, before)
    teacher = [m for m in build_module(resolve("cnn-small", None, (28, 28, 1), 10))]
    after = [
        type(teacher[i - 1]).__name__ for i, m in enumerate(teacher) if getattr(m, "inplace", False)
    ]
    assert after and set(after) <= {"Conv2d", "Linear", "MaxPool2d"}
