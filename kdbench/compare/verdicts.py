"""Verdicts on records: cells paired, phases judged, the check across seeds.

Pure functions of records (load_side is the one that reads files); see
kdbench.compare for the rules and why.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kdbench.compare.model import (
    ACCURACIES,
    DEFAULT_THRESHOLDS,
    FASTER,
    FLOOR,
    NOT_COMPARABLE,
    SAME,
    SLOWER,
    TRAINING_PHASES,
    UNCERTAIN,
    AccuracyGroup,
    CellComparison,
    CellKey,
    Comparison,
    GroupKey,
    MemoryCheck,
    Thresholds,
    TimeCheck,
)
from kdbench.compare.stats import (
    block_size,
    blocks,
    bootstrap_ratio_ci,
    can_be_significant,
    faster_half,
    fastest_block,
    u_test,
)
from kdbench.errors import KdbenchError
from kdbench.records.schema import Metrics, Phase, Record, as_records
from kdbench.records.store import read_records, results_path


def steady_samples(phase: Phase) -> np.ndarray | None:
    """The raw steady-state times of a phase, as the harness splits them; None if absent."""
    times = phase.steady_times()
    return None if times is None else np.asarray(times, dtype=np.float64)


def load_side(path: str | Path) -> tuple[list[Record], list[str]]:
    """The records of a run folder or results file (any readable schema version,
    upgraded), and any warning about a torn line."""
    file = results_path(Path(path))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            records = read_records(file)
    except (OSError, UnicodeDecodeError) as exc:
        raise KdbenchError(f"{file}: cannot read it ({exc})") from None
    if not records:
        raise KdbenchError(f"{file}: holds no records")
    return records, [str(w.message) for w in caught]


def provenance(records: Iterable[Record]) -> str:
    """The commits and framework versions a side ran, to read next to its numbers."""
    commits, frameworks = set(), set()
    for record in records:
        host = record.host
        if host.git_commit:
            commits.add(host.git_commit[:10] + ("+dirty" if host.git_dirty else ""))
        if record.framework:
            frameworks.add(f"{record.framework} {record.framework_version}")
    return f"commit {', '.join(sorted(commits)) or '?'}; {', '.join(sorted(frameworks)) or '?'}"


def cell_key(record: Record) -> CellKey:
    return (record.spec.name, record.label or "", record.backend, record.seed, record.round or 0)


def replicate(key: CellKey, rounds: bool) -> str:
    """How a note names one process of a group: its seed, and its round if any."""
    return f"seed {key[3]}" + (f" round {key[4]}" if rounds else "")


def index(records: Iterable[Record]) -> dict[CellKey, Record]:
    """The last record of each cell wins: a resumed run appends the retried cell."""
    return {cell_key(r): r for r in records}


def classify(ratio: float, significant: bool, threshold: float) -> str:
    """Beyond the threshold AND significant, or it is not a change."""
    if 1 - threshold < ratio < 1 + threshold:
        return SAME
    if not significant:
        return UNCERTAIN
    return SLOWER if ratio > 1 else FASTER


def compare_phase(phase: str, base: Phase | None, cand: Phase | None, th: Thresholds) -> TimeCheck:
    check = TimeCheck(phase)
    if base is None or cand is None:
        side = "baseline" if base is None else "candidate"
        check.note = f"no {phase} phase in the {side}"
        return check
    if base.from_cache or cand.from_cache:
        check.note = f"{phase} taken from the teacher cache, not timed in this run"
        return check
    b, c = steady_samples(base), steady_samples(cand)
    if b is None or c is None:
        bm, cm = base.step_time_median_s, cand.step_time_median_s
        if not bm or not cm:
            check.note = f"{phase}: no step times recorded"
            return check
        check.baseline_median_s, check.candidate_median_s = bm, cm
        check.ratio = check.median_ratio = cm / bm
        check.throughput_ratio = bm / cm
        check.medians_only = True
        check.verdict = check.seed_verdict = classify(check.ratio, False, th.time)
        return check
    bm, cm = float(np.median(b)), float(np.median(c))
    check.baseline_median_s, check.candidate_median_s = bm, cm
    check.samples = (len(b), len(c))
    check.block_steps = block_size(len(b), len(c))
    bf, cf = fastest_block(b, check.block_steps), fastest_block(c, check.block_steps)
    check.baseline_floor_s, check.candidate_floor_s = bf, cf
    check.median_ratio, check.floor_ratio = cm / bm, cf / bf
    check.statistic = th.statistic
    check.ratio = check.floor_ratio if th.statistic == FLOOR else check.median_ratio
    check.throughput_ratio = 1 / check.ratio
    bb, cb = blocks(b, check.block_steps), blocks(c, check.block_steps)
    # The test looks where the statistic does: at the faster half for the floor.
    tb, tc = (faster_half(bb), faster_half(cb)) if th.statistic == FLOOR else (bb, cb)
    significant = False
    if can_be_significant(len(bb), len(cb), th.alpha):
        check.ci = bootstrap_ratio_ci(bb, cb, th.alpha)
    if can_be_significant(len(tb), len(tc), th.alpha):
        check.p_value, candidate_slower = u_test(tb, tc)
        significant = check.p_value < th.alpha and candidate_slower == (check.ratio > 1)
    else:
        check.note = f"{phase}: {len(b)} vs {len(c)} steps are too few for a test at {th.alpha:g}"
    check.verdict = check.seed_verdict = classify(check.ratio, significant, th.time)
    return check


# --- cells -----------------------------------------------------------------------


def differences(base: Record, cand: Record) -> list[str]:
    """What makes two records incomparable: spec content, device, fairness settings."""
    found = []
    bh, ch = base.spec.hash, cand.spec.hash
    if bh != ch:
        found.append(f"spec content changed: hash {bh} vs {ch}")
    if base.device != cand.device:
        found.append(f"device differs: {base.device} vs {cand.device}")
    bs, cs = base.settings.model_dump(), cand.settings.model_dump()
    diff = [f"{k} {bs.get(k)} vs {cs.get(k)}" for k in sorted(bs | cs) if bs.get(k) != cs.get(k)]
    if diff:
        found.append("settings differ: " + ", ".join(diff))
    return found


def _peak_device(record: Record) -> int | None:
    peaks = [p.device_peak_bytes for p in record.phases.values()]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) if peaks else None


def compare_memory(base: Record, cand: Record, th: Thresholds) -> list[MemoryCheck]:
    pairs = {
        "device peak": (_peak_device(base), _peak_device(cand)),
        "host peak RSS": (
            base.memory.host_peak_rss_bytes if base.memory else None,
            cand.memory.host_peak_rss_bytes if cand.memory else None,
        ),
    }
    checks = []
    for name, (b, c) in pairs.items():
        if b and c:
            ratio = c / b
            checks.append(MemoryCheck(name, b, c, ratio, ratio > 1 + th.memory))
    return checks


def timed_phases(base: dict[str, Phase], cand: dict[str, Phase]) -> list[str]:
    """The training phases, then every eval phase either side has ("eval", "eval_student")."""
    return [*TRAINING_PHASES, *sorted(p for p in base.keys() | cand.keys() if p.startswith("eval"))]


def compare_cell(
    key: CellKey, base: Record | None, cand: Record | None, th: Thresholds, force: bool
) -> CellComparison:
    either = cand or base
    cell_id = either.cell_id if either else "/".join(map(str, key))
    cell = CellComparison(key, cell_id)
    if base is None or cand is None:
        cell.reason = f"missing in {'baseline' if base is None else 'candidate'}"
        if cand is None and base is not None and base.ok:
            cell.lost = "missing in the candidate (ok in the baseline)"
        return cell
    failures = [
        f"{side} {record.status}" + (f": {record.error}" if record.error else "")
        for side, record in (("baseline", base), ("candidate", cand))
        if not record.ok
    ]
    if failures:
        cell.reason = "; ".join(line.splitlines()[0] for line in failures)
        if base.ok:
            error = (cand.error or "").splitlines()[0][:200] if cand.error else ""
            cell.lost = f"candidate {cand.status} (ok in the baseline)" + (
                f": {error}" if error else ""
            )
        return cell
    differ = differences(base, cand)
    if differ and not force:
        cell.reason = "; ".join(differ)
        cell.refused = True
        return cell
    if differ:
        cell.forced = "forced: " + "; ".join(differ)
        cell.notes.append(cell.forced)
    bp, cp = base.phases, cand.phases
    cell.times = {p: compare_phase(p, bp.get(p), cp.get(p), th) for p in timed_phases(bp, cp)}
    cell.memory = compare_memory(base, cand, th)
    bm, cm = base.metrics or Metrics(), cand.metrics or Metrics()
    for name, metric in ACCURACIES.items():
        b, c = getattr(bm, metric), getattr(cm, metric)
        cell.accuracy_delta_pts[name] = None if b is None or c is None else 100.0 * (c - b)
    if base.framework_version != cand.framework_version:
        cell.notes.append(f"{base.framework} {base.framework_version} -> {cand.framework_version}")
    cell.verdict = SAME  # settled by settle_verdict once every seed is known
    return cell


def require_every_seed(cells: list[CellComparison]) -> None:
    """A step-time change counts only when every matched seed and round (each
    a process) shows it."""
    groups: dict[GroupKey, list[CellComparison]] = defaultdict(list)
    for cell in cells:
        if cell.compared:
            groups[cell.key[:3]].append(cell)
    for group in groups.values():
        if len(group) < 2:
            continue
        rounds = any(c.key[4] for c in group)
        for phase in sorted({p for c in group for p in c.times}):
            # A seed without a measurement (teacher from the cache) cannot contradict.
            checks = {c.key: c.times[phase] for c in group if phase in c.times}
            seen = {k: t.seed_verdict for k, t in checks.items() if t.verdict != NOT_COMPARABLE}
            for check in checks.values():
                if check.verdict not in (SLOWER, FASTER):
                    continue
                others = {k: v for k, v in seen.items() if v != check.verdict}
                if others:
                    check.verdict = UNCERTAIN
                    listed = ", ".join(
                        f"{replicate(k, rounds)} {v}" for k, v in sorted(others.items())
                    )
                    every = "every seed and round" if rounds else "every seed"
                    check.note = f"{phase} {check.seed_verdict} here, not in {every} ({listed})"


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
        seeds = sorted({c.key[3] for c in group})
        rounds = len({c.key[4] for c in group})
        if len(group) == 1:
            note = "1 seed: threshold only, no averaging over seeds"
        elif rounds > 1:
            seeds_text = f"{len(seeds)} seed" + ("s" if len(seeds) > 1 else "")
            note = f"mean over {len(group)} pairs ({seeds_text} x {rounds} rounds)"
        else:
            note = f"mean over {len(seeds)} seeds"
        out.append(AccuracyGroup(key, seeds, len(group), means, spreads, regressed, note))
    return out


def compare_records(
    baseline: Iterable[Record | Mapping[str, Any]],
    candidate: Iterable[Record | Mapping[str, Any]],
    th: Thresholds = DEFAULT_THRESHOLDS,
    force: bool = False,
    names: tuple[str, str] = ("baseline", "candidate"),
) -> Comparison:
    """Every cell of either side, compared where it can be; pure, no I/O."""
    base, cand = index(as_records(baseline)), index(as_records(candidate))
    keys = sorted(base.keys() | cand.keys())
    cells = [compare_cell(k, base.get(k), cand.get(k), th, force) for k in keys]
    if not base.keys() & cand.keys():
        # Two runs without a cell in common are not baseline and candidate:
        # nothing was lost, nothing could be compared.
        for cell in cells:
            cell.lost = ""
    require_every_seed(cells)
    for cell in cells:
        settle_verdict(cell)
    return Comparison(names[0], names[1], th, cells, accuracy_groups(cells, th))
