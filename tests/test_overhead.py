"""The harness-overhead benchmark compares like with like.

The bare loop of each backend (backends/<fw>/bare.py, Backend.bare_loop) must do the work of the
harness's distill phase: from the same weights, over the same batches with the
same learning rates, it must give the same per-step losses as the real
``train_phase``. A plan of one step per epoch makes train_phase report every
step's loss (its per-epoch means). The framework-free parts of the benchmark
(plan split, figures, table) are checked on made-up timings.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from conftest import backend, backend_params, tiny_spec
from stub_backend import fake_environment

from kdbench.backends.base import Environment
from kdbench.plan import BatchPlan
from kdbench.tools.overhead import measure as overhead
from kdbench.tools.overhead.cli import table
from kdbench.tools.overhead.measure import Bench, Timing

STEPS = 4


@cache
def bench(name: str) -> Bench:
    """The default spec's distill phase on the session's shared backend."""
    return overhead.prepare(name, backend=backend(name))


def step_plan(b: Bench, start: int = 0, steps: int = STEPS) -> BatchPlan:
    """Steps of the distill plan, one per 'epoch' so train_phase reports each loss."""
    rows = b.plan.indices.reshape(-1, b.plan.batch_size)[start : start + steps]
    return BatchPlan(rows[:, None, :])


@cache
def harness_losses(name: str) -> np.ndarray:
    """The real train_phase's per-step losses over step_plan, from a fresh state."""
    b = bench(name)
    _, stats = overhead.harness_run(b, overhead.harness_state(b), step_plan(b))
    return np.asarray(stats.loss_epochs)


@pytest.mark.parametrize("name", backend_params())
def test_bare_loop_gives_the_harness_losses_step_by_step(name: str) -> None:
    b = bench(name)
    bare = b.bare
    plan = step_plan(b)
    expected = harness_losses(name)
    run = overhead.bare_run(b)
    got = bare.bare_distill_loop(run, plan.indices, overhead.bare_lrs(b, plan))
    assert got.shape == (STEPS,) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert len(np.unique(got)) == STEPS  # the student moves: the steps are not no-ops


