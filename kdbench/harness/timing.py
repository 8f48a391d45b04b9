"""Step-time statistics and achieved FLOP/s: one definition for every phase."""

from __future__ import annotations

import resource
from typing import Any

import numpy as np


def step_stats(times: np.ndarray, warmup: int, batch_size: int) -> dict[str, Any]:
    """Warm-up apart; median, IQR and p90 of the steady-state steps.

    A phase no longer than its warm-up keeps its last step as the steady state.
    """
    warm = times[:warmup]
    steady = times[warmup:] if len(times) > warmup else times[-1:]
    median = float(np.median(steady))
    q25, q75, p90 = (float(v) for v in np.percentile(steady, [25, 75, 90]))
    return {
        "warmup_steps": int(len(warm)),
        "warmup_s": float(warm.sum()),
        "first_step_s": float(times[0]),
        "steady_steps": int(len(steady)),
        "step_time_median_s": median,
        "step_time_iqr_s": q75 - q25,
        "step_time_p90_s": p90,
        "step_time_mean_s": float(steady.mean()),
        "throughput_samples_per_s": batch_size / median,
    }


def efficiency(flops: int, median_step_s: float, peak_flops: float | None) -> dict[str, Any]:
    """Analytic FLOPs per step and the rate the median steady step achieved."""
    achieved = flops / median_step_s
    return {
        "flops_per_step": flops,
        "achieved_flops_per_s": achieved,
        "fraction_of_peak": achieved / peak_flops if peak_flops else None,
    }


def host_peak_rss() -> int:
    """This process's resident-set high-water mark, in bytes.

    Linux's VmHWM belongs to the process's own memory map, which exec makes
    anew. getrusage's ru_maxrss is kept across fork and exec, so a cell would
    report the runner's peak (a dataset it checked, say) if that were larger;
    it is only the fallback where /proc is missing. (Linux reports KiB.)
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
