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
