"""The matrix-multiply rate a framework reaches here: the 'peak' of achieved FLOP/s."""

from __future__ import annotations

import time

import numpy as np

from kdbench.backends.base import Backend
from kdbench.records.schema import Probe

PROBE_REPEATS = 10


def matmul_probe(backend: Backend, gpu: bool, bf16: bool = False) -> Probe:
    """Under the precision policy in force: float32 always, bfloat16 too on
    GPUs and under precision = "bf16" (the peak its steps are measured against).
    The median of PROBE_REPEATS synchronised products after two warm-ups."""
    n = 4096 if gpu else 1024
    rates: dict[str, float] = {}
    started = time.perf_counter()
    for dtype in ("float32", "bfloat16") if gpu or bf16 else ("float32",):
        run = backend.matmul_probe(n, dtype)
        for _ in range(2):
            backend.sync(run())
        times = []
        for _ in range(PROBE_REPEATS):
            t0 = time.perf_counter()
            backend.sync(run())
            times.append(time.perf_counter() - t0)
        rates[dtype] = 2 * n**3 / float(np.median(times))
    return Probe(
        n=n, repeats=PROBE_REPEATS, flops_per_s=rates, wall_s=time.perf_counter() - started
    )
