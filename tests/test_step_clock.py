"""How the harness times steps: synced one by one, or with one step in flight.

A backend that dispatches asynchronously (JAX) overlaps the host's work on
step n+1 with the device's work on step n when nothing waits in between; the
clock keeps one step in flight for such a backend so its timed steps get the
overlap its experts' loops get, and each step's time is still the interval
from the previous completion to its own.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest

from kdbench.harness.phases import StepClock

HOST_S, DEVICE_S = 0.004, 0.010  # per step: the host's dispatch, the device's work


class AsyncDevice:
    """A fake device: a step's host part runs at dispatch, its device part on a
    queue of its own (one worker), as an asynchronous framework runs it."""

    def __init__(self, waits_per_handle: bool) -> None:
        self.waits_per_handle = waits_per_handle
        self.queue = ThreadPoolExecutor(max_workers=1)

    def dispatch(self) -> Future:
        time.sleep(HOST_S)
        return self.queue.submit(time.sleep, DEVICE_S)

    def sync(self, *handles: Future) -> None:
        for handle in handles:
            handle.result()


def timed(waits_per_handle: bool, steps: int = 30, warmup: int = 3) -> tuple[np.ndarray, float]:
    device = AsyncDevice(waits_per_handle)
    times = np.zeros(steps)
    clock = StepClock(device, times, warmup)  # type: ignore[arg-type]
    for index in range(steps):
        if index == warmup:
            steady_start = time.perf_counter()
        t0 = time.perf_counter()
        step = device.dispatch()
        clock.stepped(index, t0, step, step)
    clock.drain()
    steady_wall = time.perf_counter() - steady_start
    device.queue.shutdown()
    assert clock.timing == ("in_flight" if waits_per_handle else "synced")
    return times, steady_wall


def test_one_step_in_flight_overlaps_the_dispatch_and_accounts_for_every_second() -> None:
    synced, _ = timed(waits_per_handle=False)
    in_flight, steady_wall = timed(waits_per_handle=True)
    # Synced: the host's dispatch, then the device's work, one after the other.
    assert np.median(synced[3:]) >= HOST_S + DEVICE_S
    # In flight: the dispatch of the next step hides behind this one's work,
    # so a step costs about the device's time, well under host + device.
    assert DEVICE_S <= np.median(in_flight[3:]) < 0.85 * (HOST_S + DEVICE_S)
    # Every steady second is some step's: the intervals tile the steady wall time.
    assert in_flight[3:].sum() == pytest.approx(steady_wall, rel=0.02)
    # The warm-up steps are timed alone either way (compilation is reported apart).
    assert np.all(in_flight[:3] >= HOST_S + DEVICE_S)


def test_a_synchronous_backend_is_timed_step_by_step() -> None:
    calls: list[tuple[str, tuple]] = []

    class Synchronous:
        waits_per_handle = False

        def sync(self, *handles: object) -> None:
            calls.append(("sync", handles))

    times = np.zeros(4)
    clock = StepClock(Synchronous(), times, 1)  # type: ignore[arg-type]
    for index in range(4):
        clock.stepped(index, time.perf_counter(), f"loss{index}", f"state{index}", f"loss{index}")
        # Each step is waited for (state and loss) before the next is dispatched.
        assert calls[-1] == ("sync", (f"state{index}", f"loss{index}"))
    clock.drain()
    assert len(calls) == 4 and np.all(times > 0)


class AsyncBackend(AsyncDevice):
    """A fake asynchronous backend for train_phase: each step's loss is a future,
    and every wait is logged with how many steps had been dispatched by then."""

    def __init__(self) -> None:
        super().__init__(waits_per_handle=True)
        self.dispatched = 0
        self.waits: list[int] = []

    def train_step(self, state: int, data: object, idx: object, lr: float, scale: float):
        self.dispatched += 1
        return state + 1, self.queue.submit(lambda: (time.sleep(DEVICE_S), 1.0)[1])

    def sync(self, *handles: object) -> None:
        self.waits.append(self.dispatched)
        for handle in handles:
            if isinstance(handle, Future):
                handle.result()

    def to_numpy(self, handles: list[Future]) -> np.ndarray:
        return np.array([h.result() for h in handles])

    def reset_peak_memory(self) -> None:
        pass

    def peak_memory(self) -> None:
        return None


def run_phase(epoch_end=None) -> tuple[AsyncBackend, object, float]:
    from types import SimpleNamespace

    from kdbench.harness.phases import Cell, train_phase
    from kdbench.plan import BatchPlan
    from kdbench.spec import load_spec

    backend = AsyncBackend()
    cell = Cell(SimpleNamespace(warmup=2), backend)  # type: ignore[arg-type]
    plan = BatchPlan(np.zeros((3, 5, 4), dtype=np.int32))  # 3 epochs of 5 steps
    net = load_spec("mnist5k").spec.student
    t0 = time.perf_counter()
    _, phase = train_phase(
        cell, "distill", net, 0, None, plan, flops_per_step=1, epoch_end=epoch_end
    )
    wall = time.perf_counter() - t0
    backend.queue.shutdown()
    return backend, phase, wall


def test_a_phase_keeps_its_step_in_flight_across_epochs_and_drains_before_an_evaluation() -> None:
    backend, phase, wall = run_phase()
    # Warm-up steps 1-2 are waited for alone; from step 3 on, step n is waited
    # for once step n+1 is dispatched, across the epochs' ends (5, 10) too:
    # no drain between epochs when nothing reads the state there.
    assert backend.waits == [1, 2, *range(4, 16), 15]
    assert phase.loss_epochs == [1.0, 1.0, 1.0]
    # The steady intervals tile the phase past its warm-up.
    steady = sum(phase.step_times_s[2:])
    assert steady == pytest.approx(wall - phase.warmup_s, rel=0.05)

    evaluated: list[int] = []  # the state is the count of steps taken
    backend, phase, _ = run_phase(lambda epoch, state: evaluated.append(state))
    # An evaluation reads the state: the epoch's last step is done before it runs.
    assert backend.waits == [1, 2, *range(4, 6), 5, *range(7, 11), 10, *range(12, 16), 15]
    assert evaluated == [5, 10, 15] and phase.epoch_eval_s is not None


def test_independent_steps_are_all_dispatched_before_the_first_wait() -> None:
    """depth=None (inference batches): one burst of dispatches, then waits in
    order; each interval is a step's, and together they tile the wall time."""
    backend = AsyncBackend()
    times = np.zeros(8)
    clock = StepClock(backend, times, 1, depth=None)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    for index in range(8):
        start = time.perf_counter()
        _, step = backend.train_step(0, None, None, 0.0, 1.0)
        clock.stepped(index, start, step, step)
    clock.drain()
    wall = time.perf_counter() - t0
    backend.queue.shutdown()
    assert backend.waits == [1, 8, 8, 8, 8, 8, 8, 8]  # the warm-up alone, then after the burst
    assert np.all(times[1:] >= 0.8 * DEVICE_S)  # the device's time, each step in turn
    assert times.sum() == pytest.approx(wall, rel=0.05)
