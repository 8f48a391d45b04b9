"""Tests that catch a wrong published number (issue 14).

Each of these bugs once passed the whole suite: the parity tests give every
backend the same weights, batches and statistics, so a mistake made once in
the framework-free harness is made identically for all three frameworks and
no cross-framework comparison can see it. These tests pin the harness's own
numbers to values worked out by hand:

1. the steady-state median step time excludes the warm-up steps;
2. ``metrics.agreement`` is teacher vs the *distilled* student;
3. the "test" accuracies come from the test split, not the validation split;
4. ``compare`` judges a change beyond the threshold that is not significant
   "uncertain", never "slower";
5. the He-normal fan-in of a conv kernel includes the kernel size, and
6. the Glorot-uniform limit is sqrt(6 / (fan_in + fan_out)).

Bugs 2 and 3 are caught by a real ``run_cell`` on a stub backend whose
models are right on known rows of whatever split they are given, so every
accuracy, the gain and both agreements have exact expected values.
"""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest
from oracles.losses import distill_loss, distill_loss_grad, kl_soft, log_softmax
from stub_backend import fake_environment

from kdbench.architectures import Architecture, Conv2D, Dense, Flatten, ReLU, resolve
from kdbench.backends.base import Backend, Environment, LossConfig, Settings, Weights
from kdbench.compare import (
    FASTER,
    NOT_COMPARABLE,
    SAME,
    SLOWER,
    UNCERTAIN,
    Thresholds,
    compare_records,
    verdicts,
)
from kdbench.compare.stats import block_size, bootstrap_ratio_ci, can_be_significant, u_test
from kdbench.compare.verdicts import cell_key, classify, compare_phase, provenance
from kdbench.datasets import split
from kdbench.datasets.split import (
    RawData,
    _allocate,
    _block_rows,
    channel_stats,
    limit_train,
    make_dataset,
    normalise,
    split_rng,
)
from kdbench.errors import KdbenchError
from kdbench.flops import phase_flops_per_step
from kdbench.harness import cell as cell_module
from kdbench.harness import timing
from kdbench.harness.cell import run_cell
from kdbench.harness.prepare import prepare_cell
from kdbench.harness.timing import efficiency, host_peak_rss, step_stats
from kdbench.initial_weights import init_weights
from kdbench.plan import learning_rates, make_plan, rng_for
from kdbench.records.schema import Phase, Record
from kdbench.report.quantities import (
    Quantity,
    Stat,
    as_text,
    backend_order,
    describe,
    phases_of,
)
from kdbench.spec import NetSpec, OptimizerSpec, ScheduleSpec, load_spec

# --- 1. steady-state step times --------------------------------------------------------


