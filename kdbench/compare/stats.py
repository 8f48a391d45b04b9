"""Pure statistics of step times: blocks, the Mann-Whitney guard, a block bootstrap.

Neighbouring steps share the machine's momentary load, so they are tested in
blocks of consecutive steps (see kdbench.compare for why).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import mannwhitneyu

BOOTSTRAP_RESAMPLES = 2000
BLOCK_STEPS = 10  # consecutive steps tested together (fewer when a phase is short)
MIN_BLOCKS = 20


def can_be_significant(n: int, m: int, alpha: float) -> bool:
    """Whether the most extreme ordering of n vs m samples reaches alpha (two-sided).

    asv applies the same guard: with too few samples no test can say "different".
    """
    log_orderings = math.lgamma(n + m + 1) - math.lgamma(n + 1) - math.lgamma(m + 1)
    return math.log(2 / alpha) < log_orderings  # 2 / comb(n + m, n) < alpha


def blocks(times: np.ndarray, size: int) -> np.ndarray:
    """Consecutive steps as rows of `size` (a last, partial block is left out).

    Neighbouring steps share the machine's momentary load (another job, a clock
    change), so they are not independent samples; tested one by one, any such
    episode becomes "significant". Blocks are much closer to independent.
    """
    n = len(times) // size
    return times[: n * size].reshape(n, size)


def block_size(n: int, m: int) -> int:
    """BLOCK_STEPS, or fewer so that a short phase still has MIN_BLOCKS blocks."""
    return max(1, min(BLOCK_STEPS, min(n, m) // MIN_BLOCKS))


def fastest_block(times: np.ndarray, size: int) -> float:
    """The median of the fastest block of `size` consecutive steps: the phase's floor.

    Another program on a shared machine only ever adds time to a step, so the
    fastest stretch of a phase is the best estimate of what the code itself
    costs; a median over a whole process also carries whatever slowed that
    process (a busy neighbour, a slow core), which two processes of the same
    code do not share. A block's median, not a single step, so that one
    early-looking interval (a step in flight whose predecessor was collected
    late) cannot set the floor alone.
    """
    rows = blocks(times, size)
    if not len(rows):
        return float(np.min(times))
    return float(np.min(np.median(rows, axis=1)))


def faster_half(rows: np.ndarray) -> np.ndarray:
    """The faster half of a side's blocks (by median; the middle one kept when odd).

    What the floor is tested on: the part of each side where a busy neighbour
    left the least time. A process slowed for most of its run keeps its
    fastest blocks, and a test on all of its blocks would find no difference
    from a candidate 20% slower throughout.
    """
    order = np.argsort(np.median(rows, axis=1))  # ties: equal medians, the same test
    return rows[order[: (len(rows) + 1) // 2]]


def bootstrap_ratio_ci(
    baseline: np.ndarray, candidate: np.ndarray, alpha: float, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """Block-bootstrap percentile CI of median(candidate steps) / median(baseline steps).

    Takes blocks (rows) and resamples whole blocks. A fixed seed: the same two
    runs always get the same verdict.
    """
    rng = np.random.default_rng(20240607)

    def medians(x: np.ndarray) -> np.ndarray:
        out = np.empty(resamples)
        chunk = max(1, 2_000_000 // x.size)  # bounded memory for long phases
        for start in range(0, resamples, chunk):
            rows = min(chunk, resamples - start)
            picked = x[rng.integers(0, len(x), size=(rows, len(x)))]
            out[start : start + rows] = np.median(picked.reshape(rows, -1), axis=1)
        return out

    ratios = medians(candidate) / medians(baseline)
    lo, hi = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def u_test(baseline_blocks: np.ndarray, candidate_blocks: np.ndarray) -> tuple[float, bool]:
    """Two-sided Mann-Whitney U on the block medians: (p-value, whether the
    candidate's blocks tend to be the slower ones)."""
    b, c = np.median(baseline_blocks, axis=1), np.median(candidate_blocks, axis=1)
    result = mannwhitneyu(c, b)
    p_value = float(result.pvalue) if math.isfinite(result.pvalue) else 1.0
    # U above half of n*m: candidate blocks tend to be the slower ones.
    return p_value, bool(result.statistic > len(b) * len(c) / 2)