@pytest.mark.parametrize("name", backend_params())
def test_bare_loop_continues_like_train_phase_on_one_state(name: str) -> None:
    """Warm-up then timed blocks on one state, as the benchmark runs each side."""
    b = bench(name)
    bare = b.bare
    first, second = step_plan(b, steps=2), step_plan(b, start=2, steps=2)
    state, _ = overhead.harness_run(b, overhead.harness_state(b), first)
    _, stats = overhead.harness_run(b, state, second)
    run = overhead.bare_run(b)
    bare.bare_distill_loop(run, first.indices, overhead.bare_lrs(b, first))
    got = bare.bare_distill_loop(run, second.indices, overhead.bare_lrs(b, second))
    np.testing.assert_allclose(got, stats.loss_epochs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", backend_params())
def test_the_loss_check_has_teeth(name: str) -> None:
    """Other learning rates or other batches give other losses than the harness's."""
    b = bench(name)
    bare = b.bare
    plan = step_plan(b)
    expected = harness_losses(name)
    lrs = overhead.bare_lrs(b, plan)
    other_lr = bare.bare_distill_loop(overhead.bare_run(b), plan.indices, 2 * lrs)
    other_batches = bare.bare_distill_loop(overhead.bare_run(b), step_plan(b, start=1).indices, lrs)
    for got in (other_lr, other_batches):
        assert not np.allclose(got[1:], expected[1:], rtol=1e-6, atol=1e-7)


def test_split_plan_warms_up_on_epoch_zero_and_times_whole_epochs() -> None:
    indices = np.arange(4 * 3 * 2, dtype=np.int32).reshape(4, 3, 2)
    warm, blocks = overhead.split_plan(BatchPlan(indices), warmup=2, epochs=3)
    assert warm.indices.shape == (1, 2, 2) and np.array_equal(warm.indices[0], indices[0, :2])
    assert [blk.indices.tolist() for blk in blocks] == [
        indices[e : e + 1].tolist() for e in (1, 2, 3)
    ]
    with pytest.raises(ValueError, match="4 epochs"):
        overhead.split_plan(BatchPlan(indices), warmup=2, epochs=4)


class _FakeBackend:
    def environment(self) -> Environment:
        return fake_environment(framework="fw", framework_version="1", deterministic=False)


class _FakeSpec:
    name = "mnist5k"


class _FakePrepared:
    spec = _FakeSpec()


class _FakeCell:
    warmup = 5


def test_figures_are_paired_medians() -> None:
    """A harness 10% slower in every pair is a ratio of 1/1.1, whatever the load drift."""
    blocks = [BatchPlan(np.zeros((1, 4, 8), dtype=np.int32))]
    losses = np.array([1.0])
    pairs = [
        (Timing(1.1 * s, 1.0, losses), Timing(s, 1.0, losses)) for s in (1.0, 2.0, 3.0, 0.5, 1.5)
    ]
    fake = Bench(_FakePrepared(), _FakeBackend(), _FakeCell(), None, None, None)  # type: ignore[arg-type]
    r = overhead.summarise("fw", fake, pairs, blocks, elapsed=1.0)
    assert r["ratio"] == pytest.approx(1 / 1.1)
    assert r["overhead"] == pytest.approx(1 - 1 / 1.1)
    assert r["overhead_q1"] == pytest.approx(r["overhead_q3"])
    assert r["cpu_overhead"] == 0.0
    assert r["bare_samples_per_s"] == pytest.approx(32 / 1.5)
    assert r["harness_samples_per_s"] == pytest.approx(32 / 1.65)
    assert r["extra_us_per_step"] == pytest.approx(0.15 / 4 * 1e6)
    assert r["pairs"] == 5 and r["loss_max_rel_diff"] == 0.0
    assert not r["meets_target"]


def test_table_shows_every_backend_and_failures() -> None:
    from rich.console import Console

    ok = {
        "backend": "jax",
        "compile_mode": "jax.jit",
        "device": "cpu",
        "pairs": 12,
        "steps_per_block": 54,
        "harness_samples_per_s": 9800.0,
        "bare_samples_per_s": 10000.0,
        "ratio": 0.98,
        "overhead": 0.02,
        "overhead_q1": 0.01,
        "overhead_q3": 0.03,
        "overhead_best_of": 0.015,
        "cpu_overhead": 0.01,
        "extra_us_per_step": 130.0,
        "loss_max_rel_diff": 0.0,
        "meets_target": True,
    }
    failed = {"backend": "tensorflow", "error": "exit 1: boom"}
    console = Console(width=250, record=True)
    console.print(table([ok, failed], "t"))
    text = console.export_text()
    assert "jax.jit" in text and "9,800" in text and "0.980" in text and "2.0" in text
    assert "exit 1: boom" in text and "exactly" in text and "yes" in text


def _augmented_spec(tmp_path, nets: str) -> str:
    spec = tmp_path / f"{nets}.toml"
    spec.write_text(tiny_spec("s", augment=f'{{ crop_padding = 1, nets = "{nets}" }}'))
    return str(spec)


def test_a_spec_whose_students_augment_is_refused(tmp_path) -> None:
    """The bare loops do not augment: the distillation phase must be plain."""
    from kdbench.errors import KdbenchError

    with pytest.raises(KdbenchError, match="the bare loops do not augment"):
        overhead.prepare("pytorch", _augmented_spec(tmp_path, "all"))


@pytest.mark.parametrize("name", backend_params(exclude=("tensorflow", "jax")))
def test_a_teacher_only_augmented_spec_is_timed_on_plain_batches(tmp_path, name: str) -> None:
    b = overhead.prepare(name, _augmented_spec(tmp_path, "teacher"), backend=backend(name))
    assert b.prepared.teacher_augment is not None and b.prepared.student_augment is None
    assert b.plan.crops is None
