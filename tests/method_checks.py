"""Parity checks of the distillation methods, shared by the parity tests and by
the tests that break a backend on purpose to prove each check can fail.

Each case is a teacher, a student, a method with explicit weights and pairs,
on tiny batches: a gradient check (loss and every parameter's gradient,
connectors included, against the float64 oracle) and a trajectory check
(TRAJECTORY_STEPS real train steps with a changing lr and warm-up factor,
every step's loss and the final student and connector weights).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from oracles import methods as oracle
from parity_checks import assert_close, weights

from kdbench.architectures import Architecture, resolve
from kdbench.backends.base import Backend, LossConfig
from kdbench.methods import METHODS, connector_shapes, init_connectors, resolve_pairs
from kdbench.plan import make_plan, rng_for

LOSS_TOL = 1e-5
GRAD_TOL = 1e-4
TRAJECTORY_TOL = 1e-4  # per-step loss and final weights, against float64 and against PyTorch
TRAJECTORY_STEPS = 20
# 16x16 images keep the suite fast and every tap meaningful: cnn-small's and
# cnn-tiny's blocks are 7x7 and 2x2 there (13x13 and 5x5 at 28x28).
INPUT = (16, 16, 1)


@dataclasses.dataclass(frozen=True)
class MethodCase:
    name: str
    teacher: Architecture
    student: Architecture
    loss: LossConfig
    connectors: dict[str, np.ndarray]
    data_seed: int = 1
    teachers: int = 1  # an ensemble's members: the teacher net with other weights

    @property
    def offline(self) -> bool:
        return self.loss.method == "offline"


def _case(name, method, teacher, student, pairs, weights_, data_seed=1, ensemble=()) -> MethodCase:
    t, s = (resolve(name, None, INPUT, 10) for name in (teacher, student))
    resolved = resolve_pairs(method, pairs, t, s)
    shapes = connector_shapes(method, resolved, t, s)
    assert set(weights_) <= set(METHODS[method].terms), weights_
    loss = LossConfig(
        method=method,
        temperature=4.0,
        weights=tuple(weights_.items()),
        pairs=tuple((p.teacher, p.student) for p in resolved),
        ensemble_weights=tuple(ensemble),
    )
    connectors = init_connectors(shapes, rng_for(0, "connector-init"))
    return MethodCase(name, t, s, loss, connectors, data_seed, max(1, len(ensemble)))


# Weights are chosen so that every term moves the loss by a visible amount.
CASES = {
    c.name: c
    for c in (
        _case("soft", "soft", "cnn-small", "mlp-32", [], {"ce": 0.3, "kd": 0.7}),
        _case("hard", "hard", "cnn-small", "mlp-32", [], {"ce": 0.3, "hard": 0.7}),
        _case("dkd", "dkd", "cnn-small", "mlp-32", [], {"ce": 1.0, "tckd": 1.0, "nckd": 8.0}),
        _case(
            "fitnet-conv",
            "fitnet",
            "cnn-small",
            "cnn-tiny",
            [("conv2", "conv2")],
            {"ce": 1.0, "kd": 0.5, "hint": 2.0},
        ),
        _case(
            "fitnet-dense",
            "fitnet",
            "cnn-small",
            "mlp-64",
            [("pre_logits", "dense1")],
            {"ce": 1.0, "hint": 2.0},
        ),
        _case(
            "ensemble",
            "ensemble",
            "cnn-small",
            "mlp-32",
            [],
            {"ce": 0.3, "kd": 0.7},
            ensemble=(0.5, 0.3, 0.2),
        ),
        _case("offline", "offline", "cnn-small", "mlp-32", [], {"ce": 0.3, "kd": 0.7}),
        # Square connector (64 -> 64): a transposed kernel is wrong, not a shape error.
        _case(
            "fitnet-square",
            "fitnet",
            "mlp-64",
            "mlp-64",
            [("dense1", "dense1")],
            {"ce": 1.0, "hint": 2.0},
        ),
        _case(
            "at",
            "at",
            "cnn-small",
            "cnn-tiny",
            [("conv1", "conv1"), ("conv2", "conv2")],
            {"ce": 1.0, "kd": 0.5, "at": 100.0},
        ),
    )
}


def method_batch(arch: Architecture, n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *arch.input_shape)).astype(np.float32)
    y = rng.integers(0, arch.classes, size=n).astype(np.int32)
    return x, y


def _teacher_weights(case: MethodCase) -> dict[str, np.ndarray]:
    return weights(case.teacher, "teacher", scale=2.0)


def _members(case: MethodCase) -> list[dict[str, np.ndarray]]:
    """An ensemble's teachers: the first is the single teacher, the others drawn apart."""
    others = [weights(case.teacher, f"teacher{k}", scale=2.0) for k in range(1, case.teachers)]
    return [_teacher_weights(case), *others]


def oracle_teacher(case: MethodCase):
    if case.teachers > 1:
        return [(case.teacher, w) for w in _members(case)]
    return (case.teacher, _teacher_weights(case))


