"""``kdbench compare BASELINE CANDIDATE``: did the candidate run regress?

The package: pure statistics (stats), verdicts on records (verdicts, model),
rendering (render); the command is kdbench.commands.compare.

Cells are paired by what names them (spec name, matrix label, backend, seed)
and compared only when everything that makes two numbers comparable is equal:
the spec's content hash, the device and every fairness setting (``settings.*``).
Other pairs are listed as not comparable, with the fields that differ;
``--force`` compares them anyway and marks them.

How a verdict is reached, and why:

* Step time, per phase: teacher and distill training, and every eval phase
  (``eval_teacher``, ``eval_student``: timed inference batches). The samples
  are the raw steady-state step times (``phases.<phase>.step_times_s`` without the first
  ``warmup_steps``); the change is the ratio, candidate over baseline, of each
  side's *floor*: the median of its fastest block of consecutive steps (the
  blocks below). Another program on a shared machine only adds time to a step,
  and it slows one process more than the next (a busy neighbour, a slower
  core), so the fastest stretch of a phase is what its code costs and a whole
  process's median is not. In four sets of 10 A/B runs of the quick matrix on
  the 2-core CI machine (``benchmarks/ab_check.py``: 3 rounds, teacher and
  distillation, 60 pairs a set; three sets quiet, one beside bursty load) the
  standard deviation of the log of an A/A pair's ratio was 0.014-0.071 for the
  floors against 0.057-0.102 for the medians, and a candidate made 20% slower
  showed a floor ratio of 1.165 or more in all 240 pairs, a median ratio as
  low as 0.79. ``--statistic median`` judges the medians instead; both ratios
  are printed.
  A phase is *slower* or *faster* only when the change is beyond the
  threshold AND significant: a two-sided Mann-Whitney U test (as asv does) at
  ``alpha``, pointing the same way as the ratio, on the faster half of each
  side's blocks (below) where the floor is judged (a baseline slowed for half
  its run keeps its fast blocks, and a test of all of them found no
  difference from a candidate 20% slower throughout), on all blocks where the
  median is. Both are needed: with a
  thousand steps a 0.5% shift is significant yet harmless, and with a handful
  of steps a 30% shift can be luck. Beyond the threshold but not significant:
  *uncertain*. A bootstrap (1 - alpha) confidence interval of the ratio of
  the medians is reported beside it (a minimum has no useful bootstrap); it
  does not vote, because where the steps are bimodal
  (a loaded machine) the median sits in a sparse valley and its interval is
  wide even for a shift the U test sees plainly.
* Neighbouring steps share the machine's momentary load, so they are not
  independent samples, and a test that treats them so calls every passing load
  significant. The tests therefore work on blocks of 10 consecutive steps
  (fewer in a short phase): Mann-Whitney on the block medians, the bootstrap
  resampling whole blocks. In 9 pairs of same-code runs on a shared 2-core
  machine (2 seeds, ~630 steps a phase), step-by-step testing failed 1 pair;
  block testing failed none and still flagged a 20% slowdown in all 18 runs.
* The steps of one process are not independent replicates of a run: another
  program on the machine, or a change of clock, shifts a whole process, and the
  step-level test then calls any such shift significant. Each seed is a process
  of its own, so a change must be reproduced: when several seeds are matched, a
  phase is slower (faster) only if it is slower (faster) in every seed, else it
  is uncertain. With one seed no such check exists, and the output says so.
* An A/B run (``kdbench run --env A=.. --env B=.. --rounds N``) holds both
  sides in one run, the environments taking turns round by round, so that the
  machine's drift meets both; ``compare RUN --envs A B`` pairs the cells seed
  by seed and round by round. Each round is a process on either side, so the
  rule above applies to every (seed, round) pair.
* A phase with a median and no raw samples (the ``eval`` phase of older
  records) is judged on the threshold alone: it can never be significant, so
  it never fails a compare.
* No test inside two runs can tell a slower machine from slower code: runs
  made minutes apart on a busy shared machine differ in every seed at once.
  Compare runs made under the same conditions: a quiet machine, or baseline
  and candidate side by side. (Pinning each run to its own core of a shared
  machine made one run faster in every seed: it kept its core's other load.)
* Memory (the device peak where the framework reports one, the host peak RSS)
  is one high-water mark per cell, with nothing to test it against; it is
  nearly deterministic for a given program, so the threshold alone decides.
* Accuracy (teacher, scratch and distilled student, test split) is one number
  per seed. It is judged per (spec, label, backend) on the mean difference over
  the matched seeds: a mean drop of more than the threshold (in points) is a
  regression. With one seed that is a threshold-only judgement on one noisy
  number, and the output says so.

Exit status: 1 when anything regressed, 0 otherwise, 2 on bad input or when no
cell could be compared at all.
"""

from kdbench.compare.model import (
    FASTER,
    NOT_COMPARABLE,
    SAME,
    SLOWER,
    UNCERTAIN,
    CellComparison,
    Comparison,
    Thresholds,
)
from kdbench.compare.verdicts import compare_records, load_side

__all__ = [
    "FASTER",
    "NOT_COMPARABLE",
    "SAME",
    "SLOWER",
    "UNCERTAIN",
    "CellComparison",
    "Comparison",
    "Thresholds",
    "compare_records",
    "load_side",
]
