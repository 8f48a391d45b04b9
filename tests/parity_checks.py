"""Parity checks shared by the parity tests and by the tests that perturb a
backend on purpose to prove each check can fail.

Relative error is max|a - b| / max|b| over a whole tensor: elementwise
ratios blow up at values near zero, which every ReLU net has.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from oracles import backward, network
from oracles.losses import distill_loss, distill_loss_grad
from oracles.optimizers import ReferenceOptimizer

from kdbench.architectures import (
    ARCHITECTURES,
    Architecture,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool,
    ReLU,
    resolve,
)
from kdbench.backends.base import Backend, LossConfig
from kdbench.cifar_architectures import CIFAR_ARCHITECTURES
from kdbench.initial_weights import init_weights
from kdbench.plan import make_plan, rng_for

FORWARD_TOL = 1e-5
LOSS_TOL = 1e-5
GRAD_TOL = 1e-4
UPDATE_TOL = 1e-5
TRAJECTORY_TOL = 1e-4  # one float32 backend against another
# A float32 backend against the float64 oracle, per step and for the final
# weights. Measured worst on CPU: 1.6e-7 (losses) and 8.4e-7 (weights) over
# PyTorch, TensorFlow and JAX; the mildest perturbation in
# test_parity_perturbed.py (the lr one step late) is off by 1.4e-2 and 0.2.
ORACLE_TRAJECTORY_TOL = 1e-5
ORACLE_WEIGHTS_TOL = 2e-5
TRAJECTORY_STEPS = 25
TRAJECTORY_SAMPLES = 128
METHODS = ("none", "soft", "hard")


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    return float(np.max(np.abs(actual - expected))) / scale


def assert_close(actual: np.ndarray, expected: np.ndarray, tol: float, what: str) -> None:
    err = rel_err(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def without_dropout(arch: Architecture) -> Architecture:
    layers = tuple(layer for layer in arch.layers if not isinstance(layer, Dropout))
    return dataclasses.replace(arch, layers=layers)


def parity_architectures() -> dict[str, Architecture]:
    """Every built-in architecture without batch norm (dropout removed) plus one that exercises
    'same' padding, stride 2 and several input channels."""
    archs = {
        name: without_dropout(resolve(name, None, (28, 28, 1), 10))
        for name in ARCHITECTURES
        if name not in CIFAR_ARCHITECTURES  # batch norm nets: tests/test_blocks_parity.py
    }
    archs["conv-same-stride"] = resolve(
        None,
        [
            Conv2D(filters=4, kernel=3, padding="same"),
            ReLU(),
            Conv2D(filters=6, kernel=3, stride=2),
            ReLU(),
            MaxPool(size=2),
            Flatten(),
            Dense(units=10),
        ],
        (12, 12, 3),
        10,
    )
    return archs


def batch(arch: Architecture, n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *arch.input_shape)).astype(np.float32)
    y = rng.integers(0, arch.classes, size=n).astype(np.int32)
    return x, y


def weights(arch: Architecture, purpose: str = "student", scale: float = 1.0) -> dict:
    w = init_weights(arch, rng_for(0, purpose))
    return {k: (v * scale).astype(np.float32) for k, v in w.items()}


def loss_config(method: str) -> LossConfig:
    return LossConfig(method=method, temperature=4.0, alpha=0.7)


def check_forward(backend: Backend, arch: Architecture) -> None:
    w = weights(arch)
    x, _ = batch(arch)
    out = backend.forward(backend.build(arch, w), x)
    assert_close(out, network.forward(arch, w, x), FORWARD_TOL, f"{arch.name} logits")


def _teacher(backend: Backend, arch: Architecture):
    tw = weights(arch, "teacher", scale=2.0)
    return backend.build(arch, tw), tw


def check_loss(backend: Backend, arch: Architecture, method: str) -> dict[str, np.ndarray]:
    """Loss vs the numpy oracle and last-layer gradients vs the analytic
    float64 ones; returns all gradients for the cross-backend check."""
    w = weights(arch)
    x, y = batch(arch)
    teacher, tw = _teacher(backend, arch)
    config = loss_config(method)
    loss, grads = backend.loss_and_grads(backend.build(arch, w), x, y, config, teacher)
    s_ref = network.forward(arch, w, x)
    t_ref = network.forward(arch, tw, x)
    expected = distill_loss(method, s_ref, y, t_ref, config.temperature, config.alpha)
    assert_close(np.array(loss), np.array(expected), LOSS_TOL, f"{arch.name} {method} loss")
    g = distill_loss_grad(method, s_ref, y, t_ref, config.temperature, config.alpha)
    last = len(arch.layers) - 1
    hidden = network.forward(arch, w, x, stop=last)
    assert_close(grads[f"{last}.kernel"], hidden.T @ g, GRAD_TOL, f"{arch.name} last kernel grad")
    assert_close(grads[f"{last}.bias"], g.sum(axis=0), GRAD_TOL, f"{arch.name} last bias grad")
    assert set(grads) == set(w), f"gradient names {sorted(grads)} != weight names {sorted(w)}"
    return grads


def oracle_grads(arch: Architecture, method: str) -> dict[str, np.ndarray]:
    """The float64 gradient of every parameter for the batch check_loss uses."""
    w = weights(arch)
    x, y = batch(arch)
    config = loss_config(method)
    t_ref = network.forward(arch, weights(arch, "teacher", scale=2.0), x)
    _, grads = backward.loss_and_grads(
        arch, w, x, y, method, t_ref, config.temperature, config.alpha
    )
    return grads


def assert_grads_match_oracle(
    grads: dict[str, np.ndarray], expected: dict[str, np.ndarray], what: str
) -> None:
    assert set(grads) == set(expected), f"{what}: gradient names {sorted(grads)}"
    for name in expected:
        assert_close(grads[name], expected[name], GRAD_TOL, f"{what} grad {name}")


def check_every_grad(backend: Backend, arch: Architecture, method: str) -> dict[str, np.ndarray]:
    """check_loss, then every parameter's gradient against the float64 backward oracle."""
    grads = check_loss(backend, arch, method)
    assert_grads_match_oracle(grads, oracle_grads(arch, method), f"{arch.name} {method}")
    return grads


