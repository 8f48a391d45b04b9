"""The three backends compute the same thing, proven against float64 numpy
oracles and against PyTorch, for every architecture, method and optimizer.

Each check is shown to fail on a deliberately broken backend in
test_parity_perturbed.py.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from conftest import backend, backend_params
from oracles import network
from oracles.losses import distill_loss
from parity_checks import (
    GRAD_TOL,
    METHODS,
    OPTIMIZERS,
    UPDATE_TOL,
    assert_close,
    assert_trajectories_agree,
    batch,
    check_forward,
    check_loss,
    loss_config,
    parity_architectures,
    run_updates,
    trajectory,
    weights,
)

ARCHS = parity_architectures()
ALL = backend_params()
OTHERS = backend_params(exclude=("pytorch",))


@cache
def grads_of(name: str, arch: str, method: str) -> dict[str, np.ndarray]:
    return check_loss(backend(name), ARCHS[arch], method)


@cache
def updates_of(name: str, arch: str, optimizer: str) -> list[dict[str, np.ndarray]]:
    return run_updates(backend(name), ARCHS[arch], optimizer)


@cache
def trajectory_of(name: str) -> np.ndarray:
    return trajectory(backend(name), ARCHS["conv-same-stride"])


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


@pytest.mark.parametrize("name", OTHERS)
def test_trajectory_matches_pytorch_at_every_step(name: str) -> None:
    assert_trajectories_agree(trajectory_of(name), trajectory_of("pytorch"), name)


def test_parity_batches_are_not_degenerate() -> None:
    """Random inputs and labels, several classes present, so checks bite."""
    x, y = batch(ARCHS["mlp-16"])
    assert x.std() > 0.5 and len(set(y.tolist())) > 3
