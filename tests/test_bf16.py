"""precision = "bf16": bfloat16 compute on float32 weights, float32 softmax and loss, in all three.

Held to the float64 oracles at bfloat16's tolerances (its 8-bit mantissa rounds
each value by up to 2^-9 = 0.2%), and each check shown to fail where it should:
float32 compute passes for bf16 only if the check cannot tell them apart (it
must not), a 10% wrong temperature must fail the loss check, and bfloat16
master weights (the updates rounded away) must fail the trajectory check.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from conftest import backend_params
from oracles import backward, network
from oracles.losses import distill_loss
from oracles.optimizers import ReferenceOptimizer
from parity_checks import (
    batch,
    loss_config,
    oracle_grads,
    parity_architectures,
    rel_err,
    trajectory_case,
    weights,
)

from kdbench.backends.base import Backend, Settings, get_backend

ARCHS = parity_architectures()
NETS = ("mlp-64", "cnn-small")
ALL = backend_params()
# Errors are relative in the Frobenius norm, ||a - b|| / ||b|| per tensor: under
# bfloat16 a ReLU or a max-pool near its threshold can decide the other way, a
# discrete change of a few elements that an elementwise maximum would blow up.
# Measured worst over the three backends on this CPU (PyTorch, TensorFlow, JAX):
# loss 8.5e-3 (TensorFlow's mlp-64; 1.4e-3 the others), a gradient 1.4e-2 on
# mlp-64 and 7.7e-2 on cnn-small (alike in all three: the max-pool and ReLU
# decisions), the small-step trajectory's step loss 8.8e-3 and weight change
# 3.5e-2; bfloat16 master weights put that change off by 0.81.
BF16_LOSS_TOL = 2e-2
BF16_GRAD_TOL = 0.15
BF16_TRAJECTORY_TOL = 3e-2
BF16_DELTA_TOL = 0.1
# float32 compute is at least this close to the oracle (measured <= 2e-7):
# a "bf16" backend that close has not applied bfloat16.
FLOAT32_LEVEL = 1e-4
# The trajectory's learning rates scaled down so that each update is about
# 1e-3 of a weight: float32 master weights keep it, bfloat16 ones (a spacing
# of 2^-8 of the value) would round most of it away.
LR_SCALE = 0.01


def norm_err(actual: np.ndarray, expected: np.ndarray) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


@cache
def bf16_backend(name: str) -> Backend:
    b = get_backend(name)
    b.setup(Settings(threads=2, precision="bf16"))
    return b


@cache
def float32_backend(name: str) -> Backend:
    b = get_backend(name)
    b.setup(Settings(threads=2))
    return b


def loss_and_grads(b: Backend, arch_name: str, method: str = "soft"):
    arch = ARCHS[arch_name]
    x, y = batch(arch)
    teacher = b.build(arch, weights(arch, "teacher", scale=2.0))
    return b.loss_and_grads(b.build(arch, weights(arch)), x, y, loss_config(method), teacher)


def oracle_loss(arch_name: str, method: str = "soft", temperature: float | None = None) -> float:
    arch = ARCHS[arch_name]
    x, y = batch(arch)
    config = loss_config(method)
    s = network.forward(arch, weights(arch), x)
    t = network.forward(arch, weights(arch, "teacher", scale=2.0), x)
    return distill_loss(method, s, y, t, temperature or config.temperature, config.alpha)


def worst_grad_error(grads: dict, expected: dict) -> float:
    assert set(grads) == set(expected)
    return max(norm_err(grads[k], expected[k]) for k in expected)


@pytest.mark.parametrize("arch_name", NETS)
@pytest.mark.parametrize("name", ALL)
def test_bf16_loss_and_every_gradient_match_the_oracle_at_bf16_tolerance(
    name: str, arch_name: str
) -> None:
    loss, grads = loss_and_grads(bf16_backend(name), arch_name)
    expected = oracle_loss(arch_name)
    assert rel_err(np.array(loss), np.array(expected)) <= BF16_LOSS_TOL
    error = worst_grad_error(grads, oracle_grads(ARCHS[arch_name], "soft"))
    assert error <= BF16_GRAD_TOL, f"{name} {arch_name}: gradient error {error:.3g}"
    # bfloat16 is in effect: float32 would be a thousand times closer.
    assert error > FLOAT32_LEVEL, f"{name} {arch_name}: {error:.2g} is float32's accuracy"
    assert all(g.dtype == np.float32 for g in grads.values())


@pytest.mark.parametrize("name", ALL)
def test_float32_compute_fails_the_bf16_in_effect_check(name: str) -> None:
    """The perturbation of the check above: a backend that ignored precision = bf16."""
    _, grads = loss_and_grads(float32_backend(name), "cnn-small")
    assert worst_grad_error(grads, oracle_grads(ARCHS["cnn-small"], "soft")) <= FLOAT32_LEVEL


@pytest.mark.parametrize("name", ALL)
def test_a_ten_percent_wrong_temperature_fails_the_bf16_loss_check(name: str) -> None:
    loss, _ = loss_and_grads(bf16_backend(name), "cnn-small")
    wrong = oracle_loss("cnn-small", temperature=loss_config("soft").temperature * 1.1)
    assert rel_err(np.array(loss), np.array(wrong)) > BF16_LOSS_TOL


@pytest.mark.parametrize("name", ALL)
def test_the_backends_report_bf16_as_applied(name: str) -> None:
    env = bf16_backend(name).environment()
    assert env.compute_dtype == "bfloat16"
    assert float32_backend(name).environment().compute_dtype == "float32"


def weight_change_error(final: dict, expected_final: dict, start: dict) -> float:
    """How far the weights' change over the run is from the oracle's change."""
    return max(norm_err(np.asarray(final[k], np.float64) - start[k], expected_final[k] - start[k])
               for k in start)  # fmt: skip


def small_steps() -> tuple:
    case = trajectory_case(ARCHS["mlp-64"])
    return case, [float(lr) * LR_SCALE for lr in case.lrs]


def run_small_steps(b: Backend) -> tuple[np.ndarray, dict]:
    """The trajectory case through the real train step, at LR_SCALE of its rates."""
    case, lrs = small_steps()
    data = b.put_dataset(case.x, case.y)
    teacher = b.build(case.arch, case.teacher)
    state = b.init_train(b.build(case.arch, case.student), case.optimizer, case.loss, teacher)
    losses = []
    for idx, lr in zip(case.indices, lrs, strict=True):
        state, loss = b.train_step(state, data, idx, lr)
        losses.append(loss)
    b.sync()
    return b.to_numpy(losses).astype(np.float64), b.get_weights(b.trained_model(state))


def oracle_small_steps(master_bf16: bool = False) -> tuple[np.ndarray, dict]:
    """The same steps in float64; master_bf16: weights stored in bfloat16 (the perturbation)."""
    case, lrs = small_steps()
    keep = (
        round_bf16
        if master_bf16
        else (lambda w: {k: np.asarray(v, np.float64) for k, v in w.items()})
    )
    current, opt, losses = keep(case.student), ReferenceOptimizer(case.optimizer), []
    for idx, lr in zip(case.indices, lrs, strict=True):
        t_logits = network.forward(case.arch, case.teacher, case.x[idx])
        loss, grads = backward.loss_and_grads(
            case.arch, current, case.x[idx], case.y[idx], "soft", t_logits,
            case.loss.temperature, case.loss.alpha,
        )  # fmt: skip
        current = keep(opt.step(current, grads, lr))
        losses.append(loss)
    return np.array(losses), current


@cache
def oracle_run() -> tuple[np.ndarray, dict]:
    return oracle_small_steps()


def start_weights() -> dict:
    return {k: np.asarray(v, np.float64) for k, v in small_steps()[0].student.items()}


@pytest.mark.parametrize("name", ALL)
def test_bf16_trains_float32_master_weights_through_the_real_step(name: str) -> None:
    """25 small steps of the real train step: every step's loss at bf16
    tolerance, and the weights' change as the oracle's."""
    losses, final = run_small_steps(bf16_backend(name))
    expected_losses, expected_final = oracle_run()
    steps = np.abs(losses - expected_losses) / np.abs(expected_losses)
    assert steps.max() <= BF16_TRAJECTORY_TOL, f"{name}: step losses off by {steps.max():.3g}"
    error = weight_change_error(final, expected_final, start_weights())
    assert error <= BF16_DELTA_TOL, f"{name}: weight change off by {error:.3g}"


def round_bf16(values: dict) -> dict:
    """Each value rounded to the nearest bfloat16 (ties to even), kept as float64."""
    out = {}
    for k, v in values.items():
        bits = np.asarray(v, np.float32).view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        out[k] = bits.astype(np.uint32).view(np.float32).astype(np.float64)
    return out


def test_bfloat16_master_weights_fail_the_trajectory_check() -> None:
    """The perturbation: the oracle's own steps with its weights stored in bfloat16."""
    _, final = oracle_small_steps(master_bf16=True)
    _, expected_final = oracle_run()
    assert weight_change_error(final, expected_final, start_weights()) > BF16_DELTA_TOL
    assert round_bf16({"w": np.float32([1.0 + 2**-9])})["w"][0] == 1.0  # it does round
    assert round_bf16({"w": np.float32([1.0 + 2**-7])})["w"][0] == 1.0 + 2**-7