OPTIMIZERS = {
    "sgd-momentum": (
        {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 0.01},
        [0.1, 0.05, 0.02],
    ),
    "sgd-nesterov": (
        {"name": "sgd", "momentum": 0.8, "nesterov": True, "weight_decay": 0.0},
        [0.05, 0.1, 0.03],
    ),
    # A large eps makes its placement (sqrt(v_hat) + eps vs Keras's) visible.
    "adam": (
        {"name": "adam", "beta1": 0.9, "beta2": 0.99, "eps": 1e-3, "weight_decay": 0.01},
        [0.01, 0.005, 0.002],
    ),
}


def run_updates(
    backend: Backend, arch: Architecture, optimizer: str
) -> list[dict[str, np.ndarray]]:
    """Three steps with changing lr; weights after each step checked against
    the numpy optimizer fed with this backend's own gradients."""
    config, lrs = OPTIMIZERS[optimizer]
    w = weights(arch)
    x, y = batch(arch)
    data = backend.put_dataset(x, y)
    indices = np.arange(len(y), dtype=np.int32)
    state = backend.init_train(backend.build(arch, w), config, LossConfig("none"))
    oracle = ReferenceOptimizer(config)
    current = w
    history = []
    for step, lr in enumerate(lrs):
        _, grads = backend.loss_and_grads(backend.build(arch, current), x, y, LossConfig("none"))
        expected = oracle.step(current, grads, lr)
        state, _ = backend.train_step(state, data, indices, lr)
        backend.sync()
        current = backend.get_weights(backend.trained_model(state))
        for name in w:
            assert_close(
                current[name], expected[name], UPDATE_TOL, f"{optimizer} step {step} {name}"
            )
        history.append(current)
    return history


