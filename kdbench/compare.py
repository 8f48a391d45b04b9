"""``kdbench compare BASELINE CANDIDATE``: did the candidate run regress?

Cells are paired by what names them (spec name, matrix label, backend, seed)
and compared only when everything that makes two numbers comparable is equal:
the spec's content hash, the device and every fairness setting (``settings.*``).
Other pairs are listed as not comparable, with the fields that differ;
``--force`` compares them anyway and marks them.

How a verdict is reached, and why:

* Step time, per phase: teacher and distill training, and every eval phase
  (``eval_teacher``, ``eval_student``: timed inference batches). The samples
  are the raw steady-state step times (``phases.<phase>.step_times_s`` without the first
  ``warmup_steps``); the change is the ratio of their medians, candidate over
  baseline. A phase is *slower* or *faster* only when the change is beyond the
  threshold AND significant: a two-sided Mann-Whitney U test (as asv does) at
  ``alpha``, pointing the same way as the ratio. Both are needed: with a
  thousand steps a 0.5% shift is significant yet harmless, and with a handful
  of steps a 30% shift can be luck. Beyond the threshold but not significant:
  *uncertain*. A bootstrap (1 - alpha) confidence interval of the ratio is
  reported beside it; it does not vote, because where the steps are bimodal
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

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import mannwhitneyu

from kdbench.errors import KdbenchError
from kdbench.records import SCHEMA_VERSION, read_records, results_path

Record = dict[str, Any]
CellKey = tuple[str, str, str, int]  # spec name, matrix label, backend, seed
GroupKey = tuple[str, str, str]  # the cell key without the seed

TRAINING_PHASES = ("teacher", "distill")  # scratch trains the same student: not judged
ACCURACIES = {"teacher": "teacher_acc", "scratch": "scratch_acc", "distilled": "distilled_acc"}
BOOTSTRAP_RESAMPLES = 2000
BLOCK_STEPS = 10  # consecutive steps tested together (fewer when a phase is short)
MIN_BLOCKS = 20
JSON_FORMAT = 1

SAME, SLOWER, FASTER, UNCERTAIN = "same", "slower", "faster", "uncertain"
NOT_COMPARABLE = "not comparable"


@dataclass(frozen=True)
class Thresholds:
    """Relative changes for time and memory, points for accuracy, alpha for the tests."""

    time: float = 0.05
    memory: float = 0.10
    accuracy: float = 1.0
    alpha: float = 0.01


@dataclass
class TimeCheck:
    """One phase of one cell: ratio of median step (or batch) times, candidate/baseline."""

    phase: str
    verdict: str = NOT_COMPARABLE
    baseline_median_s: float | None = None
    candidate_median_s: float | None = None
    ratio: float | None = None
    throughput_ratio: float | None = None
    ci: tuple[float, float] | None = None
    p_value: float | None = None
    samples: tuple[int, int] = (0, 0)  # steady steps, baseline and candidate
    block_steps: int = 1  # steps per block in the tests
    medians_only: bool = False  # no raw samples: threshold only, never a regression
    seed_verdict: str | None = None  # before the check across seeds
    note: str = ""


@dataclass
class MemoryCheck:
    """One high-water mark of one cell, judged on the threshold alone."""

    name: str
    baseline_bytes: int
    candidate_bytes: int
    ratio: float
    regressed: bool


@dataclass
class CellComparison:
    key: CellKey
    cell_id: str
    verdict: str = NOT_COMPARABLE
    reason: str = ""  # why not comparable
    refused: bool = False  # comparable in principle, but device/settings/spec differ
    forced: str = ""  # what differs, when compared with --force
    times: dict[str, TimeCheck] = field(default_factory=dict)
    memory: list[MemoryCheck] = field(default_factory=list)
    accuracy_delta_pts: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def compared(self) -> bool:
        return self.verdict != NOT_COMPARABLE

    @property
    def regressions(self) -> list[str]:
        found = [
            f"{c.phase} step time {_pct(c.ratio)}"
            for c in self.times.values()
            if c.verdict == SLOWER
        ]
        return found + [f"{m.name} {_pct(m.ratio)}" for m in self.memory if m.regressed]


@dataclass
class AccuracyGroup:
    """Accuracy over the matched seeds of one (spec, label, backend)."""

    key: GroupKey
    seeds: list[int]
    mean_delta_pts: dict[str, float]
    spread_pts: dict[str, float]  # standard deviation of the per-seed differences
    regressed: list[str]
    note: str


@dataclass
class Comparison:
    baseline: str
    candidate: str
    thresholds: Thresholds
    cells: list[CellComparison]
    accuracy: list[AccuracyGroup]
    warnings: list[str] = field(default_factory=list)
    provenance: tuple[str, str] = ("", "")  # what each side ran: commits, frameworks

    @property
    def compared(self) -> list[CellComparison]:
        return [c for c in self.cells if c.compared]

    @property
    def refused(self) -> list[str]:
        return [f"{c.cell_id}: {c.reason}" for c in self.cells if c.refused]

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for cell in self.cells:
            counts[cell.verdict] += 1
        return dict(sorted(counts.items()))

    @property
    def regressions(self) -> list[str]:
        found = [f"{c.cell_id}: {r}" for c in self.cells for r in c.regressions]
        return found + [
            f"{_group_name(g.key)}: {name} accuracy {g.mean_delta_pts[name]:+.2f} pts"
            for g in self.accuracy
            for name in g.regressed
        ]

    @property
    def single_seed(self) -> list[str]:
        """Groups that rest on one seed: no check across processes."""
        return [_group_name(g.key) for g in self.accuracy if len(g.seeds) == 1]

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)

    @property
    def exit_code(self) -> int:
        return 1 if self.regressed else 0


# --- reading -----------------------------------------------------------------


def load_side(path: str | Path) -> tuple[list[Record], list[str]]:
    """The records of a run folder or results file, and any warning about a torn line."""
    file = results_path(Path(path))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            records = read_records(file)
    except (OSError, UnicodeDecodeError) as exc:
        raise KdbenchError(f"{file}: cannot read it ({exc})") from None
    if not records:
        raise KdbenchError(f"{file}: holds no records")
    for record in records:
        version = record.get("schema_version")
        if version != SCHEMA_VERSION:
            raise KdbenchError(
                f"{file}: record {record.get('cell_id', '?')} has schema_version {version}; "
                f"this kdbench reads version {SCHEMA_VERSION}"
            )
    return records, [str(w.message) for w in caught]


def provenance(records: Iterable[Record]) -> str:
    """The commits and framework versions a side ran, to read next to its numbers."""
    commits, frameworks = set(), set()
    for record in records:
        host = record.get("host") or {}
        if host.get("git_commit"):
            commits.add(host["git_commit"][:10] + ("+dirty" if host.get("git_dirty") else ""))
        if record.get("framework"):
            frameworks.add(f"{record['framework']} {record.get('framework_version')}")
    return f"commit {', '.join(sorted(commits)) or '?'}; {', '.join(sorted(frameworks)) or '?'}"


def cell_key(record: Record) -> CellKey:
    spec = record.get("spec") or {}
    return (spec.get("name", "?"), record.get("label") or "", record["backend"], record["seed"])


def index(records: Iterable[Record]) -> dict[CellKey, Record]:
    """The last record of each cell wins: a resumed run appends the retried cell."""
    return {cell_key(r): r for r in records}


# --- statistics ----------------------------------------------------------------


def steady_samples(phase: Record) -> np.ndarray | None:
    """The raw steady-state times of a phase, as the harness splits them; None if absent."""
    raw = phase.get("step_times_s") or phase.get("batch_times_s")
    if not raw:
        return None
    times = np.asarray(raw, dtype=np.float64)
    warmup = int(phase.get("warmup_steps") or 0)
    return times[warmup:] if len(times) > warmup else times[-1:]


def recorded_median(phase: Record) -> float | None:
    return phase.get("step_time_median_s") or phase.get("batch_time_median_s")


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


def classify(ratio: float, significant: bool, threshold: float) -> str:
    """Beyond the threshold AND significant, or it is not a change."""
    if 1 - threshold < ratio < 1 + threshold:
        return SAME
    if not significant:
        return UNCERTAIN
    return SLOWER if ratio > 1 else FASTER


def compare_phase(
    phase: str, base: Record | None, cand: Record | None, th: Thresholds
) -> TimeCheck:
    check = TimeCheck(phase)
    if not base or not cand:
        side = "baseline" if not base else "candidate"
        check.note = f"no {phase} phase in the {side}"
        return check
    if base.get("from_cache") or cand.get("from_cache"):
        check.note = f"{phase} taken from the teacher cache, not timed in this run"
        return check
    b, c = steady_samples(base), steady_samples(cand)
    if b is None or c is None:
        bm, cm = recorded_median(base), recorded_median(cand)
        if not bm or not cm:
            check.note = f"{phase}: no step times recorded"
            return check
        check.baseline_median_s, check.candidate_median_s = bm, cm
        check.ratio, check.throughput_ratio = cm / bm, bm / cm
        check.medians_only = True
        check.verdict = check.seed_verdict = classify(check.ratio, False, th.time)
        return check
    bm, cm = float(np.median(b)), float(np.median(c))
    check.baseline_median_s, check.candidate_median_s = bm, cm
    check.ratio, check.throughput_ratio = cm / bm, bm / cm
    check.samples = (len(b), len(c))
    check.block_steps = block_size(len(b), len(c))
    bb, cb = blocks(b, check.block_steps), blocks(c, check.block_steps)
    significant = False
    if can_be_significant(len(bb), len(cb), th.alpha):
        u_test = mannwhitneyu(np.median(cb, axis=1), np.median(bb, axis=1))
        check.p_value = float(u_test.pvalue) if math.isfinite(u_test.pvalue) else 1.0
        check.ci = bootstrap_ratio_ci(bb, cb, th.alpha)
        # U above half of n*m: candidate blocks tend to be the slower ones.
        candidate_slower = u_test.statistic > len(bb) * len(cb) / 2
        significant = check.p_value < th.alpha and candidate_slower == (check.ratio > 1)
    else:
        check.note = f"{phase}: {len(b)} vs {len(c)} steps are too few for a test at {th.alpha:g}"
    check.verdict = check.seed_verdict = classify(check.ratio, significant, th.time)
    return check


# --- cells -----------------------------------------------------------------------


def differences(base: Record, cand: Record) -> list[str]:
    """What makes two records incomparable: spec content, device, fairness settings."""
    found = []
    bh, ch = (base.get("spec") or {}).get("hash"), (cand.get("spec") or {}).get("hash")
    if bh != ch:
        found.append(f"spec content changed: hash {bh} vs {ch}")
    if base.get("device") != cand.get("device"):
        found.append(f"device differs: {base.get('device')} vs {cand.get('device')}")
    bs, cs = base.get("settings") or {}, cand.get("settings") or {}
    diff = [f"{k} {bs.get(k)} vs {cs.get(k)}" for k in sorted(bs | cs) if bs.get(k) != cs.get(k)]
    if diff:
        found.append("settings differ: " + ", ".join(diff))
    return found


def _peak_device(record: Record) -> int | None:
    peaks = [p.get("device_peak_bytes") for p in (record.get("phases") or {}).values()]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) if peaks else None


def compare_memory(base: Record, cand: Record, th: Thresholds) -> list[MemoryCheck]:
    pairs = {
        "device peak": (_peak_device(base), _peak_device(cand)),
        "host peak RSS": (
            (base.get("memory") or {}).get("host_peak_rss_bytes"),
            (cand.get("memory") or {}).get("host_peak_rss_bytes"),
        ),
    }
    checks = []
    for name, (b, c) in pairs.items():
        if b and c:
            ratio = c / b
            checks.append(MemoryCheck(name, b, c, ratio, ratio > 1 + th.memory))
    return checks


def timed_phases(base: Record, cand: Record) -> list[str]:
    """The training phases, then every eval phase either side has ("eval", "eval_student")."""
    return [*TRAINING_PHASES, *sorted(p for p in base.keys() | cand.keys() if p.startswith("eval"))]


def compare_cell(
    key: CellKey, base: Record | None, cand: Record | None, th: Thresholds, force: bool
) -> CellComparison:
    cell_id = (cand or base or {}).get("cell_id") or "/".join(map(str, key))
    cell = CellComparison(key, cell_id)
    if base is None or cand is None:
        cell.reason = f"missing in {'baseline' if base is None else 'candidate'}"
        return cell
    failures = [
        f"{side} {record.get('status')}" + (f": {record['error']}" if record.get("error") else "")
        for side, record in (("baseline", base), ("candidate", cand))
        if record.get("status") != "ok"
    ]
    if failures:
        cell.reason = "; ".join(line.splitlines()[0] for line in failures)
        return cell
    differ = differences(base, cand)
    if differ and not force:
        cell.reason = "; ".join(differ)
        cell.refused = True
        return cell
    if differ:
        cell.forced = "forced: " + "; ".join(differ)
        cell.notes.append(cell.forced)
    bp, cp = base.get("phases") or {}, cand.get("phases") or {}
    cell.times = {p: compare_phase(p, bp.get(p), cp.get(p), th) for p in timed_phases(bp, cp)}
    cell.memory = compare_memory(base, cand, th)
    bm, cm = base.get("metrics") or {}, cand.get("metrics") or {}
    for name, metric in ACCURACIES.items():
        b, c = bm.get(metric), cm.get(metric)
        cell.accuracy_delta_pts[name] = None if b is None or c is None else 100.0 * (c - b)
    if base.get("framework_version") != cand.get("framework_version"):
        cell.notes.append(
            f"{base.get('framework')} {base.get('framework_version')} -> "
            f"{cand.get('framework_version')}"
        )
    cell.verdict = SAME  # settled by settle_verdict once every seed is known
    return cell


def require_every_seed(cells: list[CellComparison]) -> None:
    """A step-time change counts only when every matched seed (process) shows it."""
    groups: dict[GroupKey, list[CellComparison]] = defaultdict(list)
    for cell in cells:
        if cell.compared:
            groups[cell.key[:3]].append(cell)
    for group in groups.values():
        if len(group) < 2:
            continue
        for phase in sorted({p for c in group for p in c.times}):
            # A seed without a measurement (teacher from the cache) cannot contradict.
            checks = {c.key[3]: c.times[phase] for c in group if phase in c.times}
            seen = {s: t.seed_verdict for s, t in checks.items() if t.verdict != NOT_COMPARABLE}
            for check in checks.values():
                if check.verdict not in (SLOWER, FASTER):
                    continue
                others = {s: v for s, v in seen.items() if v != check.verdict}
                if others:
                    check.verdict = UNCERTAIN
                    listed = ", ".join(f"seed {s} {v}" for s, v in sorted(others.items()))
                    check.note = f"{phase} {check.seed_verdict} here, not in every seed ({listed})"


def settle_verdict(cell: CellComparison) -> None:
    """One word per cell: a slower phase outweighs a faster one."""
    if not cell.compared:
        return
    verdicts = {c.verdict for c in cell.times.values() if not c.medians_only}
    for verdict in (SLOWER, FASTER, UNCERTAIN):
        if verdict in verdicts:
            cell.verdict = verdict
            break
    else:
        cell.verdict = SAME
    cell.notes += [c.note for c in cell.times.values() if c.note]


def accuracy_groups(cells: list[CellComparison], th: Thresholds) -> list[AccuracyGroup]:
    """Mean accuracy difference over the matched seeds of each (spec, label, backend)."""
    groups: dict[GroupKey, list[CellComparison]] = defaultdict(list)
    for cell in cells:
        if cell.compared:
            groups[cell.key[:3]].append(cell)
    out = []
    for key, group in sorted(groups.items()):
        means, spreads, regressed = {}, {}, []
        for name in ACCURACIES:
            deltas = [c.accuracy_delta_pts[name] for c in group]
            deltas = [d for d in deltas if d is not None]
            if not deltas:
                continue
            means[name] = float(np.mean(deltas))
            spreads[name] = float(np.std(deltas, ddof=1)) if len(deltas) > 1 else 0.0
            if means[name] < -th.accuracy:
                regressed.append(name)
        seeds = sorted(c.key[3] for c in group)
        note = (
            "1 seed: threshold only, no averaging over seeds"
            if len(seeds) == 1
            else f"mean over {len(seeds)} seeds"
        )
        out.append(AccuracyGroup(key, seeds, means, spreads, regressed, note))
    return out


def compare_records(
    baseline: Iterable[Record],
    candidate: Iterable[Record],
    th: Thresholds = Thresholds(),
    force: bool = False,
    names: tuple[str, str] = ("baseline", "candidate"),
) -> Comparison:
    """Every cell of either side, compared where it can be; pure, no I/O."""
    base, cand = index(baseline), index(candidate)
    keys = sorted(base.keys() | cand.keys())
    cells = [compare_cell(k, base.get(k), cand.get(k), th, force) for k in keys]
    require_every_seed(cells)
    for cell in cells:
        settle_verdict(cell)
    return Comparison(names[0], names[1], th, cells, accuracy_groups(cells, th))


# --- output ------------------------------------------------------------------------


def _group_name(key: GroupKey) -> str:
    return "/".join(part for part in key if part)


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{(ratio - 1) * 100:+.1f}%"


def to_json(cmp: Comparison) -> dict[str, Any]:
    cells = []
    for c in cmp.cells:
        cells.append(
            {
                "cell_id": c.cell_id,
                "spec": c.key[0],
                "label": c.key[1],
                "backend": c.key[2],
                "seed": c.key[3],
                "verdict": c.verdict,
                "regressions": c.regressions,
                "reason": c.reason or None,
                "forced": c.forced or None,
                "time": {p: asdict(t) for p, t in c.times.items()},
                "memory": {m.name: asdict(m) for m in c.memory},
                "accuracy_delta_pts": c.accuracy_delta_pts,
                "notes": c.notes,
            }
        )
    groups = [
        {
            "spec": g.key[0],
            "label": g.key[1],
            "backend": g.key[2],
            "seeds": g.seeds,
            "mean_delta_pts": g.mean_delta_pts,
            "spread_pts": g.spread_pts,
            "regressed": g.regressed,
            "note": g.note,
        }
        for g in cmp.accuracy
    ]
    return {
        "format": JSON_FORMAT,
        "baseline": cmp.baseline,
        "candidate": cmp.candidate,
        "thresholds": asdict(cmp.thresholds),
        "regressed": cmp.regressed,
        "exit_code": cmp.exit_code,
        "counts": cmp.counts,
        "regressions": cmp.regressions,
        "single_seed": cmp.single_seed,
        "cells": cells,
        "accuracy": groups,
        "refused": cmp.refused,
        "warnings": cmp.warnings,
    }


STYLE = {SAME: "green", FASTER: "cyan", SLOWER: "bold red", UNCERTAIN: "yellow"}


def _time_text(check: TimeCheck | None, label: str = "") -> str:
    prefix = f"{label} " if label else ""
    if check is None or check.verdict == NOT_COMPARABLE:
        return prefix + "n/a"
    text = prefix + _pct(check.ratio)
    if check.ci is not None:
        lo, hi = ((v - 1) * 100 for v in check.ci)
        text += f" [{lo:+.1f}, {hi:+.1f}]"
    if check.medians_only:
        text += " (medians)"
    return f"[{STYLE[check.verdict]}]{text} {check.verdict}[/]"


def render(cmp: Comparison, console: Console) -> None:
    th = cmp.thresholds
    table = Table(title=f"kdbench compare {cmp.baseline} -> {cmp.candidate}")
    for column in ("cell", "teacher step", "distill step", "eval batch", "memory"):
        table.add_column(column)
    table.add_column("Δ acc pts\nteacher/scratch/distilled", justify="right")
    table.add_column("verdict")
    table.add_column("notes", overflow="fold")
    for c in cmp.cells:
        if not c.compared:
            table.add_row(c.cell_id, "", "", "", "", "", f"[dim]{NOT_COMPARABLE}[/]", c.reason)
            continue
        memory = ", ".join(
            f"[{'bold red' if m.regressed else 'green'}]{m.name} {_pct(m.ratio)}[/]"
            for m in c.memory
        )
        acc = "/".join("-" if d is None else f"{d:+.2f}" for d in c.accuracy_delta_pts.values())
        verdict = f"[{STYLE[c.verdict]}]{c.verdict}[/]"
        if any(m.regressed for m in c.memory):
            verdict += ", [bold red]more memory[/]"
        table.add_row(
            c.cell_id,
            *(_time_text(c.times.get(p)) for p in TRAINING_PHASES),
            "\n".join(
                _time_text(t, label=p.removeprefix("eval").strip("_"))
                for p, t in c.times.items()
                if p.startswith("eval")
            )
            or "n/a",
            memory or "n/a",
            acc,
            verdict,
            "; ".join(c.notes),
        )
    console.print(table)
    sides = (("baseline", cmp.baseline), ("candidate", cmp.candidate))
    for (side, name), text in zip(sides, cmp.provenance, strict=True):
        if text:
            console.print(f"{side} {name}: {text}", markup=False, highlight=False)

    if cmp.accuracy:
        acc_table = Table(title="accuracy over matched seeds (points, candidate - baseline)")
        for column in ("spec/label/backend", "seeds", *ACCURACIES, "verdict", "note"):
            acc_table.add_column(column)
        for g in cmp.accuracy:
            name = _group_name(g.key)
            deltas = [
                f"{g.mean_delta_pts[n]:+.2f}"
                + (f" ±{g.spread_pts[n]:.2f}" if len(g.seeds) > 1 else "")
                if n in g.mean_delta_pts
                else "-"
                for n in ACCURACIES
            ]
            verdict = (
                f"[bold red]lower: {', '.join(g.regressed)}[/]" if g.regressed else "[green]ok[/]"
            )
            acc_table.add_row(name, str(len(g.seeds)), *deltas, verdict, g.note)
        console.print(acc_table)

    for line in cmp.refused:
        console.print(f"refused: {line}", markup=False, highlight=False)
    for line in cmp.warnings:
        console.print(f"warning: {line}", markup=False, highlight=False)
    rules = (
        f"rules: a phase is slower/faster only beyond ±{th.time:.0%} AND significant "
        f"(Mann-Whitney p < {th.alpha:g} on medians of {BLOCK_STEPS}-step blocks) in every "
        f"matched seed; [brackets]: {1 - th.alpha:.0%} block-bootstrap CI of the change;",
        f"eval phases without raw samples (medians) never fail; memory beyond +{th.memory:.0%} and a "
        f"mean accuracy drop beyond {th.accuracy:g} points are judged on the threshold alone.",
    )
    for line in rules:
        console.print(line, markup=False, highlight=False)
    if cmp.single_seed:
        console.print(
            f"1 seed only: {', '.join(cmp.single_seed)}: a timing change there is not checked "
            "across processes, and accuracy is one number, not a mean over seeds.",
            markup=False,
            highlight=False,
        )
    summary = ", ".join(f"{n} {v}" for v, n in cmp.counts.items())
    console.print(f"{len(cmp.cells)} cells: {summary}", markup=False, highlight=False)
    if not cmp.compared:
        console.print("[bold red]nothing compared[/]")
    elif cmp.regressions:
        console.print(f"[bold red]REGRESSED[/] ({len(cmp.regressions)}):")
        for line in cmp.regressions:
            console.print(f"  {line}", markup=False, highlight=False)
    else:
        console.print("[green]no regression[/]")


# --- command line -------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    """Register ``kdbench compare`` on the subparsers of the main parser."""
    p = subparsers.add_parser(
        "compare",
        help="regression check: compare a candidate run with a baseline run",
        description="Compare two runs cell by cell; exit 1 if the candidate regressed.",
    )
    p.add_argument("baseline", help="baseline run folder or results.jsonl")
    p.add_argument("candidate", help="candidate run folder or results.jsonl")
    d = Thresholds()
    p.add_argument(
        "--time-threshold",
        "--threshold",
        type=float,
        default=d.time,
        help=f"relative step-time change that counts (default {d.time:g}: 5%% slower)",
    )
    p.add_argument(
        "--memory-threshold",
        type=float,
        default=d.memory,
        help=f"relative peak-memory growth that counts (default {d.memory:g})",
    )
    p.add_argument(
        "--accuracy-threshold",
        type=float,
        default=d.accuracy,
        help=f"mean accuracy drop in points that counts (default {d.accuracy:g})",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=d.alpha,
        help=f"significance level of the step-time tests (default {d.alpha:g})",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="compare cells whose device, settings or spec content differ (marked as forced)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the comparison as JSON ('-': stdout)")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    th = Thresholds(args.time_threshold, args.memory_threshold, args.accuracy_threshold, args.alpha)
    for name in ("time", "memory", "accuracy"):
        if not getattr(th, name) >= 0:
            raise KdbenchError(f"--{name}-threshold must be 0 or more (got {getattr(th, name)})")
    if not 0 < th.alpha < 1:
        raise KdbenchError(f"--alpha must be between 0 and 1 (got {th.alpha})")
    base, base_warnings = load_side(args.baseline)
    cand, cand_warnings = load_side(args.candidate)
    cmp = compare_records(base, cand, th, args.force, (args.baseline, args.candidate))
    cmp.warnings = base_warnings + cand_warnings
    cmp.provenance = (provenance(base), provenance(cand))

    # With --json - the JSON owns stdout, so the table goes to stderr.
    to_stderr = args.json == "-"
    stream = sys.stderr if to_stderr else sys.stdout
    console = Console(file=stream, soft_wrap=False, width=None if stream.isatty() else 200)
    render(cmp, console)
    if args.json:
        text = json.dumps(to_json(cmp), indent=2, allow_nan=False)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            try:
                Path(args.json).write_text(text + "\n", encoding="utf-8")
            except OSError as exc:
                raise KdbenchError(f"--json {args.json}: cannot write it ({exc})") from None
    if not cmp.compared:
        reasons: dict[str, int] = defaultdict(int)
        for cell in cmp.cells:
            reasons["refused" if cell.refused else cell.reason.split(":")[0]] += 1
        listed = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        hint = "; --force compares the refused ones" if reasons.get("refused") else ""
        raise KdbenchError(f"no cell could be compared ({listed}); see the table above{hint}")
    return cmp.exit_code