def test_steady_state_statistics_leave_the_warm_up_out() -> None:
    # Two warm-up steps (compilation) far slower than the five steady ones.
    times = np.array([10.0, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    stats = step_stats(times, warmup=2, batch_size=6)
    assert stats == {
        "warmup_steps": 2,
        "warmup_s": 19.0,
        "first_step_s": 10.0,
        "steady_steps": 5,
        "step_time_median_s": 3.0,  # over all seven steps it would be 4.0
        "step_time_iqr_s": 2.0,  # linear percentiles: 4.0 - 2.0
        "step_time_p90_s": 4.6,
        "step_time_mean_s": 3.0,
        "throughput_samples_per_s": 2.0,  # 6 samples / 3.0 s
    }
    for value in stats.values():
        assert type(value) in (int, float)  # plain numbers, JSON-ready


def test_a_phase_no_longer_than_its_warm_up_keeps_its_last_step() -> None:
    stats = step_stats(np.array([8.0, 4.0, 2.0]), warmup=3, batch_size=4)
    assert stats["warmup_steps"] == 3 and stats["warmup_s"] == 14.0
    assert stats["steady_steps"] == 1
    assert stats["step_time_median_s"] == stats["step_time_mean_s"] == 2.0
    assert stats["step_time_iqr_s"] == 0.0 and stats["step_time_p90_s"] == 2.0
    assert stats["throughput_samples_per_s"] == 2.0
    # One step longer than the warm-up: that step alone is the steady state.
    stats = step_stats(np.array([8.0, 4.0, 2.0, 1.0]), warmup=3, batch_size=4)
    assert stats["steady_steps"] == 1 and stats["step_time_median_s"] == 1.0


def test_efficiency_is_the_median_step_against_the_probe() -> None:
    assert efficiency(600, 2.0, 1200.0) == {
        "flops_per_step": 600,
        "achieved_flops_per_s": 300.0,
        "fraction_of_peak": 0.25,
    }
    assert efficiency(600, 2.0, None)["fraction_of_peak"] is None


def _high_water_marks() -> tuple[int, int]:
    """The kernel's two peak-RSS counters of this process, in bytes: VmHWM (this
    memory map) and ru_maxrss (kept across exec)."""
    hwm = 0
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return hwm, RU_MAXRSS(resource.RUSAGE_SELF).ru_maxrss * 1024


RU_MAXRSS = resource.getrusage  # the real one, whatever a test patches


def test_host_peak_rss_is_a_high_water_mark_in_bytes() -> None:
    before = _high_water_marks()
    peak = host_peak_rss()
    after = _high_water_marks()
    assert any(b <= peak <= a for b, a in zip(before, after, strict=True)), (before, peak, after)
    assert peak >= psutil.Process().memory_info().rss // 2  # bytes, not KiB


def test_host_peak_rss_is_this_process_vmhwm_not_an_inherited_peak(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ru_maxrss carries a parent's peak across exec; VmHWM is this process's own."""

    class Inherited:
        ru_maxrss = 2**40  # KiB: a peak no test process reaches

    monkeypatch.setattr(timing.resource, "getrusage", lambda who: Inherited())
    before = _high_water_marks()[0]
    peak = host_peak_rss()
    after = _high_water_marks()[0]
    assert before <= peak <= after


def test_host_peak_rss_without_proc_is_ru_maxrss_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = open

    def no_proc(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file).startswith("/proc/"):
            raise FileNotFoundError(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(timing, "open", no_proc, raising=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = host_peak_rss()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert before <= peak <= after and type(peak) is int


# --- 2 and 3. accuracies, gain and agreements of a real run_cell ---------------------

# The cell: 250 synthetic samples of 5 classes, split 175 train / 25 val / 50 test.
STUB_SPEC = """
name = "stub"
[data]
dataset = "synthetic"
samples = 250
shape = [4, 4, 1]
classes = 5
val_fraction = {val_fraction}
test_fraction = 0.2
[teacher]
arch = "mlp-64"
epochs = 2
batch_size = 16
optimizer = {{ name = "sgd", lr = 0.1 }}
[student]
arch = "mlp-16"
epochs = 3
batch_size = 25
optimizer = {{ name = "adam", lr = 0.01 }}
schedule = {{ name = "cosine" }}
[distill]
method = "soft"
[measure]
warmup_steps = 3
eval_batch_size = 16
"""

# Row i of whatever split a trained model is given: right where RIGHT says so,
# else the label shifted by WRONG (the teacher and the distilled student make
# the same mistake, the scratch student another). A model that was never
# trained is wrong everywhere, with a third mistake.
RIGHT = {
    "teacher": lambda i: i % 4 != 0,
    "scratch": lambda i: i % 2 == 0,
    "distilled": lambda i: i % 3 != 0,
}
WRONG = {"teacher": 1, "scratch": 2, "distilled": 1}
UNTRAINED_WRONG = 3
ROLES = ("teacher", "scratch", "distilled")
PEAK_BYTES = 4096


@dataclass
class StubData:
    x: np.ndarray
    y: np.ndarray


@dataclass
class StubModel:
    arch: Architecture
    weights: Weights
    seed: int
    role: str | None = None  # set once trained
    steps: int = 0


@dataclass
class StubState:
    model: StubModel
    role: str
    optimizer: dict[str, Any]
    loss: LossConfig
    lrs: list[float] = field(default_factory=list)


class StubBackend(Backend):
    """No framework: models that are right on known rows, instant steps."""

    name = "stub"
    teacher_arch: Architecture | None = None  # set by the test before a run
    device_kind = "cpu"

    def __init__(self) -> None:
        super().__init__()
        self.splits: list[int] = []  # the size of every split put on the device
        self.trained: list[StubState] = []
        self.built_seeds: list[int] = []
        self.synced: list[tuple[Any, ...]] = []  # the handles of every sync

    def apply_settings(self, settings: Settings) -> None:
        self.applied = settings

    @property
    def device(self) -> str:
        return "cpu"

    def environment(self) -> Environment:
        return fake_environment(device_kind=self.device_kind, memory_counter="stub")

    def bare_loop(self) -> Any:
        raise NotImplementedError

    def put_dataset(self, x: np.ndarray, y: np.ndarray) -> StubData:
        assert len(x) == len(y)
        self.splits.append(len(y))
        return StubData(x, y)

    def build(self, arch: Architecture, weights: Weights, seed: int = 0) -> StubModel:
        self.built_seeds.append(seed)
        role = weights.get("stub.role")  # a teacher back from the cache
        if role is not None:
            weights = {k: v for k, v in weights.items() if k != "stub.role"}
        model = StubModel(arch, weights, seed)
        if role is not None:
            model.role, model.steps = str(role[0]), int(role[1])
        return model

    def get_weights(self, model: StubModel) -> Weights:
        return {**model.weights, "stub.role": np.array([model.role, model.steps])}

    def forward(self, model: Any, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def loss_and_grads(self, *args: Any, **kwargs: Any) -> tuple[float, Weights]:
        raise NotImplementedError

    def init_train(
        self,
        model: StubModel,
        optimizer: dict[str, Any],
        loss: LossConfig,
        teacher: StubModel | None = None,
        connectors: Weights | None = None,
        augment: Any = None,
    ) -> StubState:
        assert not connectors, "soft distillation has no connectors"
        assert augment is None, "the spec does not augment"
        if teacher is not None:
            assert teacher.role == "teacher" and teacher.steps > 0, "an untrained teacher"
            assert loss.method == "soft"
            role = "distilled"
        else:
            assert loss.method == "none"
            role = "teacher" if model.arch == self.teacher_arch else "scratch"
        assert model.role is None and model.weights  # a fresh model, with initial weights
        return StubState(model, role, optimizer, loss)

    def trained_connectors(self, state: StubState) -> Weights:
        return {}

    def teacher_table(self, model: Any, data: Any, batch_size: int) -> Any:
        raise NotImplementedError("the stub distils from its teacher model")

    def augmented_batch(self, *args: Any) -> np.ndarray:
        raise NotImplementedError("the spec does not augment")

    def train_step(
        self,
        state: StubState,
        data: StubData,
        indices: np.ndarray,
        lr: float,
        kd_scale: float = 1.0,
        crops: np.ndarray | None = None,
    ) -> tuple[StubState, float]:
        assert kd_scale == 1.0, "no warm-up in this spec"
        assert crops is None, "the spec does not augment"
        assert indices.dtype == np.int32 and indices.max() < len(data.y)
        state.lrs.append(float(lr))
        return state, 1.0 / len(state.lrs)  # loss 1, 1/2, 1/3, ...

    def trained_model(self, state: StubState) -> StubModel:
        self.trained.append(state)
        model = state.model
        return StubModel(model.arch, model.weights, model.seed, state.role, len(state.lrs))

    def predict(self, model: StubModel, data: StubData, indices: np.ndarray) -> np.ndarray:
        y = data.y[indices].astype(np.int64)
        if model.role is None:
            pred = y + UNTRAINED_WRONG
        else:
            right = np.array([RIGHT[model.role](int(i)) for i in indices])
            pred = np.where(right, y, y + WRONG[model.role])
        classes = model.arch.classes
        return np.eye(classes, dtype=np.float32)[pred % classes]

    def to_numpy(self, handle: Any) -> np.ndarray:
        return np.asarray(handle)

    def sync(self, *handles: Any) -> None:
        self.synced.append(handles)

    def synced_splits(self) -> tuple[StubData, ...]:
        """The handles of the first sync that waited for datasets."""
        return next(h for h in self.synced if h and isinstance(h[0], StubData))

    def matmul_probe(self, n: int, dtype: str) -> Any:
        return lambda: None

    def reset_peak_memory(self) -> None:
        pass

    def peak_memory(self) -> int | None:
        return PEAK_BYTES


def stub_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    val_fraction: float = 0.1,
    cache: Path | None = None,
    seed: int = 0,
    stub: StubBackend | None = None,
    data_dir: str | None = None,
) -> tuple[Any, StubBackend, list[dict[str, Any]], Any]:
    """run_cell on the stub backend: (result, backend, emitted events, loaded spec)."""
    spec = tmp_path / "stub.toml"
    spec.write_text(STUB_SPEC.format(val_fraction=val_fraction))
    loaded = load_spec(str(spec))
    stub = stub or StubBackend()
    stub.teacher_arch = loaded.teacher_arch
    asked: list[str] = []

    def get_backend(name: str) -> Backend:
        asked.append(name)
        return stub

    # Where kdbench.harness.cell looks the backend up.
    monkeypatch.setattr(cell_module, "get_backend", get_backend)
    events: list[dict[str, Any]] = []
    started = time.perf_counter()
    result = run_cell(
        loaded,
        "stub",
        seed,
        Settings(threads=1),
        data_dir=data_dir,
        emit=events.append,
        teacher_cache=cache,
    )
    stub.wall_s = time.perf_counter() - started
    assert asked == ["stub"]
    assert stub.applied == Settings(threads=1)
    return result, stub, events, loaded


def test_run_cell_reports_test_split_accuracies_and_agreements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, stub, events, loaded = stub_run(tmp_path, monkeypatch)
    assert (result.data.train, result.data.val, result.data.test) == (175, 25, 50)
    assert stub.splits == [175, 50, 25]  # train, test, val
    m = result.metrics
    # The test split, rows 0..49. Teacher right where i % 4 != 0: 37 rows;
    # scratch where i % 2 == 0: 25; distilled where i % 3 != 0: 33.
    assert m.teacher_acc == 37 / 50
    assert m.scratch_acc == 25 / 50
    assert m.distilled_acc == 33 / 50
    assert m.gain == pytest.approx(33 / 50 - 25 / 50, abs=1e-15)
    # Teacher and distilled agree where both are right (i % 12 in 1, 2, 5, 7,
    # 10, 11: 25 rows) or both wrong, the same mistake (i % 12 == 0: 5 rows).
    assert m.agreement == 30 / 50
    # Teacher and scratch make different mistakes: they agree only where both
    # are right (i % 4 == 2: 12 rows).
    assert m.agreement_scratch == 12 / 50
    # The validation split, rows 0..24: 18, 13 and 16 right.
    assert m.teacher_val_acc == 18 / 25
    assert m.scratch_val_acc == 13 / 25
    assert m.distilled_val_acc == 16 / 25
    assert m.teacher_from_cache is False
    assert m.teacher_params == loaded.teacher_arch.param_count() == 16 * 64 + 64 + 64 * 5 + 5
    assert m.student_params == loaded.student_arch.param_count() == 16 * 16 + 16 + 16 * 5 + 5
    assert events[-1] == {"phase": "eval"}


def test_run_cell_trains_each_model_once_from_the_prepared_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, stub, events, loaded = stub_run(tmp_path, monkeypatch)
    # Teacher: 175 // 16 = 10 steps an epoch, 2 epochs; students 175 // 25 = 7, 3 epochs.
    assert [(s.role, len(s.lrs)) for s in stub.trained] == [
        ("teacher", 20),
        ("scratch", 21),
        ("distilled", 21),
    ]
    teacher, scratch, distilled = stub.trained
    assert teacher.lrs == [0.1] * 20 and teacher.optimizer["name"] == "sgd"
    assert scratch.lrs == distilled.lrs and scratch.lrs[0] == 0.01 > scratch.lrs[-1]
    assert scratch.optimizer == distilled.optimizer == loaded.spec.student.optimizer.resolved()
    # The spec's soft loss (no alpha given: the reference weights), spelt out.
    assert distilled.loss == LossConfig("soft", 4.0, 0.9, weights=(("ce", 0.1), ("kd", 0.9)))
    # The two students start from the same initial weights; the teacher from its own.
    assert scratch.model.weights is distilled.model.weights
    assert set(teacher.model.weights) == set(loaded.teacher_arch.param_shapes())
    # Each model its own dropout stream, as prepared.
    p = prepare_cell(loaded, 0)
    assert stub.built_seeds == [p.teacher_seed, p.scratch_seed, p.student_seed]
    assert len(set(stub.built_seeds)) == 3
    # The splits are synchronised once they are on the device, before any step.
    train, test, val = stub.synced_splits()
    assert (len(train.y), len(test.y), len(val.y)) == (175, 50, 25)
    assert [e["phase"] for e in events] == ["teacher"] * 2 + ["scratch"] * 3 + ["distill"] * 3 + [
        "eval"
    ]
    assert events[0] == {"phase": "teacher", "epoch": 1, "epochs": 2}

    phases = result.phases
    assert list(phases) == ["teacher", "scratch", "distill", "eval_teacher", "eval_student"]
    t = phases["teacher"]
    assert (t.steps, t.samples, t.epochs, t.batch_size) == (20, 320, 2, 16)
    assert (t.warmup_steps, t.steady_steps, len(t.step_times_s)) == (3, 17, 20)
    assert t.loss_step0 == 1.0
    assert t.loss_epochs == pytest.approx(
        [np.mean(1 / np.arange(1, 11)), np.mean(1 / np.arange(11, 21))]
    )
    assert t.from_cache is False and t.device_peak_bytes == PEAK_BYTES
    for name, phase in phases.items():
        # The record keeps each step time in whole nanoseconds, the median unrounded:
        # the stub's microsecond steps differ by up to half a nanosecond, 1e-4 of a step.
        median = np.median(phase.steady_times())
        assert phase.step_time_median_s == pytest.approx(median, rel=1e-6, abs=5e-10)
        assert phase.flops_per_step is not None
        assert phase.achieved_flops_per_s == pytest.approx(
            phase.flops_per_step / phase.step_time_median_s
        )
        assert phase.fraction_of_peak == pytest.approx(
            phase.achieved_flops_per_s / result.probe.flops_per_s["float32"]
        )
        if not name.startswith("eval"):
            assert phase.flops_per_step == phase_flops_per_step(
                name, loaded.teacher_arch, loaded.student_arch, phase.batch_size
            )
    for name in ("eval_teacher", "eval_student"):
        assert phases[name].batch_size == 16 and len(phases[name].step_times_s) == 11
        assert phases[name].warmup_steps == 1 and phases[name].steady_steps == 10

    assert result.environment == stub.environment()
    assert result.probe.n == 1024 and result.probe.flops_per_s["float32"] > 0
    assert result.data.dataset == "synthetic"
    assert result.data.shape == [4, 4, 1] and result.data.classes == 5
    timings = result.timings
    assert 0 <= timings.setup_s < stub.wall_s and 0 < timings.data_load_s < stub.wall_s
    assert 0 <= timings.put_dataset_s < stub.wall_s
    mem = result.memory
    assert mem.framework_import_bytes == (
        mem.host_rss_after_framework_bytes - mem.host_rss_start_bytes
    )
    assert mem.host_rss_start_bytes > 0
    # The kernel updates the high-water mark lazily: it can trail the RSS a little.
    assert mem.host_peak_rss_bytes > mem.host_rss_after_framework_bytes // 2


def test_run_cell_without_a_validation_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, stub, _, _ = stub_run(tmp_path, monkeypatch, val_fraction=0.0)
    assert stub.splits == [200, 50]  # no validation split on the device
    assert [len(split.y) for split in stub.synced_splits()] == [200, 50]
    m = result.metrics
    assert m.teacher_acc == 37 / 50 and m.agreement == 30 / 50
    assert m.teacher_val_acc is None and m.scratch_val_acc is None
    assert m.distilled_val_acc is None


def test_run_cell_takes_a_cached_teacher_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "teachers"
    first, _, _, _ = stub_run(tmp_path, monkeypatch, cache=cache)
    (saved,) = cache.glob("*.npz")
    assert saved.name.startswith("stub-seed0-") and saved.with_suffix(".json").is_file()
    second, stub, events, loaded = stub_run(tmp_path, monkeypatch, cache=cache)
    assert [s.role for s in stub.trained] == ["scratch", "distilled"]  # no teacher trained
    assert stub.built_seeds[0] == prepare_cell(loaded, 0).teacher_seed
    assert events[0] == {"phase": "teacher", "cached": True}
    assert second.metrics.teacher_from_cache is True
    assert second.phases["teacher"].from_cache is True
    assert first.phases["teacher"].from_cache is False
    assert second.phases["teacher"].step_times_s == first.phases["teacher"].step_times_s
    for name in ("teacher_acc", "distilled_acc", "agreement", "agreement_scratch", "gain"):
        assert getattr(second.metrics, name) == getattr(first.metrics, name)


def test_a_damaged_cached_teacher_is_trained_again_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "teachers"
    stub_run(tmp_path, monkeypatch, cache=cache)
    (saved,) = cache.glob("*.npz")
    saved.write_bytes(b"not a zip file")
    result, stub, events, _ = stub_run(tmp_path, monkeypatch, cache=cache)
    assert [s.role for s in stub.trained] == ["teacher", "scratch", "distilled"]
    assert result.metrics.teacher_from_cache is False
    (warning,) = [e for e in events if "warning" in e]
    assert set(warning) == {"warning"}
    assert warning["warning"].startswith(f"the cached teacher {saved} cannot be read (")
    assert warning["warning"].endswith("); training it again")


# --- 4. compare: beyond the threshold but not significant is uncertain --------------


def noisy_record(seed: int, factor: float = 1.0) -> dict[str, Any]:
    """A record whose steps are log-normal (sigma 0.6) around 1 ms, times factor.

    The same seed gives the same noise, so factor scales every step exactly.
    """
    rng = np.random.default_rng(seed)
    phases = {}
    for name in ("teacher", "scratch", "distill"):
        times = factor * 1e-3 * rng.lognormal(0.0, 0.6, size=300)
        phases[name] = {"warmup_steps": 5, "step_times_s": times.tolist()}
    return {
        "schema_version": 2,
        "cell_id": f"noisy/pytorch/seed{seed}",
        "spec": {"name": "noisy", "hash": "0123456789abcdef"},
        "backend": "pytorch",
        "seed": seed,
        "settings": {"compile": "default", "precision": "float32", "threads": 1},
        "device": "cpu",
        "status": "ok",
        "phases": phases,
    }


# The floor's test sees the faster half of the blocks, whose spread is narrower:
# a smaller change stays beyond its power.
@pytest.mark.parametrize("statistic, factor", [("floor", 1.06), ("median", 1.08)])
def test_a_change_beyond_the_threshold_that_is_not_significant_is_uncertain(
    statistic: str, factor: float
) -> None:
    seeds = (0, 1, 2)
    base = [noisy_record(s) for s in seeds]
    cand = [noisy_record(s, factor) for s in seeds]
    th = Thresholds(time=0.05, alpha=0.01, statistic=statistic)
    cmp = compare_records(base, cand, th)
    for cell in cmp.cells:
        for phase in ("teacher", "distill"):
            check = cell.times[phase]
            assert check.ratio == pytest.approx(factor)  # beyond the 5% threshold...
            assert check.throughput_ratio == pytest.approx(1 / factor)
            assert check.p_value > th.alpha  # ...but blocks of this noise cannot tell
            assert check.ci[0] < 1 < check.ci[1]
            assert check.verdict == check.seed_verdict == UNCERTAIN
        assert cell.verdict == UNCERTAIN and cell.regressions == []
    assert cmp.exit_code == 0 and not cmp.regressed
    # The same noise can show a large change: then it is slower, and a change
    # within the threshold is the same.
    slow = compare_records(base, [noisy_record(s, 1.5) for s in seeds], th)
    assert {c.verdict for c in slow.cells} == {SLOWER} and slow.exit_code == 1
    same = compare_records(base, [noisy_record(s, 1.04) for s in seeds], th)
    assert {c.verdict for c in same.cells} == {SAME}


# --- 5 and 6. the scale of the initial weights ----------------------------------------


def assert_std(w: np.ndarray, expected: float, kurtosis: float) -> None:
    """Sample standard deviation against the formula, within 5 standard errors.

    The standard error of a sample standard deviation is about
    sigma * sqrt((kurtosis - 1) / (4 n)): kurtosis 3 for a normal, 1.8 for a
    uniform distribution.
    """
    n = w.size
    error = 5 * np.sqrt((kurtosis - 1) / (4 * n))
    assert w.std() == pytest.approx(expected, rel=error)
    assert abs(w.mean()) < 5 * expected / np.sqrt(n)


NORMAL, UNIFORM = 3.0, 1.8


def test_he_normal_conv_kernels_count_the_kernel_size_in_the_fan_in() -> None:
    # A 3x3 conv from 128 to 64 channels before a ReLU: fan_in = 3 * 3 * 128.
    arch = resolve(
        None, [Conv2D(filters=64, kernel=3), ReLU(), Flatten(), Dense(units=10)], (3, 3, 128), 10
    )
    w = init_weights(arch, rng_for(0, "init"))["0.kernel"]
    assert w.shape == (3, 3, 128, 64) and w.dtype == np.float32
    assert_std(w, np.sqrt(2 / (3 * 3 * 128)), NORMAL)


def test_he_normal_dense_kernels() -> None:
    arch = resolve(None, [Flatten(), Dense(units=256), ReLU(), Dense(units=10)], (16, 16, 1), 10)
    w = init_weights(arch, rng_for(1, "init"))["1.kernel"]
    assert w.shape == (256, 256)
    assert_std(w, np.sqrt(2 / 256), NORMAL)


def test_glorot_uniform_dense_kernels() -> None:
    # The logit layer, 256 -> 128: limit sqrt(6 / (256 + 128)), std limit / sqrt(3).
    arch = resolve(None, [Flatten(), Dense(units=128)], (16, 16, 1), 128)
    w = init_weights(arch, rng_for(2, "init"))["1.kernel"]
    limit = np.sqrt(6 / (256 + 128))
    assert w.shape == (256, 128)
    assert_std(w, limit / np.sqrt(3), UNIFORM)
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.999 * limit  # uniform: it reaches the limit


def test_glorot_uniform_conv_kernels() -> None:
    # A 3x3 conv from 128 to 64 channels with no ReLU after it: fan_in 9 * 128,
    # fan_out 9 * 64 (the receptive field counts on both sides).
    arch = resolve(
        None, [Conv2D(filters=64, kernel=3), Flatten(), Dense(units=10)], (3, 3, 128), 10
    )
    weights = init_weights(arch, rng_for(3, "init"))
    w = weights["0.kernel"]
    limit = np.sqrt(6 / (9 * 128 + 9 * 64))
    assert_std(w, limit / np.sqrt(3), UNIFORM)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.999 * limit
    assert weights["0.bias"].shape == (64,) and not weights["0.bias"].any()
    assert weights["2.kernel"].shape == (64, 10)  # the logit layer, Glorot too
    assert_std(weights["2.kernel"], np.sqrt(2 / (64 + 10)), UNIFORM)


def test_a_cached_teacher_serves_only_its_own_seed_and_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "teachers"
    stub_run(tmp_path, monkeypatch, cache=cache)
    _, stub, _, _ = stub_run(tmp_path, monkeypatch, cache=cache, seed=1)
    assert [s.role for s in stub.trained] == ["teacher", "scratch", "distilled"]

    class OtherStub(StubBackend):
        name = "other"

    _, other, _, _ = stub_run(tmp_path, monkeypatch, cache=cache, stub=OtherStub())
    assert [s.role for s in other.trained] == ["teacher", "scratch", "distilled"]
    assert sorted(p.name.split("-")[0] + p.name.split("-")[1] for p in cache.glob("*.npz")) == [
        "otherseed0",
        "stubseed0",
        "stubseed1",
    ]


def test_run_cell_loads_the_data_from_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []

    def prepare(loaded: Any, seed: int, data_dir: str | None = None) -> Any:
        seen.append((seed, data_dir))
        return prepare_cell(loaded, seed, data_dir)

    monkeypatch.setattr(cell_module, "prepare_cell", prepare)
    stub_run(tmp_path, monkeypatch, seed=2, data_dir=str(tmp_path / "data"))
    assert seen == [(2, str(tmp_path / "data"))]


def test_the_probe_on_a_gpu_multiplies_larger_matrices_in_two_precisions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu = StubBackend()
    gpu.device_kind = "gpu"
    result, _, _, _ = stub_run(tmp_path, monkeypatch, stub=gpu)
    assert result.probe.n == 4096 and set(result.probe.flops_per_s) == {"float32", "bfloat16"}
    assert result.environment.on_gpu


# --- the learning-rate schedule (kdbench.plan) ----------------------------------------


def _net(schedule: ScheduleSpec) -> NetSpec:
    """A network spec built without validation, so the guards of direct callers show."""
    optimizer = OptimizerSpec(name="sgd", lr=0.1)
    return NetSpec.model_construct(
        arch="linear", epochs=4, batch_size=10, optimizer=optimizer, schedule=schedule
    )


def test_the_step_schedule_decays_by_a_tenth_unless_told() -> None:
    plan = make_plan(50, 10, 4, rng_for(0, "plan"))  # 5 steps an epoch, 20 steps
    lrs = learning_rates(_net(ScheduleSpec(name="step", every_epochs=1)), plan)
    np.testing.assert_allclose(lrs, 0.1 * 0.1 ** np.repeat(np.arange(4), 5), rtol=1e-12)
    unchecked = ScheduleSpec.model_construct(name="step", every_epochs=None, gamma=None)
    with pytest.raises(ValueError) as raised:
        learning_rates(_net(unchecked), plan)
    assert str(raised.value) == "schedule 'step' needs every_epochs"


# --- the float64 loss oracle (tests/oracles/losses.py) -------------------------------


def test_the_oracle_computes_in_float64_whatever_it_is_given() -> None:
    """The float32 logits a backend trains on, through the oracle, give what their
    float64 values give: no step of the oracle rounds to float32."""
    rng = np.random.default_rng(5)
    s32 = rng.normal(0, 3, size=(6, 7)).astype(np.float32)
    t32 = rng.normal(0, 3, size=(6, 7)).astype(np.float32)
    s64, t64 = s32.astype(np.float64), t32.astype(np.float64)
    y = rng.integers(0, 7, size=6)
    assert log_softmax(s32).dtype == np.float64
    np.testing.assert_array_equal(log_softmax(s32), log_softmax(s64))
    assert kl_soft(s32, t32, 3.0) == kl_soft(s64, t64, 3.0)
    for method in ("none", "soft", "hard"):
        args = (y, t32, 3.0, 0.7)
        assert distill_loss(method, s32, *args) == distill_loss(method, s64, y, t64, 3.0, 0.7)
        np.testing.assert_array_equal(
            distill_loss_grad(method, s32, *args), distill_loss_grad(method, s64, y, t64, 3.0, 0.7)
        )


def test_the_oracle_softmax_is_over_the_last_axis() -> None:
    z = np.random.default_rng(6).normal(size=(2, 3, 4))
    out = log_softmax(z)
    np.testing.assert_allclose(np.exp(out).sum(axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(out[1, 2], log_softmax(z[1, 2][None])[0], rtol=1e-12)


def test_the_oracle_defaults_are_the_harness_defaults() -> None:
    rng = np.random.default_rng(7)
    s, t = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    y = np.array([0, 1, 2, 3])
    default = LossConfig("soft")
    assert (default.temperature, default.alpha) == (4.0, 0.9)
    for method in ("soft", "hard"):
        explicit = (default.temperature, default.alpha)
        assert distill_loss(method, s, y, t) == distill_loss(method, s, y, t, *explicit)
        np.testing.assert_array_equal(
            distill_loss_grad(method, s, y, t), distill_loss_grad(method, s, y, t, *explicit)
        )


def test_the_oracle_names_an_unknown_method() -> None:
    s = np.zeros((1, 3))
    for function in (distill_loss, distill_loss_grad):
        with pytest.raises(ValueError) as raised:
            function("dkd", s, np.array([0]), s)
        assert str(raised.value) == "unknown method 'dkd'"


# --- split and normalisation (kdbench/datasets/split.py) ----------------------------


def test_allocate_shares_by_largest_remainder_ties_to_the_first_class() -> None:
    shares = _allocate(np.array([11, 4]), 3)  # quotas 2.2 and 0.8: the 0.8 gets the spare
    assert shares.dtype == np.int64 and shares.tolist() == [2, 1]
    assert _allocate(np.array([2, 1]), 1).tolist() == [1, 0]
    # Forty classes, ten spares, twenty tied remainders: the first ten of them win.
    shares = _allocate(np.array([1, 3] * 20), 10)
    assert shares.tolist() == [0, 1] * 10 + [0, 0] * 10
    for counts, total in (([3, 2], 0), ([0, 0], 2)):
        shares = _allocate(np.array(counts), total)
        assert shares.dtype == np.int64 and shares.tolist() == [0, 0]


def test_limit_train_draws_without_replacement() -> None:
    train = np.arange(0, 200, 2)
    kept = limit_train(train, 60, split_rng(0))
    assert len(np.unique(kept)) == 60 and set(kept.tolist()) <= set(train.tolist())
    assert np.all(np.diff(kept) > 0)
    assert limit_train(train, 100, split_rng(0)) is train


def test_blocks_hold_about_a_fixed_number_of_pixels() -> None:
    def shaped(*shape: int) -> np.ndarray:
        return np.broadcast_to(np.zeros(1, np.uint8), shape)

    assert _block_rows(shaped(10, 32, 32, 3)) == (1 << 22) // 3072
    assert _block_rows(shaped(1, 2049, 2048, 1)) == 1  # one image larger than a block
    assert _block_rows(shaped(5, 0, 4, 1)) == 1 << 22  # empty images


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_statistics_and_normalisation_are_exact_across_blocks(
    monkeypatch: pytest.MonkeyPatch, dtype: type
) -> None:
    """Blocks of 3 images (48 pixels of 4x4): every block counts, in float64."""
    monkeypatch.setattr(split, "_BLOCK_ELEMENTS", 3 * 4 * 4 * 2)
    rng = np.random.default_rng(8)
    if dtype is np.uint8:
        x = rng.integers(0, 256, (40, 4, 4, 2), dtype=np.uint8)
    else:
        x = (rng.random((40, 4, 4, 2)) * 255).astype(dtype)
    rows = np.array([0, 3, 4, 7, 9, 10, 12, 20, 21, 25, 30, 31, 39])  # 13 rows: 5 blocks
    pixels = x[rows].astype(np.float64) / 255.0
    mean, std = channel_stats(x, rows, 255.0)
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-13)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 1, 2)), rtol=1e-13)
    out = normalise(x, rows, 255.0, mean, std)
    assert out.dtype == np.float32 and out.shape == (13, 4, 4, 2) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, ((pixels - mean) / std).astype(np.float32))


def _raw(n: int, official_test: int = 0) -> RawData:
    rng = np.random.default_rng(n)
    x = rng.integers(0, 256, (n, 2, 2, 1), dtype=np.uint8)
    x_test = rng.integers(0, 256, (official_test, 2, 2, 1), dtype=np.uint8)
    y_test = np.arange(official_test) % 2
    return RawData(
        x=x,
        y=np.arange(n) % 2,
        x_test=x_test if official_test else None,
        y_test=y_test if official_test else None,
        scale=255.0,
        source="hand-made",
    )


def test_a_split_asked_to_be_empty_may_be_empty() -> None:
    ds = make_dataset(
        "t", 2, _raw(20), seed=0, val_fraction=0.0, test_fraction=0.0, train_limit=None
    )
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (20, 0, 0)
    ds = make_dataset(
        "t", 2, _raw(20, 6), seed=0, val_fraction=0.0, test_fraction=0.2, train_limit=None
    )
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (20, 0, 6)


@pytest.mark.parametrize(
    ("n", "val_fraction", "test_fraction", "message"),
    [
        (4, 0.4, 0.4, "the train split is empty (train 0, val 2, test 2)"),
        (3, 0.0, 0.1, "the test split is empty (train 3, val 0, test 0)"),
    ],
)
def test_an_empty_split_is_refused_with_its_sizes(
    n: int, val_fraction: float, test_fraction: float, message: str
) -> None:
    with pytest.raises(KdbenchError) as raised:
        make_dataset(
            "tiny", 2, _raw(n), seed=0, val_fraction=val_fraction,
            test_fraction=test_fraction, train_limit=None,
        )  # fmt: skip
    assert str(raised.value) == (
        f"dataset 'tiny': {message}; use more samples or change val_fraction/test_fraction"
    )


def test_the_dataset_records_its_pixel_scale() -> None:
    raw = _raw(20)
    digits_like = RawData(raw.x // 16, raw.y, None, None, scale=16.0, source="0..16")
    ds = make_dataset(
        "t", 2, digits_like, seed=0, val_fraction=0.1, test_fraction=0.2, train_limit=None
    )
    assert ds.pixel_scale == 16.0 and ds.source == "0..16"


def test_the_dataset_records_where_it_came_from() -> None:
    ds = make_dataset("t", 2, _raw(20), seed=4, val_fraction=0.1, test_fraction=0.2, train_limit=12)
    assert ds.source == "hand-made" and ds.pixel_scale == 255.0
    assert type(ds.pixel_scale) is float
    assert ds.summary() == {
        "name": "t",
        "shape": [2, 2, 1],
        "classes": 2,
        "train": 12,
        "val": 2,
        "test": 4,
        "split_seed": 4,
        "official_test": False,
        "train_limit": 12,
        "mean": [float(ds.mean[0])],
        "std": [float(ds.std[0])],
        "source": "hand-made",
    }


# --- compare: the statistics (kdbench/compare/stats.py) -------------------------------


@pytest.mark.parametrize(("n", "m"), [(4, 4), (3, 5), (5, 5), (2, 10)])
def test_a_test_can_be_significant_only_when_the_extreme_ordering_is_rare_enough(
    n: int, m: int
) -> None:
    """2 / C(n + m, n) is the smallest two-sided p-value n vs m samples can give."""
    smallest = 2 / math.comb(n + m, n)
    assert can_be_significant(n, m, smallest * 1.001)
    assert not can_be_significant(n, m, smallest * 0.999)


@pytest.mark.parametrize(("n", "m"), [(2, 3), (4, 8)])
def test_a_p_value_equal_to_alpha_is_not_below_it(n: int, m: int) -> None:
    # Pairs where log(2 / alpha) and the log of C(n + m, n) agree to the last bit.
    assert not can_be_significant(n, m, 2 / math.comb(n + m, n))


@pytest.mark.parametrize(
    ("n", "m", "size"), [(10, 500, 1), (50, 500, 2), (199, 1000, 9), (1000, 300, 10)]
)
def test_block_size_keeps_twenty_blocks_up_to_ten_steps_each(n: int, m: int, size: int) -> None:
    assert block_size(n, m) == size and type(block_size(n, m)) is int


def test_bootstrap_interval_quantiles_of_resampled_blocks() -> None:
    """Baseline blocks 1 and 3: a resample's median is 1, 2 or 3 (1/4, 1/2, 1/4);
    candidate blocks are all 2, so the ratio is 2, 1 or 2/3."""
    base, cand = np.array([[1.0], [3.0]]), np.array([[2.0], [2.0]])
    lo, hi = bootstrap_ratio_ci(base, cand, alpha=0.2)  # quantiles 0.1 and 0.9
    assert (lo, hi) == (pytest.approx(2 / 3), pytest.approx(2.0))
    assert bootstrap_ratio_ci(base, cand, alpha=0.6) == (1.0, 1.0)  # quantiles 0.3 and 0.7
    noisy = np.random.default_rng(9).lognormal(size=(30, 10))
    assert bootstrap_ratio_ci(noisy, 1.1 * noisy, 0.01) == bootstrap_ratio_ci(
        noisy, 1.1 * noisy, 0.01
    )  # a fixed seed: the same runs, the same interval
    ones = np.ones((4, 3))
    assert bootstrap_ratio_ci(ones, 2 * ones, alpha=0.1, resamples=1) == (2.0, 2.0)


def test_u_test_direction_and_a_missing_p_value() -> None:
    # U counts the (candidate, baseline) pairs where the candidate is slower.
    assert u_test(np.array([[1.0], [4.0]]), np.array([[2.0], [3.0]]))[1] is False  # U = nm/2
    base, cand = np.array([[5.0], [6.0], [7.0]]), np.array([[1.0], [5.5], [8.0]])
    assert u_test(base, cand)[1] is False  # U = 4 < 9 / 2
    assert u_test(cand, base)[1] is True  # U = 5
    with np.errstate(invalid="ignore"):
        p_value, _ = u_test(np.array([[1.0], [2.0], [np.nan]]), np.array([[3.0], [4.0], [5.0]]))
    assert p_value == 1.0  # scipy says nan: no evidence of a change


# --- compare: the verdicts (kdbench/compare/verdicts.py) -------------------------------


def test_classify_needs_a_change_beyond_the_threshold_and_significant() -> None:
    assert classify(1.0, True, 0.05) == SAME
    assert classify(1 - 0.05, True, 0.05) == FASTER  # at the threshold is beyond it
    assert classify(1 + 0.05, True, 0.05) == SLOWER
    assert classify(0.8, True, 0.05) == FASTER
    assert classify(0.8, False, 0.05) == UNCERTAIN


def test_a_phase_missing_on_one_side_is_named() -> None:
    times = Phase(warmup_steps=1, step_times_s=[1.0, 2.0])
    for base, cand, side in ((None, times, "baseline"), (times, None, "candidate")):
        check = compare_phase("distill", base, cand, Thresholds())
        assert check.verdict == NOT_COMPARABLE
        assert check.note == f"no distill phase in the {side}"


def test_a_phase_with_medians_only_on_one_side_is_judged_on_the_threshold() -> None:
    raw = Phase(warmup_steps=1, step_times_s=[9.0, 2.0, 2.0, 2.0], step_time_median_s=2.0)
    median_only = Phase(step_time_median_s=2.5)
    check = compare_phase("eval", raw, median_only, Thresholds())
    assert check.medians_only and check.verdict == check.seed_verdict == UNCERTAIN
    assert (check.baseline_median_s, check.candidate_median_s) == (2.0, 2.5)
    assert (check.ratio, check.throughput_ratio) == (1.25, 0.8)
    empty = compare_phase("eval", raw, Phase(), Thresholds())
    assert empty.verdict == NOT_COMPARABLE and empty.note == "eval: no step times recorded"


def test_provenance_names_commits_and_frameworks() -> None:
    def rec(commit: str | None, dirty: bool, version: str) -> Record:
        host = {"git_commit": commit, "git_dirty": dirty}
        return Record.model_validate(
            {**noisy_record(0), "host": host, "framework": "torch", "framework_version": version}
        )

    records = [rec("0123456789abcdef", False, "2.1"), rec("fedcba9876543210", True, "2.0")]
    assert provenance(records) == "commit 0123456789, fedcba9876+dirty; torch 2.0, torch 2.1"
    bare = Record.model_validate(noisy_record(0))
    assert provenance([bare]) == "commit ?; ?"


def test_cells_are_named_by_spec_label_backend_seed_and_round() -> None:
    assert cell_key(Record.model_validate(noisy_record(3))) == ("noisy", "", "pytorch", 3, 0)
    labelled = Record.model_validate({**noisy_record(3), "label": "bs64"})
    assert cell_key(labelled) == ("noisy", "bs64", "pytorch", 3, 0)
    # The environment of an A/B run is not in the key: two environments are
    # two sides (compare --envs), their cells paired round by round.
    ab = Record.model_validate({**noisy_record(3), "env": "b", "round": 2})
    assert cell_key(ab) == ("noisy", "", "pytorch", 3, 2)


def _rec(seed: int = 0, factor: float = 1.0, **fields: Any) -> dict[str, Any]:
    record = noisy_record(seed, factor)
    record.update(fields)
    return record


def test_every_difference_that_refuses_a_pair_is_listed() -> None:
    other = _rec(
        settings={"compile": "default", "precision": "tf32", "threads": 4},
        spec={"name": "noisy", "hash": "fedcba9876543210"},
        device="cuda:0",
    )
    (cell,) = compare_records([_rec()], [other]).cells
    assert cell.refused and cell.reason == (
        "spec content changed: hash 0123456789abcdef vs fedcba9876543210; "
        "device differs: cpu vs cuda:0; "
        "settings differ: precision float32 vs tf32, threads 1 vs 4"
    )
    (forced,) = compare_records([_rec()], [other], force=True).cells
    assert forced.forced == "forced: " + cell.reason and forced.compared


def test_memory_is_compared_only_where_both_sides_measured_it() -> None:
    def rec(host: int | None, device: int | None) -> dict[str, Any]:
        record = _rec(memory={"host_peak_rss_bytes": host})
        record["phases"]["distill"]["device_peak_bytes"] = device
        return record

    (cell,) = compare_records([rec(1000, 2000)], [rec(1100, None)]).cells
    (host,) = cell.memory  # no device peak in the candidate: nothing to compare
    assert (host.name, host.baseline_bytes, host.candidate_bytes) == ("host peak RSS", 1000, 1100)
    assert host.ratio == 1.1 and not host.regressed  # exactly the threshold is not beyond it
    (cell,) = compare_records([rec(None, 2000)], [rec(1000, 2300)]).cells
    (device,) = cell.memory
    assert (device.baseline_bytes, device.candidate_bytes, device.regressed) == (2000, 2300, True)


def test_an_eval_phase_on_one_side_only_is_listed() -> None:
    cand = _rec()
    cand["phases"]["eval_student"] = {"warmup_steps": 1, "step_times_s": [1.0, 1.0]}
    (cell,) = compare_records([_rec()], [cand]).cells
    assert list(cell.times) == ["teacher", "distill", "eval_student"]
    assert cell.times["eval_student"].note == "no eval_student phase in the baseline"


def test_a_missing_cell_keeps_its_record_name() -> None:
    cells = compare_records([_rec(0)], [_rec(0), _rec(1)]).cells
    assert [c.cell_id for c in cells] == ["noisy/pytorch/seed0", "noisy/pytorch/seed1"]
    assert cells[1].reason == "missing in baseline"


def test_failed_cells_give_their_status_and_first_error_line() -> None:
    failed = _rec(status="failed", error="RuntimeError: boom\nTraceback follows")
    timeout = _rec(status="timeout")
    (cell,) = compare_records([failed], [timeout]).cells
    assert cell.reason == "baseline failed: RuntimeError: boom; candidate timeout"


def test_accuracy_deltas_and_the_framework_version() -> None:
    base = _rec(framework="torch", framework_version="2.0")
    base["metrics"] = {"teacher_acc": 0.75, "scratch_acc": 0.5}
    cand = _rec(framework="torch", framework_version="2.1")
    cand["metrics"] = {"teacher_acc": 0.7421875, "distilled_acc": 0.5}
    (cell,) = compare_records([base], [cand]).cells
    assert cell.accuracy_delta_pts == {"teacher": -0.78125, "scratch": None, "distilled": None}
    assert "torch 2.0 -> 2.1" in cell.notes
    (same,) = compare_records([base], [base]).cells
    assert not any("->" in note for note in same.notes)


def test_accuracy_groups_average_over_seeds() -> None:
    def rec(seed: int, backend: str, teacher: float, scratch: float) -> dict[str, Any]:
        record = _rec(seed, backend=backend, cell_id=f"noisy/{backend}/seed{seed}")
        record["metrics"] = {"scratch_acc": scratch, "teacher_acc": teacher}
        return record

    base = [rec(0, "jax", 0.75, 0.5), rec(0, "pytorch", 0.75, 0.5), rec(1, "pytorch", 0.75, 0.5)]
    cand = [rec(0, "jax", 0.75, 0.5), rec(0, "pytorch", 0.7421875, 0.5)]
    cand.append(rec(1, "pytorch", 0.75, 0.5 - 0.015625))
    jax, torch_ = compare_records(base, cand, Thresholds(accuracy=0.78125)).accuracy
    assert jax.note == "1 seed: threshold only, no averaging over seeds"
    assert jax.spread_pts == {"teacher": 0.0, "scratch": 0.0}
    assert torch_.note == "mean over 2 seeds" and torch_.seeds == [0, 1]
    assert torch_.mean_delta_pts == {"teacher": -0.390625, "scratch": -0.78125}
    assert torch_.spread_pts["teacher"] == pytest.approx(0.78125 / math.sqrt(2))
    assert torch_.regressed == []  # a mean drop of exactly the threshold is not beyond it
    th = Thresholds(accuracy=0.78)
    assert compare_records(base, cand, th).accuracy[1].regressed == ["scratch"]
    for record in base + cand:
        del record["metrics"]["teacher_acc"]  # no teacher accuracy: the others still count
    assert compare_records(base, cand, th).accuracy[1].mean_delta_pts == {"scratch": -0.78125}


def test_a_change_must_show_in_every_seed() -> None:
    seeds = (0, 1, 2)
    base = [_rec(s) for s in seeds] + [_rec(0, backend="jax", cell_id="noisy/jax/seed0")]
    # jax: one seed, 30% slower: it stands. pytorch: only seed 1 is 30% slower.
    cand = [_rec(0), _rec(1, 1.3), _rec(2)] + [
        _rec(0, 1.3, backend="jax", cell_id="noisy/jax/seed0")
    ]
    cmp = compare_records(base, cand, Thresholds(alpha=0.05))
    verdicts = {(c.key[2], c.key[3]): c.verdict for c in cmp.cells}
    assert verdicts == {
        ("jax", 0): SLOWER,
        ("pytorch", 0): SAME,
        ("pytorch", 1): UNCERTAIN,
        ("pytorch", 2): SAME,
    }
    seed1 = cmp.cells[2].times["teacher"]
    assert seed1.seed_verdict == SLOWER
    assert seed1.note == "teacher slower here, not in every seed (seed 0 same, seed 2 same)"
    assert seed1.note in cmp.cells[2].notes


def test_a_slower_phase_makes_the_cell_slower_and_keeps_every_note() -> None:
    cand = _rec(0, 1.5)
    del cand["phases"]["distill"]
    (cell,) = compare_records([_rec(0)], [cand]).cells
    assert cell.verdict == SLOWER
    assert cell.notes == ["no distill phase in the candidate"]


def test_compare_refuses_differences_unless_forced_and_names_the_sides() -> None:
    other = _rec(device="cuda:0")
    cmp = compare_records([_rec()], [other])
    assert cmp.cells[0].refused and (cmp.baseline, cmp.candidate) == ("baseline", "candidate")
    named = compare_records([_rec()], [_rec()], names=("main", "branch"))
    assert (named.baseline, named.candidate) == ("main", "branch")


# --- report: the quantities and their intervals (kdbench/report/quantities.py) --------


def test_a_quantity_takes_the_show_table_header_or_makes_one() -> None:
    assert Quantity.from_show("metrics.agreement_scratch", "%", "ci") == Quantity(
        "metrics.agreement_scratch", "agreement scratch %", "%", 100.0, 2, "ci"
    )
    assert Quantity.from_show("metrics.gain", "pts", "ci", "KD gain pts") == Quantity(
        "metrics.gain", "KD gain pts", "pts", 100.0, 2, "ci"
    )
    assert Quantity.from_show("metrics.agreement", "%", "median") == Quantity(
        "metrics.agreement", "agreement %", "%", 100.0, 1, "median"
    )
    # A phase field is a quantity of every phase; anything else is refused.
    assert Quantity("warmup_s", "warm-up ms", "ms", 1e3, 1, "median").column == "warmup_s"
    with pytest.raises(KeyError):
        Quantity("no_such_field", "x", "x", 1.0, 0, "median")


def test_describe_ignores_missing_and_infinite_values() -> None:
    stat = describe([1.0, None, 3.0, float("inf"), float("nan"), 2.0])
    assert (stat.n, stat.mean, stat.median, stat.min, stat.max) == (3, 2.0, 2.0, 1.0, 3.0)
    assert stat.sd == 1.0
    one = describe([5.0])
    assert (one.n, one.mean, one.median, one.min, one.max) == (1, 5.0, 5.0, 5.0, 5.0)
    assert all(math.isnan(v) for v in (one.sd, one.ci_low, one.ci_high))
    none = describe([None])
    assert none.n == 0
    assert all(math.isnan(getattr(none, f)) for f in Stat.__dataclass_fields__ if f != "n")


def test_phases_come_in_the_order_a_cell_runs_them() -> None:
    frame = pd.DataFrame(
        columns=[
            "phases.zeta.step_time_median_s",
            "phases.eval_student.warmup_s",
            "phases.teacher.warmup_s",
            "phases.odd",
            "metrics.extra.value",
            "phases.distill.warmup_s",
        ]
    )
    assert phases_of(frame) == ["teacher", "distill", "eval_student", "zeta"]


def test_table_text_of_values_and_backends() -> None:
    assert as_text(None) == "-" and as_text(float("nan")) == "-"
    assert as_text(2.0) == "2" and as_text(2.5) == "2.5" and as_text("x") == "x"
    assert as_text(np.float64(3.0)) == "3" and as_text(np.int64(4)) == "4"
    assert backend_order(["stub", "jax", "pytorch", "jax", "another"]) == [
        "pytorch",
        "jax",
        "another",
        "stub",
    ]


def test_an_unreadable_side_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text(json.dumps(noisy_record(0)) + "\n")

    def unreadable(path: Path) -> Any:
        raise OSError("disk on fire")

    monkeypatch.setattr(verdicts, "read_records", unreadable)
    with pytest.raises(KdbenchError) as raised:
        verdicts.load_side(run)
    assert str(raised.value) == f"{run / 'results.jsonl'}: cannot read it (disk on fire)"


def test_a_candidate_that_failed_without_a_message_is_still_compared() -> None:
    (cell,) = compare_records([_rec()], [_rec(status="failed", error=None)]).cells
    assert cell.verdict == NOT_COMPARABLE and cell.reason == "candidate failed"


def test_a_cell_lost_in_the_candidate_names_its_first_error_line_cut_short() -> None:
    def lost(error: str | None) -> str:
        cmp = compare_records([_rec()], [_rec(status="failed", error=error)])
        return cmp.cells[0].lost

    assert lost(None) == "candidate failed (ok in the baseline)"
    assert lost("RuntimeError: boom\nTraceback") == (
        "candidate failed (ok in the baseline): RuntimeError: boom"
    )
    assert lost("E" * 300) == "candidate failed (ok in the baseline): " + "E" * 200
