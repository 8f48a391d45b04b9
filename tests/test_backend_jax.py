"""JAX-specific duties: layouts, a frozen teacher, one compile per phase,
the dropout stream, eager mode, the thread knob and the counters.

Numerical parity with numpy and PyTorch is in test_parity.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from conftest import backend
from oracles import network
from oracles.losses import distill_loss
from parity_checks import parity_architectures, weights

from kdbench.architectures import Dense, Dropout, Flatten, ReLU, resolve
from kdbench.backends.base import LossConfig, Settings, is_installed

jax = pytest.importorskip("jax")
pytestmark = pytest.mark.jax
ARCHS = parity_architectures()
SGD = {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}
ADAM = {"name": "adam", "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
# The keys PyTorchBackend.environment() gives; every backend gives at least these.
ENV_KEYS = {
    "framework",
    "framework_version",
    "device",
    "device_kind",
    "cuda_version",
    "cudnn_version",
    "compile_mode",
    "intra_op_threads",
    "inter_op_threads",
    "tf32_matmul",
    "tf32_conv",
    "deterministic",
    "memory_counter",
    "memory_format",
}


@pytest.fixture
def jb():
    return backend("jax")


def _data(n: int = 128, shape: tuple[int, ...] = (28, 28, 1), seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int32)
    return x, y


@contextmanager
def count_compiles() -> Iterator[list[str]]:
    """Every XLA compilation that happens inside the block."""
    from jax._src import monitoring

    events: list[str] = []

    def listener(event: str, duration: float, **kwargs: object) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        monitoring.unregister_event_duration_listener(listener)


def test_weights_round_trip_in_neutral_layouts(jb) -> None:
    arch = ARCHS["conv-same-stride"]
    w = weights(arch)
    back = jb.get_weights(jb.build(arch, w))
    assert set(back) == set(w)
    for name in w:
        np.testing.assert_array_equal(back[name], w[name])


def test_wrong_weights_are_refused(jb) -> None:
    arch = ARCHS["mlp-16"]
    w = weights(arch)
    w["1.kernel"] = w["1.kernel"].T
    with pytest.raises(ValueError, match="do not fit"):
        jb.build(arch, w)


def test_one_compile_per_phase_and_none_in_the_steady_state(jb) -> None:
    arch = ARCHS["mlp-16"]
    x, y = _data()
    data = jb.put_dataset(x, y)
    for phase in range(2):  # a second phase compiles its own step once
        state = jb.init_train(jb.build(arch, weights(arch)), ADAM, LossConfig("none"))
        with count_compiles() as first:
            state, loss = jb.train_step(state, data, np.arange(32, dtype=np.int32), 1e-3)
            jb.sync(loss)
        assert len(first) >= 1, f"phase {phase}: the first step did not compile"
        with count_compiles() as steady:
            for step in range(1, 12):
                idx = np.arange(step, step + 32, dtype=np.int32)
                state, loss = jb.train_step(state, data, idx, 1e-3 / step)  # lr changes
            jb.sync(loss)
        assert steady == [], f"phase {phase}: {len(steady)} compilations after the first step"
        assert state.traces == [1]


def test_state_is_donated_to_the_next_step(jb) -> None:
    arch = ARCHS["mlp-16"]
    x, y = _data()
    data = jb.put_dataset(x, y)
    state = jb.init_train(jb.build(arch, weights(arch)), SGD, LossConfig("none"))
    state, _ = jb.train_step(state, data, np.arange(32, dtype=np.int32), 0.1)
    before = state.carry
    state, loss = jb.train_step(state, data, np.arange(32, dtype=np.int32), 0.1)
    jb.sync(loss)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(before.params))
    assert state.model.params is state.carry.params  # the model handle stays current
    assert int(state.carry.step) == 2


def test_teacher_is_frozen_and_runs_without_dropout(jb) -> None:
    teacher_arch = resolve("cnn-small", None, (28, 28, 1), 10)  # has dropout
    student_arch = ARCHS["mlp-16"]  # has none, so the step-0 loss is exact
    x, y = _data(64)
    teacher_w = weights(teacher_arch, "teacher")
    student_w = weights(student_arch)
    teacher = jb.build(teacher_arch, teacher_w, seed=3)
    data = jb.put_dataset(x, y)
    config = LossConfig("soft", 4.0, 0.9)
    state = jb.init_train(jb.build(student_arch, student_w), SGD, config, teacher)
    assert jax.tree.structure(state.carry.params) != jax.tree.structure(teacher.params)
    idx = np.arange(32, dtype=np.int32)
    first = jb.to_numpy(jb.predict(teacher, data, idx))
    losses = []
    for _ in range(3):
        state, loss = jb.train_step(state, data, idx, 0.1)
        losses.append(loss)
    # Step 0 saw the teacher's inference logits (no dropout mask).
    expected = distill_loss(
        "soft",
        network.forward(student_arch, student_w, x[idx]),
        y[idx],
        network.forward(teacher_arch, teacher_w, x[idx]),
        4.0,
        0.9,
    )
    assert abs(jb.to_numpy(losses)[0] - expected) <= 1e-5 * abs(expected)
    after = jb.get_weights(teacher)
    for name in teacher_w:
        np.testing.assert_array_equal(after[name], teacher_w[name])
    np.testing.assert_array_equal(jb.to_numpy(jb.predict(teacher, data, idx)), first)


def _dropout_losses(jb, seed: int, steps: int = 3) -> np.ndarray:
    layers = [Flatten(), Dense(units=64), ReLU(), Dropout(rate=0.5), Dense(units=10)]
    arch = resolve(None, layers, (28, 28, 1), 10)
    x, y = _data(64)
    data = jb.put_dataset(x, y)
    state = jb.init_train(jb.build(arch, weights(arch), seed=seed), SGD, LossConfig("none"))
    idx = np.arange(32, dtype=np.int32)
    out = []
    for _ in range(steps):
        state, loss = jb.train_step(state, data, idx, 0.0)  # lr 0: only the mask changes
        out.append(loss)
    return jb.to_numpy(out)


def test_dropout_stream_comes_from_the_seed_and_changes_every_step(jb) -> None:
    a, again, other = _dropout_losses(jb, 1), _dropout_losses(jb, 1), _dropout_losses(jb, 2)
    np.testing.assert_array_equal(a, again)
    assert len(set(a.tolist())) == len(a), f"the same mask twice: {a}"
    assert not np.array_equal(a, other)


def test_inference_ignores_dropout(jb) -> None:
    arch = resolve("mlp-1200x2", None, (28, 28, 1), 10)
    w = weights(arch)
    x, _ = _data(8)
    np.testing.assert_allclose(
        jb.forward(jb.build(arch, w, seed=5), x), network.forward(arch, w, x), rtol=0, atol=1e-4
    )


def test_predict_takes_a_smaller_last_batch(jb) -> None:
    arch = ARCHS["conv-same-stride"]
    x, y = _data(37, arch.input_shape)
    model = jb.build(arch, weights(arch))
    data = jb.put_dataset(x, y)
    parts = [
        jb.predict(model, data, np.arange(s, min(s + 16, 37), dtype=np.int32)) for s in (0, 16, 32)
    ]
    jb.sync(parts[-1])
    logits = np.concatenate([jb.to_numpy(p) for p in parts])
    np.testing.assert_allclose(logits, jb.forward(model, x), rtol=1e-6, atol=1e-6)


def test_to_numpy_stacks_a_list_of_losses(jb) -> None:
    arch = ARCHS["linear"]
    x, y = _data()
    data = jb.put_dataset(x, y)
    state = jb.init_train(jb.build(arch, weights(arch)), SGD, LossConfig("none"))
    handles = []
    for step in range(4):
        state, loss = jb.train_step(state, data, np.arange(step, step + 8, dtype=np.int32), 0.01)
        handles.append(loss)
    out = jb.to_numpy(handles)
    assert out.shape == (4,) and out.dtype == np.float32 and np.all(np.isfinite(out))


@pytest.mark.slow
def test_eager_mode_trains_like_jit() -> None:
    from kdbench.backends.jax.backend import JaxBackend

    arch = ARCHS["mlp-16"]
    x, y = _data(64, arch.input_shape)
    teacher_w = weights(arch, "teacher", scale=2.0)
    losses = {}
    for mode in ("eager", "default"):
        b = JaxBackend()
        b.setup(Settings(compile=mode, threads=2))
        data = b.put_dataset(x, y)
        state = b.init_train(
            b.build(arch, weights(arch)),
            ADAM,
            LossConfig("soft", 4.0, 0.7),
            b.build(arch, teacher_w),
        )
        out = []
        for step in range(4):
            state, loss = b.train_step(
                state, data, np.arange(step, step + 32, dtype=np.int32), 1e-3
            )
            out.append(loss)
        losses[mode] = b.to_numpy(out)
        assert b.environment().compile_mode == ("jax.eager" if mode == "eager" else "jax.jit")
        if mode == "eager":
            assert state.traces == [4]  # the Python step ran every time: nothing was jitted
    np.testing.assert_allclose(losses["eager"], losses["default"], rtol=1e-5)


def test_environment_records_the_flags_in_force(jb) -> None:
    env = jb.environment().as_dict()
    assert set(env) >= ENV_KEYS
    assert env["framework"] == "jax" and env["framework_version"] == jax.__version__
    assert {"jaxlib_version", "flax_version", "optax_version"} <= set(env)
    assert env["compile_mode"] == "jax.jit" and env["device_kind"] == "cpu"
    assert env["matmul_precision"] == "highest" and env["tf32_matmul"] is False
    assert env["memory_counter"] is None and jb.peak_memory() is None
    if is_installed("pytorch"):
        assert set(backend("pytorch").environment().as_dict()) <= set(env)


# Run in a fresh process: the thread pool and XLA_FLAGS are fixed when XLA
# creates its CPU client, which this test process has long done.
_FRESH = """
import json, os, sys
from kdbench.backends.base import Settings
from kdbench.backends.jax.backend import JaxBackend
from kdbench.backends.jax.runtime import pool_threads
b = JaxBackend()
b.setup(Settings(threads=int(sys.argv[1]), deterministic=True, precision="tf32"))
import jax.numpy as jnp
(jnp.ones((256, 256)) @ jnp.ones((256, 256))).block_until_ready()
print(json.dumps({"env": b.environment().as_dict(), "counted": pool_threads()}))
"""


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_and_flags_act_when_set_before_the_client(threads: int) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _FRESH, str(threads)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    env = result["env"]
    assert result["counted"] == threads  # XLA's intra-op pool really has that many threads
    assert env["intra_op_threads"] == threads and env["threads_knob"] == f"PJRT_NPROC={threads}"
    assert env["deterministic"] is True and "--xla_gpu_deterministic_ops=true" in env["xla_flags"]
    assert env["matmul_precision"] == "tensorfloat32" and env["tf32_matmul"] is True


def test_gpu_request_without_a_gpu_fails_clearly() -> None:
    from kdbench.backends.jax.backend import JaxBackend

    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no GPU"):
        JaxBackend().setup(Settings(device="gpu", threads=2))


def test_training_steps_are_timed_with_one_in_flight_and_train_the_same(jb, monkeypatch) -> None:
    """JAX keeps one step in flight (kdbench.harness.phases.StepClock): the
    record says so, every step still gets a time, and the steps compute
    exactly what the step-by-step synced loop computes."""
    from kdbench.tools.overhead.measure import harness_run, harness_state, prepare

    assert type(jb).waits_per_handle
    bench = prepare("jax", spec="quick", backend=jb)
    stats = {}
    for in_flight in (True, False):
        monkeypatch.setattr(type(jb), "waits_per_handle", in_flight)
        _, stats[in_flight] = harness_run(bench, harness_state(bench), bench.plan)
    assert stats[True].step_timing == "in_flight" and stats[False].step_timing == "synced"
    assert stats[True].loss_epochs == stats[False].loss_epochs
    assert all(t > 0 for t in stats[True].step_times_s)
    assert stats[True].steps == len(stats[True].step_times_s) == bench.plan.total_steps