def backend_teacher(backend: Backend, case: MethodCase, data=None):
    """What init_train is given as the teacher: a model, a list of models, or a table."""
    models = [backend.build(case.teacher, w) for w in _members(case)]
    if case.offline:
        return backend.teacher_table(models[0], data, 32)
    return models if case.teachers > 1 else models[0]


def check_method_grads(backend: Backend, case: MethodCase, kd_scale: float = 0.5) -> dict:
    """Loss and every gradient (student and connectors) against the float64 oracle."""
    assert not case.offline, "offline is a table of logits: its trajectory is checked"
    w = weights(case.student)
    x, y = method_batch(case.student)
    teacher = backend_teacher(backend, case)
    loss, grads = backend.loss_and_grads(
        backend.build(case.student, w), x, y, case.loss, teacher, dict(case.connectors), kd_scale
    )
    expected_loss, expected = oracle.loss_and_grads(
        case.student, w, x, y, case.loss, oracle_teacher(case), case.connectors, kd_scale
    )
    assert_close(np.array(loss), np.array(expected_loss), LOSS_TOL, f"{case.name} loss")
    assert set(grads) == set(expected), f"{case.name}: gradient names {sorted(grads)}"
    for name in expected:
        assert_close(grads[name], expected[name], GRAD_TOL, f"{case.name} grad {name}")
    return grads


@dataclasses.dataclass(frozen=True)
class Steps:
    x: np.ndarray
    y: np.ndarray
    indices: np.ndarray
    lrs: np.ndarray
    scales: np.ndarray  # a warm-up ramp, then 1
    optimizer: dict


def steps(case: MethodCase) -> Steps:
    rng = np.random.default_rng(case.data_seed)
    n = 96
    x = rng.normal(size=(n, *case.student.input_shape)).astype(np.float32)
    y = rng.integers(0, case.student.classes, size=n).astype(np.int32)
    plan = make_plan(n, 24, TRAJECTORY_STEPS // 4 + 1, rng_for(0, "parity-plan"))
    indices = plan.indices.reshape(-1, plan.batch_size)[:TRAJECTORY_STEPS]
    lrs = 0.02 * 0.5 * (1 + np.cos(np.pi * np.arange(TRAJECTORY_STEPS) / TRAJECTORY_STEPS))
    scales = np.minimum((np.arange(TRAJECTORY_STEPS) + 1) / 8.0, 1.0)
    optimizer = {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4}
    return Steps(x, y, indices, lrs, scales, optimizer)


def method_trajectory(backend: Backend, case: MethodCase) -> tuple[np.ndarray, dict]:
    """Per-step losses through the real train step, then student + connector weights."""
    run = steps(case)
    data = backend.put_dataset(run.x, run.y)
    teacher = backend_teacher(backend, case, data)
    student = backend.build(case.student, weights(case.student))
    state = backend.init_train(student, run.optimizer, case.loss, teacher, dict(case.connectors))
    losses = []
    for step in range(TRAJECTORY_STEPS):
        state, loss = backend.train_step(
            state, data, run.indices[step], float(run.lrs[step]), float(run.scales[step])
        )
        losses.append(loss)
    backend.sync()
    final = backend.get_weights(backend.trained_model(state))
    final.update(backend.trained_connectors(state))
    return backend.to_numpy(losses).astype(np.float64), final


def oracle_method_trajectory(case: MethodCase) -> tuple[np.ndarray, dict]:
    run = steps(case)
    return oracle.train(
        case.student,
        weights(case.student),
        case.connectors,
        run.x,
        run.y,
        list(run.indices),
        list(run.lrs),
        run.optimizer,
        case.loss,
        oracle_teacher(case),
        list(run.scales),
    )


def assert_trajectories_match(actual: tuple, expected: tuple, what: str) -> None:
    losses, final = actual
    want_losses, want_final = expected
    assert losses.shape == want_losses.shape == (TRAJECTORY_STEPS,)
    for step, (a, e) in enumerate(zip(losses, want_losses, strict=True)):
        err = abs(a - e) / abs(e)
        assert err <= TRAJECTORY_TOL, f"{what}: step {step} loss {a} vs {e} (rel {err:.3g})"
    assert set(final) == set(want_final), f"{what}: weight names {sorted(final)}"
    for name in want_final:
        assert_close(final[name], want_final[name], TRAJECTORY_TOL, f"{what}: final {name}")


def check_teacher_table(backend: Backend) -> None:
    """The offline table: the teacher's inference logits of every sample, in
    order. The teacher has dropout, so a table taken in training mode differs."""
    arch = resolve("mlp-1200x2", None, (28, 28, 1), 10)
    assert any(layer.type == "dropout" for layer in arch.layers)
    w = weights(arch, "teacher")
    x = np.random.default_rng(3).normal(size=(96, 28, 28, 1)).astype(np.float32)
    data = backend.put_dataset(x, np.zeros(96, np.int32))
    table = backend.to_numpy(backend.teacher_table(backend.build(arch, w), data, 40))  # 40+40+16
    assert_close(table, oracle.network.forward(arch, w, x), LOSS_TOL, "offline teacher table")