@dataclasses.dataclass(frozen=True)
class TrajectoryCase:
    """Everything a trajectory run is given: the same for a backend and the oracle."""

    arch: Architecture
    x: np.ndarray
    y: np.ndarray
    indices: np.ndarray  # (TRAJECTORY_STEPS, batch)
    lrs: np.ndarray  # one per step
    optimizer: dict
    loss: LossConfig
    student: dict
    teacher: dict


def trajectory_case(arch: Architecture, method: str = "soft") -> TrajectoryCase:
    rng = np.random.default_rng(1)
    n = TRAJECTORY_SAMPLES
    x = rng.normal(size=(n, *arch.input_shape)).astype(np.float32)
    y = rng.integers(0, arch.classes, size=n).astype(np.int32)
    plan = make_plan(n, 32, TRAJECTORY_STEPS // 4 + 1, rng_for(0, "parity-plan"))
    indices = plan.indices.reshape(-1, plan.batch_size)[:TRAJECTORY_STEPS]
    lrs = 0.05 * 0.5 * (1 + np.cos(np.pi * np.arange(TRAJECTORY_STEPS) / TRAJECTORY_STEPS))
    return TrajectoryCase(
        arch=arch,
        x=x,
        y=y,
        indices=indices,
        lrs=lrs,
        optimizer={"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
        loss=loss_config(method),
        student=weights(arch),
        teacher=weights(arch, "teacher", scale=2.0),
    )


def trajectory_run(
    backend: Backend, arch: Architecture, method: str = "soft"
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-step losses of TRAJECTORY_STEPS steps through the real train path,
    and the weights after the last step."""
    case = trajectory_case(arch, method)
    data = backend.put_dataset(case.x, case.y)
    teacher = backend.build(arch, case.teacher)
    state = backend.init_train(
        backend.build(arch, case.student), case.optimizer, case.loss, teacher
    )
    losses = []
    for step in range(TRAJECTORY_STEPS):
        state, loss = backend.train_step(state, data, case.indices[step], float(case.lrs[step]))
        losses.append(loss)
    backend.sync()
    final = backend.get_weights(backend.trained_model(state))
    return backend.to_numpy(losses).astype(np.float64), final


def trajectory(backend: Backend, arch: Architecture, method: str = "soft") -> np.ndarray:
    """Per-step losses of TRAJECTORY_STEPS steps through the real train path."""
    return trajectory_run(backend, arch, method)[0]


def oracle_trajectory(
    arch: Architecture, method: str = "soft"
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The same steps as trajectory_run, entirely in float64 numpy."""
    case = trajectory_case(arch, method)
    return backward.train(
        arch,
        case.student,
        case.x,
        case.y,
        list(case.indices),
        list(case.lrs),
        case.optimizer,
        method,
        teacher=(arch, case.teacher),
        temperature=case.loss.temperature,
        alpha=case.loss.alpha,
    )


def assert_trajectories_agree(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.shape == expected.shape == (TRAJECTORY_STEPS,)
    for step, (a, e) in enumerate(zip(actual, expected, strict=True)):
        err = abs(a - e) / abs(e)
        assert err <= TRAJECTORY_TOL, f"{what}: step {step} loss {a} vs {e} (rel {err:.3g})"


def assert_trajectory_matches_oracle(
    losses: np.ndarray,
    final: dict[str, np.ndarray],
    expected_losses: np.ndarray,
    expected_final: dict[str, np.ndarray],
    what: str,
) -> None:
    """A backend's trajectory against the float64 one: every step's loss,
    then every weight after the last step."""
    assert losses.shape == expected_losses.shape == (TRAJECTORY_STEPS,)
    for step, (a, e) in enumerate(zip(losses, expected_losses, strict=True)):
        err = abs(a - e) / abs(e)
        assert err <= ORACLE_TRAJECTORY_TOL, (
            f"{what}: step {step} loss {a} vs float64 oracle {e} (rel {err:.3g})"
        )
    assert set(final) == set(expected_final), f"{what}: weight names {sorted(final)}"
    for name in expected_final:
        assert_close(
            final[name],
            expected_final[name],
            ORACLE_WEIGHTS_TOL,
            f"{what}: weights {name} after step {TRAJECTORY_STEPS - 1}",
        )
