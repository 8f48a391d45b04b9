"""Every distillation method computes the same thing in every backend: the loss
and every gradient (connectors included) against the float64 oracle, then
TRAJECTORY_STEPS real train steps (changing lr, a warm-up ramp) against the
float64 trajectory and against PyTorch's. test_methods_perturbed.py breaks
each method on purpose and shows these checks fail."""

from __future__ import annotations

import dataclasses
from functools import cache

import pytest
from conftest import backend, backend_params
from method_checks import (
    CASES,
    GRAD_TOL,
    assert_trajectories_match,
    check_method_grads,
    check_teacher_table,
    method_trajectory,
    oracle_method_trajectory,
)
from parity_checks import assert_close

from kdbench.backends.base import is_installed

ALL = backend_params()


@cache
def oracle_run(case: str):
    return oracle_method_trajectory(CASES[case])


@cache
def run_of(name: str, case: str):
    return method_trajectory(backend(name), CASES[case])


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("case", [c for c in CASES if not CASES[c].offline])
def test_method_loss_and_grads_match_the_oracle(name: str, case: str) -> None:
    grads_of(name, case)


@cache
def grads_of(name: str, case: str):
    return check_method_grads(backend(name), CASES[case])


@pytest.mark.parametrize("name", backend_params(exclude=("pytorch",)))
@pytest.mark.parametrize("case", [c for c in CASES if not CASES[c].offline])
@pytest.mark.skipif(not is_installed("pytorch"), reason="PyTorch, the reference, is not installed")
@pytest.mark.torch
def test_method_grads_match_pytorch(name: str, case: str) -> None:
    """Every parameter's gradient, connectors included, against PyTorch's."""
    ours, reference = grads_of(name, case), grads_of("pytorch", case)
    assert set(ours) == set(reference)
    for param in reference:
        assert_close(ours[param], reference[param], GRAD_TOL, f"{name} {case} grad {param}")


@pytest.mark.parametrize("name", ALL)
def test_an_ensemble_member_weighted_zero_drops_out(name: str) -> None:
    """A spec may weigh a member 0 (teacher_weights = [0.6, 0.4, 0.0]): log 0 must not reach the loss."""
    case = CASES["ensemble"]
    loss = dataclasses.replace(case.loss, ensemble_weights=(0.6, 0.4, 0.0))
    check_method_grads(backend(name), dataclasses.replace(case, loss=loss))


@pytest.mark.parametrize("name", ALL)
def test_offline_teacher_table_is_the_inference_logits(name: str) -> None:
    check_teacher_table(backend(name))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("case", list(CASES))
def test_method_trajectory_matches_the_oracle(name: str, case: str) -> None:
    assert_trajectories_match(run_of(name, case), oracle_run(case), f"{name} {case}")


@pytest.mark.parametrize("name", backend_params(exclude=("pytorch",)))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.skipif(not is_installed("pytorch"), reason="PyTorch, the reference, is not installed")
@pytest.mark.torch
def test_method_trajectory_matches_pytorch(name: str, case: str) -> None:
    assert_trajectories_match(
        run_of(name, case), run_of("pytorch", case), f"{name} vs pytorch {case}"
    )
