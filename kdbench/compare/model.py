"""What a comparison finds: verdict words, thresholds and the per-cell results."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

# spec name, matrix label, backend, seed, round (0 outside a run with --rounds)
CellKey = tuple[str, str, str, int, int]
GroupKey = tuple[str, str, str]  # the cell key without seed and round

TRAINING_PHASES = ("teacher", "distill")  # scratch trains the same student: not judged
ACCURACIES = {"teacher": "teacher_acc", "scratch": "scratch_acc", "distilled": "distilled_acc"}
JSON_FORMAT = 1

SAME, SLOWER, FASTER, UNCERTAIN = "same", "slower", "faster", "uncertain"
NOT_COMPARABLE = "not comparable"

# What a phase's change is measured on (see kdbench.compare): the fastest block
# of consecutive steps on either side, or the median step.
FLOOR, MEDIAN = "floor", "median"
STATISTICS = (FLOOR, MEDIAN)


@dataclass(frozen=True)
class Thresholds:
    """Relative changes for time and memory, points for accuracy, alpha for the
    tests, and the step-time statistic whose ratio is held to the time threshold."""

    time: float = 0.05
    memory: float = 0.10
    accuracy: float = 1.0
    alpha: float = 0.01
    statistic: str = FLOOR


DEFAULT_THRESHOLDS = Thresholds()


@dataclass
class TimeCheck:
    """One phase of one cell: candidate/baseline ratio of step (or batch) times.

    `ratio` is the judged one, of `statistic`; both ratios are kept to read."""

    phase: str
    verdict: str = NOT_COMPARABLE
    statistic: str = MEDIAN
    baseline_median_s: float | None = None
    candidate_median_s: float | None = None
    baseline_floor_s: float | None = None
    candidate_floor_s: float | None = None
    median_ratio: float | None = None
    floor_ratio: float | None = None
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
    lost: str = ""  # ok in the baseline, failed or missing in the candidate: a regression
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
        found += [f"{m.name} {_pct(m.ratio)}" for m in self.memory if m.regressed]
        return found + ([self.lost] if self.lost else [])


@dataclass
class AccuracyGroup:
    """Accuracy over the matched seeds of one (spec, label, backend)."""

    key: GroupKey
    seeds: list[int]
    pairs: int  # matched cells: seeds x rounds, each a process on either side
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
        """Groups that rest on one process a side: no check across processes."""
        return [_group_name(g.key) for g in self.accuracy if g.pairs == 1]

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)

    @property
    def exit_code(self) -> int:
        return 1 if self.regressed else 0


def _group_name(key: GroupKey) -> str:
    return "/".join(part for part in key if part)


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{(ratio - 1) * 100:+.1f}%"
