"""An environment whose every timed step is slower by $KDBENCH_SLOWDOWN (1.2: 20%).

On PYTHONPATH (tests/ab_envs.py writes interpreters that put it there), Python
imports this module at startup. It wraps the backend the cell gets: after a
training step has synchronised, it busy-waits until the step has taken
$KDBENCH_SLOWDOWN times as long as it did (as the harness's clock counts it,
one step in flight or not). Predictions are left alone: on the
stub backend they take microseconds, which the wrapper's own calls would
already stretch by more than the factor. A candidate made slower by
a known factor, for the A/B tests and benchmarks/ab_check.py; nothing else
changes (the same code, data and numbers).
"""

from __future__ import annotations

import os
import time
from typing import Any

import kdbench.backends.base as base

FACTOR = float(os.environ.get("KDBENCH_SLOWDOWN", "1"))
_get_backend = base.get_backend


def slowed(backend: Any, factor: float) -> Any:
    step, sync = backend.train_step, backend.sync
    dispatched: list[float] = []  # training steps not yet synchronised, oldest first
    done = [0.0]  # when the last stretched step completed

    def timed_step(*args: Any, **kwargs: Any) -> Any:
        dispatched.append(time.perf_counter())
        return step(*args, **kwargs)

    def stretched_sync(*args: Any, **kwargs: Any) -> Any:
        # The step this sync completes is the oldest dispatched one; the clock
        # counts it from its dispatch, or from the previous completion where a
        # backend keeps one step in flight (kdbench.harness.phases.StepClock).
        out = sync(*args, **kwargs)
        if dispatched:
            since = max(dispatched.pop(0), done[0])
            until = since + factor * (time.perf_counter() - since)
            while time.perf_counter() < until:
                pass
            done[0] = time.perf_counter()
        return out

    backend.train_step, backend.sync = timed_step, stretched_sync
    return backend


def get_backend(name: str) -> Any:
    return slowed(_get_backend(name), FACTOR)


if FACTOR != 1:
    base.get_backend = get_backend
