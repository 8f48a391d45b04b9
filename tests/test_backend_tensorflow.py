"""TensorFlow-specific duties: layouts, a frozen teacher, one trace per phase,
every compile mode, torch's optimizer conventions, counters and flags.

Cross-framework parity (forward, loss, gradients, updates, trajectory) lives
in test_parity.py; the tests here that use PyTorch compare the compile modes
that suite does not cover.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import backend
from oracles import network
from oracles.losses import distill_loss
from oracles.optimizers import ReferenceOptimizer
from parity_checks import (
    TRAJECTORY_TOL,
    assert_close,
    assert_trajectories_agree,
    batch,
    parity_architectures,
    trajectory,
    weights,
)

from kdbench.architectures import Dense, Dropout, Flatten, ReLU, resolve
from kdbench.backends.base import LossConfig, Settings, is_installed

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tensorflow
ARCHS = parity_architectures()
SGD = {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}
ADAM = {"name": "adam", "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
MODES = ("default", "compiled", "eager")
MODE_NAMES = {"default": "tf.function", "compiled": "tf.function+xla", "eager": "eager"}


@pytest.fixture
def tfb():
    return backend("tensorflow")


def backend_in_mode(mode: str):
    """A second backend object in another compile mode (the process-wide TF
    flags set by the shared backend stay as they are)."""
    from kdbench.backends.tensorflow.backend import TensorFlowBackend

    if mode == "compiled":
        try:
            tf.function(lambda v: v * 2.0, jit_compile=True)(tf.constant(1.0))
        except Exception as exc:  # noqa: BLE001 - any XLA failure means "not here"
            pytest.skip(f"XLA is not available here: {exc}")
    b = TensorFlowBackend()
    b.setup(Settings(compile=mode, threads=2))
    return b


def dropout_mlp(rate: float = 0.5):
    layers = [Flatten(), Dense(units=32), ReLU(), Dropout(rate=rate), Dense(units=10)]
    return resolve(None, layers, (8, 8, 1), 10)


def test_importing_the_package_does_not_import_tensorflow() -> None:
    code = "import sys, kdbench.backends.tensorflow; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_weights_round_trip_in_neutral_layouts(tfb) -> None:
    arch = ARCHS["conv-same-stride"]
    w = weights(arch)
    model = tfb.build(arch, w)
    back = tfb.get_weights(model)
    assert list(back) == list(arch.param_shapes())
    for name in w:
        np.testing.assert_array_equal(back[name], w[name])
        assert back[name].dtype == np.float32


def test_forward_needs_no_transpose_and_ignores_dropout(tfb) -> None:
    arch = resolve("cnn-small", None, (28, 28, 1), 10)  # has dropout
    w = weights(arch)
    x, _ = batch(arch, n=8)
    assert_close(tfb.forward(tfb.build(arch, w), x), network.forward(arch, w, x), 1e-5, "fwd")


def test_one_trace_per_phase_whatever_the_lr(tfb) -> None:
    arch = ARCHS["mlp-16"]
    x, y = batch(arch, n=64)
    data = tfb.put_dataset(x, y)
    state = tfb.init_train(tfb.build(arch, weights(arch)), SGD, LossConfig("none"))
    rng = np.random.default_rng(0)
    for step in range(12):
        lr = [0.1, np.float64(0.05), np.float32(0.01)][step % 3] / (step + 1)
        idx = rng.permutation(64)[:16].astype(np.int32)
        state, loss = tfb.train_step(state, data, idx, lr)
    tfb.sync(loss)
    assert state.traces == 1
    assert state.step.experimental_get_tracing_count() == 1
    # Another batch size is another signature: one more trace, then reused.
    for _ in range(3):
        state, loss = tfb.train_step(state, data, np.arange(8, dtype=np.int32), 0.01)
    assert state.traces == 2 and np.isfinite(tfb.to_numpy(loss))


def test_predict_reuses_one_trace_for_ragged_batches_and_splits(tfb) -> None:
    arch = ARCHS["mlp-16"]
    w = weights(arch)
    model = tfb.build(arch, w)
    x, y = batch(arch, n=40)
    train, test = tfb.put_dataset(x, y), tfb.put_dataset(x[:25], y[:25])
    for data, idx in ((train, np.arange(16)), (train, np.arange(16, 40)), (test, np.arange(7))):
        out = tfb.to_numpy(tfb.predict(model, data, idx.astype(np.int32)))
        expected = network.forward(arch, w, x[idx])
        assert_close(out, expected, 1e-5, "predict")
    assert model.predict.experimental_get_tracing_count() == 1


def test_teacher_is_frozen_and_runs_without_dropout(tfb) -> None:
    arch = dropout_mlp(rate=0.9)  # with dropout on, the teacher's logits would be far off
    student_arch = resolve(
        None, [Flatten(), Dense(units=16), ReLU(), Dense(units=10)], (8, 8, 1), 10
    )
    x, y = batch(arch, n=32)
    teacher_w = weights(arch, "teacher", scale=2.0)
    student_w = weights(student_arch)
    teacher = tfb.build(arch, teacher_w, seed=1)
    data = tfb.put_dataset(x, y)
    config = LossConfig("soft", 4.0, 0.7)
    state = tfb.init_train(tfb.build(student_arch, student_w), SGD, config, teacher)
    idx = np.arange(32, dtype=np.int32)
    first = tfb.to_numpy(tfb.predict(teacher, data, idx))
    state, loss = tfb.train_step(state, data, idx, 0.1)
    expected = distill_loss(
        "soft",
        network.forward(student_arch, student_w, x),
        y,
        network.forward(arch, teacher_w, x),
        config.temperature,
        config.alpha,
    )
    assert_close(tfb.to_numpy(loss), np.array(expected, np.float64), 1e-5, "step-0 loss")
    for _ in range(3):
        state, _ = tfb.train_step(state, data, idx, 0.1)
    after = tfb.get_weights(teacher)
    for name in teacher_w:
        np.testing.assert_array_equal(after[name], teacher_w[name])
    np.testing.assert_array_equal(tfb.to_numpy(tfb.predict(teacher, data, idx)), first)
    assert state.traces == 1


def test_dropout_trains_from_the_build_seed(tfb) -> None:
    arch = dropout_mlp()
    x, y = batch(arch, n=32)
    w = weights(arch)
    data = tfb.put_dataset(x, y)

    def losses(seed: int) -> np.ndarray:
        state = tfb.init_train(tfb.build(arch, w, seed=seed), SGD, LossConfig("none"))
        out = []
        for step in range(4):
            state, loss = tfb.train_step(
                state, data, np.arange(step, step + 16, dtype=np.int32), 0.1
            )
            out.append(loss)
        return tfb.to_numpy(out)

    np.testing.assert_array_equal(losses(3), losses(3))
    assert not np.allclose(losses(3), losses(4))
    no_dropout = distill_loss("none", network.forward(arch, w, x[:16]), y[:16])
    assert abs(losses(3)[0] - no_dropout) > 1e-4  # dropout really is on in training


@pytest.mark.parametrize(
    "config",
    [
        {"name": "sgd", "momentum": 0.0, "nesterov": False, "weight_decay": 0.05},
        {"name": "sgd", "momentum": 0.5, "nesterov": True, "weight_decay": 0.01},
        # beta1 < 0.5 takes the other branch of torch's lerp formula.
        {"name": "adam", "beta1": 0.3, "beta2": 0.9, "eps": 1e-2, "weight_decay": 0.02},
    ],
    ids=["sgd-plain-wd", "sgd-nesterov-wd", "adam-small-beta1"],
)
def test_optimizers_follow_torch_conventions(tfb, config) -> None:
    """Against the numpy oracle fed with this backend's gradients, with lr
    changing every step (where Keras's SGD would drift) and a large eps
    (where Keras's Adam would)."""
    arch = ARCHS["mlp-16"]
    x, y = batch(arch)
    data = tfb.put_dataset(x, y)
    idx = np.arange(len(y), dtype=np.int32)
    current = weights(arch)
    state = tfb.init_train(tfb.build(arch, current), config, LossConfig("none"))
    oracle = ReferenceOptimizer(config)
    for lr in (0.1, 0.02, 0.07, 0.01):
        _, grads = tfb.loss_and_grads(tfb.build(arch, current), x, y, LossConfig("none"))
        expected = oracle.step(current, grads, lr)
        state, _ = tfb.train_step(state, data, idx, lr)
        current = tfb.get_weights(tfb.trained_model(state))
        for name in current:
            assert_close(current[name], expected[name], 1e-5, f"{config['name']} {name}")


def test_soft_loss_is_not_clipped_where_the_teacher_is_confident() -> None:
    from kdbench.backends.tensorflow.losses import distill_loss as tf_loss

    rng = np.random.default_rng(0)
    student = rng.normal(size=(8, 10)).astype(np.float32) * 3
    teacher = rng.normal(size=(8, 10)).astype(np.float32) * 200  # probs far below 1e-7
    labels = rng.integers(0, 10, size=8).astype(np.int32)
    for method in ("none", "soft", "hard"):
        config = LossConfig(method, 2.0, 0.6)
        got = float(
            tf_loss(config, tf.constant(student), tf.constant(labels), tf.constant(teacher))
        )
        expected = distill_loss(method, student, labels, teacher, 2.0, 0.6)
        assert np.isfinite(got)
        assert abs(got - expected) <= 1e-5 * abs(expected), method


@pytest.mark.parametrize("mode", MODES)
def test_every_compile_mode_trains_and_records_itself(mode: str) -> None:
    b = backend_in_mode(mode)
    assert b.environment().compile_mode == MODE_NAMES[mode]
    arch = ARCHS["conv-same-stride"]
    x, y = batch(arch, n=32)
    data = b.put_dataset(x, y)
    model = b.build(arch, weights(arch))
    state = b.init_train(model, ADAM, LossConfig("none"))
    out = []
    for step in range(4):
        state, loss = b.train_step(state, data, np.arange(step, step + 16, dtype=np.int32), 1e-3)
        out.append(loss)
    b.sync()
    losses = b.to_numpy(out)
    assert losses.shape == (4,) and np.all(np.isfinite(losses))
    assert state.traces == (4 if mode == "eager" else 1)
    logits = b.to_numpy(b.predict(b.trained_model(state), data, np.arange(5, dtype=np.int32)))
    assert logits.shape == (5, 10)


@pytest.mark.skipif(not is_installed("pytorch"), reason="pytorch is not installed")
@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_other_compile_modes_follow_the_pytorch_trajectory(mode: str) -> None:
    """test_parity.py checks the default mode; XLA and eager run other kernels."""
    theirs = trajectory(backend("pytorch"), ARCHS["conv-same-stride"])
    ours = trajectory(backend_in_mode(mode), ARCHS["conv-same-stride"])
    assert TRAJECTORY_TOL <= 1e-4
    assert_trajectories_agree(ours, theirs, f"tensorflow {mode}")


def test_environment_has_the_pytorch_keys_and_the_flags_in_force(tfb) -> None:
    env = tfb.environment().as_dict()
    keys = {
        "framework", "framework_version", "device", "device_kind", "cuda_version",
        "cudnn_version", "compile_mode", "intra_op_threads", "inter_op_threads",
        "tf32_matmul", "tf32_conv", "deterministic", "memory_counter", "memory_format",
        "compute_dtype", "compilation_cache",
    }  # fmt: skip
    assert set(env) == keys
    if is_installed("pytorch"):
        assert set(env) == set(backend("pytorch").environment().as_dict())
    assert env["framework"] == "tensorflow" and env["framework_version"] == tf.__version__
    assert env["compile_mode"] == "tf.function"
    assert env["intra_op_threads"] == env["inter_op_threads"] == 2
    assert env["tf32_matmul"] is False and env["tf32_conv"] is False
    assert env["compute_dtype"] == "float32" and env["compilation_cache"] == "off"
    if not tf.config.list_physical_devices("GPU"):
        assert env["device_kind"] == "cpu" and env["cuda_version"] is None
        assert env["memory_counter"] is None
        tfb.reset_peak_memory()
        assert tfb.peak_memory() is None


def test_to_numpy_stacks_handles_and_sync_needs_no_handle(tfb) -> None:
    handles = [tf.constant(1.5), tf.constant(2.5)]
    np.testing.assert_array_equal(tfb.to_numpy(handles), np.array([1.5, 2.5], np.float32))
    np.testing.assert_array_equal(tfb.to_numpy(tuple(handles)), np.array([1.5, 2.5], np.float32))
    tfb.sync()
    tfb.sync(handles[0])


def test_gpu_request_without_a_gpu_fails_clearly() -> None:
    from kdbench.backends.tensorflow.backend import TensorFlowBackend

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="sees no GPU"):
        TensorFlowBackend().setup(Settings(device="gpu", threads=2))


@pytest.mark.slow
def test_setup_applies_threads_tf32_and_determinism_in_a_fresh_process() -> None:
    """Thread pools and op determinism are process-wide and one-way in TF, so
    this runs where it cannot change the flags of the other tests."""
    code = textwrap.dedent(
        """
        import json
        from kdbench.backends.base import Settings
        from kdbench.backends.tensorflow.backend import TensorFlowBackend
        b = TensorFlowBackend()
        b.setup(Settings(threads=1, precision="tf32", deterministic=True, compile="compiled"))
        print(json.dumps(b.environment().as_dict()))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    env = json.loads(out.stdout.strip().splitlines()[-1])
    assert env["intra_op_threads"] == env["inter_op_threads"] == 1
    assert env["tf32_matmul"] is True and env["tf32_conv"] is True
    assert env["deterministic"] is True
    assert env["compile_mode"] == "tf.function+xla"
