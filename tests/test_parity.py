"""The three backends compute the same thing, proven against float64 numpy
oracles and against PyTorch, for every architecture, method and optimizer.

The oracle checks hold every backend on its own to float64 numpy (forward,
loss, every gradient, optimizer updates, a whole training trajectory), so a
machine with one framework proves that framework right. The cross-framework
checks against PyTorch run where PyTorch is installed. The backward oracle
is itself checked against finite differences here.

Each check is shown to fail on a deliberately broken backend in
test_parity_perturbed.py.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from conftest import backend, backend_params
from oracles import backward, network
from oracles.losses import distill_loss
from parity_checks import (
    GRAD_TOL,
    METHODS,
    OPTIMIZERS,
    UPDATE_TOL,
    assert_close,
    assert_grads_match_oracle,
    assert_trajectories_agree,
    assert_trajectory_matches_oracle,
    batch,
    check_forward,
    check_loss,
    loss_config,
    oracle_grads,
    oracle_trajectory,
    parity_architectures,
    run_updates,
    trajectory_run,
    weights,
)

from kdbench.architectures import Conv2D, Dense, Flatten, MaxPool, ReLU, resolve
from kdbench.backends.base import is_installed
from kdbench.initial_weights import init_weights
from kdbench.plan import rng_for

ARCHS = parity_architectures()
ALL = backend_params()
# Compared with PyTorch: skipped, with the reason, where PyTorch is absent
# (the oracle checks above them still hold each backend on its own).
OTHERS = [
    pytest.param(
        *param.values,
        marks=[
            *param.marks,
            pytest.mark.torch,
            pytest.mark.skipif(
                not is_installed("pytorch"),
                reason="PyTorch, the cross-framework reference, is not installed "
                "(the float64 oracle checks still cover this backend)",
            ),
        ],
        id=param.id,
    )
    for param in backend_params(exclude=("pytorch",))
]


@cache
def grads_of(name: str, arch: str, method: str) -> dict[str, np.ndarray]:
    return check_loss(backend(name), ARCHS[arch], method)


@cache
def updates_of(name: str, arch: str, optimizer: str) -> list[dict[str, np.ndarray]]:
    return run_updates(backend(name), ARCHS[arch], optimizer)


@cache
def trajectory_run_of(name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return trajectory_run(backend(name), ARCHS["conv-same-stride"])


def trajectory_of(name: str) -> np.ndarray:
    return trajectory_run_of(name)[0]


@cache
def oracle_grads_of(arch: str, method: str) -> dict[str, np.ndarray]:
    return oracle_grads(ARCHS[arch], method)


@cache
def oracle_trajectory_of(arch: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return oracle_trajectory(ARCHS[arch])


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("name", ALL)
def test_forward_matches_float64_numpy(name: str, arch: str) -> None:
    check_forward(backend(name), ARCHS[arch])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("name", ALL)
def test_loss_and_last_layer_grads_match_oracle(name: str, arch: str, method: str) -> None:
    grads_of(name, arch, method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("name", ALL)
def test_every_gradient_matches_float64_backward_oracle(name: str, arch: str, method: str) -> None:
    assert_grads_match_oracle(
        grads_of(name, arch, method), oracle_grads_of(arch, method), f"{arch} {method}"
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("name", OTHERS)
def test_every_gradient_matches_pytorch(name: str, arch: str, method: str) -> None:
    ours, theirs = grads_of(name, arch, method), grads_of("pytorch", arch, method)
    for param in theirs:
        assert_close(ours[param], theirs[param], GRAD_TOL, f"{arch} {method} grad {param}")


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("arch", ["conv-same-stride", "mlp-16"])
@pytest.mark.parametrize("name", ALL)
def test_updates_match_numpy_optimizer(name: str, arch: str, optimizer: str) -> None:
    assert len(updates_of(name, arch, optimizer)) == len(OPTIMIZERS[optimizer][1])


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("arch", ["conv-same-stride", "mlp-16"])
@pytest.mark.parametrize("name", OTHERS)
def test_updates_match_pytorch(name: str, arch: str, optimizer: str) -> None:
    ours, theirs = updates_of(name, arch, optimizer), updates_of("pytorch", arch, optimizer)
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for param in b:
            assert_close(a[param], b[param], UPDATE_TOL, f"{optimizer} step {step} {param}")


@pytest.mark.parametrize("name", ALL)
def test_trajectory_starts_at_the_oracle_loss(name: str) -> None:
    arch = ARCHS["conv-same-stride"]
    rng = np.random.default_rng(1)
    # The first step of trajectory() sees these weights; recompute its batch.
    from kdbench.plan import make_plan, rng_for

    x = rng.normal(size=(128, *arch.input_shape)).astype(np.float32)
    y = rng.integers(0, arch.classes, size=128).astype(np.int32)
    first = make_plan(128, 32, 7, rng_for(0, "parity-plan")).indices[0, 0]
    config = loss_config("soft")
    teacher_w = weights(arch, "teacher", scale=2.0)
    expected = distill_loss(
        "soft",
        network.forward(arch, weights(arch), x[first]),
        y[first],
        network.forward(arch, teacher_w, x[first]),
        config.temperature,
        config.alpha,
    )
    assert_close(trajectory_of(name)[:1], np.array([expected]), 1e-5, "step-0 loss")


@pytest.mark.parametrize("name", ALL)
def test_trajectory_matches_float64_oracle_at_every_step(name: str) -> None:
    losses, final = trajectory_run_of(name)
    expected_losses, expected_final = oracle_trajectory_of("conv-same-stride")
    assert_trajectory_matches_oracle(losses, final, expected_losses, expected_final, name)


@pytest.mark.parametrize("name", OTHERS)
def test_trajectory_matches_pytorch_at_every_step(name: str) -> None:
    assert_trajectories_agree(trajectory_of(name), trajectory_of("pytorch"), name)


def test_parity_batches_are_not_degenerate() -> None:
    """Random inputs and labels, several classes present, so checks bite."""
    x, y = batch(ARCHS["mlp-16"])
    assert x.std() > 0.5 and len(set(y.tolist())) > 3


# The backward oracle against central finite differences of the float64
# forward pass and loss. Small nets that reach every branch of backward():
# 'same' padding, stride 2 with rows and columns no window covers, a max-pool
# that crops, several channels, a non-square input (H and W cannot be swapped
# unnoticed), flatten, ReLU and dense layers.
FD_ARCHS = {
    "conv-same-pool-stride": resolve(
        None,
        [
            Conv2D(filters=3, kernel=3, padding="same"),
            ReLU(),
            MaxPool(size=2),
            Conv2D(filters=4, kernel=2, stride=2),
            ReLU(),
            Flatten(),
            Dense(units=5),
            ReLU(),
            Dense(units=3),
        ],
        (11, 11, 2),
        3,
    ),
    "conv-stride-nonsquare": resolve(
        None,
        [
            Conv2D(filters=3, kernel=3, stride=2),
            ReLU(),
            Conv2D(filters=2, kernel=3, padding="same"),
            ReLU(),
            MaxPool(size=2),
            Flatten(),
            Dense(units=4),
        ],
        (10, 8, 2),
        4,
    ),
    "mlp": resolve(None, [Flatten(), Dense(units=6), ReLU(), Dense(units=3)], (2, 3, 2), 3),
}
FD_STEP = 1e-6
FD_TOL = 1e-7


def _fd_case(arch_name: str) -> tuple:
    arch = FD_ARCHS[arch_name]
    rng = np.random.default_rng(7)
    w = {k: v.astype(np.float64) for k, v in init_weights(arch, rng_for(3, "fd")).items()}
    for name in w:
        if name.endswith(".bias"):  # nonzero biases, so every term of the gradient shows
            w[name] = rng.normal(0.0, 0.1, size=w[name].shape)
    x = rng.normal(size=(5, *arch.input_shape))
    y = rng.integers(0, arch.classes, size=5)
    teacher = 3.0 * rng.normal(size=(5, arch.classes))
    return arch, w, x, y, teacher


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch_name", list(FD_ARCHS))
def test_backward_oracle_matches_finite_differences(arch_name: str, method: str) -> None:
    arch, w, x, y, teacher = _fd_case(arch_name)
    config = loss_config(method)

    def loss_at(params: dict[str, np.ndarray]) -> float:
        logits = network.forward(arch, params, x)
        return distill_loss(method, logits, y, teacher, config.temperature, config.alpha)

    loss, grads = backward.loss_and_grads(
        arch, w, x, y, method, teacher, config.temperature, config.alpha
    )
    assert loss == pytest.approx(loss_at(w), rel=1e-12)
    assert list(grads) == list(arch.param_shapes())
    for name, grad in grads.items():
        assert grad.shape == w[name].shape, name
        numeric = np.zeros_like(grad)
        for i in np.ndindex(grad.shape):
            plus, minus = dict(w), dict(w)
            plus[name], minus[name] = w[name].copy(), w[name].copy()
            plus[name][i] += FD_STEP
            minus[name][i] -= FD_STEP
            numeric[i] = (loss_at(plus) - loss_at(minus)) / (2 * FD_STEP)
        assert np.abs(numeric).max() > 1e-4, f"{name}: a zero gradient proves nothing"
        assert_close(grad, numeric, FD_TOL, f"{arch_name} {method} oracle grad {name}")


def test_oracle_trajectory_is_the_oracle_steps() -> None:
    """The trajectory oracle's first step is the forward/loss oracle on the
    first batch, and its first update is one SGD step with the oracle gradient."""
    arch = ARCHS["conv-same-stride"]
    losses, _ = oracle_trajectory_of("conv-same-stride")
    from parity_checks import trajectory_case

    case = trajectory_case(arch)
    xb, yb = case.x[case.indices[0]], case.y[case.indices[0]]
    teacher = network.forward(arch, case.teacher, xb)
    config = case.loss
    first = distill_loss("soft", network.forward(arch, case.student, xb), yb, teacher, 4.0, 0.7)
    assert losses[0] == pytest.approx(first, rel=1e-12)
    assert (config.temperature, config.alpha) == (4.0, 0.7)
    _, grads = backward.loss_and_grads(arch, case.student, xb, yb, "soft", teacher, 4.0, 0.7)
    stepped = {k: case.student[k] - case.lrs[0] * grads[k] for k in grads}
    xb1, yb1 = case.x[case.indices[1]], case.y[case.indices[1]]
    second = distill_loss(
        "soft",
        network.forward(arch, stepped, xb1),
        yb1,
        network.forward(arch, case.teacher, xb1),
        4.0,
        0.7,
    )
    assert losses[1] == pytest.approx(second, rel=1e-12)
    assert len(set(np.round(losses, 6))) == len(losses), "the trajectory does not move"
