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

import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from kdbench.architectures import Architecture, Conv2D, Dense, Flatten, ReLU, resolve
from kdbench.backends.base import Backend, Environment, LossConfig, Settings, Weights
from kdbench.compare import SAME, SLOWER, UNCERTAIN, Thresholds, compare_records
from kdbench.flops import phase_flops_per_step
from kdbench.harness import cell as cell_module
from kdbench.harness.cell import run_cell
from kdbench.harness.timing import efficiency, host_peak_rss, step_stats
from kdbench.initial_weights import init_weights
from kdbench.plan import rng_for
from kdbench.spec import load_spec

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


def test_host_peak_rss_is_the_high_water_mark_in_bytes() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = host_peak_rss()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert before <= peak <= after
    assert peak >= psutil.Process().memory_info().rss // 2  # bytes, not KiB


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

    def __init__(self) -> None:
        super().__init__()
        self.splits: list[int] = []  # the size of every split put on the device
        self.trained: list[StubState] = []
        self.built_seeds: list[int] = []
        self.synced = 0

    def apply_settings(self, settings: Settings) -> None:
        self.applied = settings

    @property
    def device(self) -> str:
        return "cpu"

    def environment(self) -> Environment:
        return Environment(
            framework="stub",
            framework_version="1.0",
            device="cpu",
            device_kind="cpu",
            compile_mode="eager",
            intra_op_threads=1,
            inter_op_threads=1,
            tf32_matmul=False,
            tf32_conv=False,
            deterministic=True,
            memory_counter="stub",
        )

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
    ) -> StubState:
        if teacher is not None:
            assert teacher.role == "teacher" and teacher.steps > 0, "an untrained teacher"
            assert loss.method == "soft"
            role = "distilled"
        else:
            assert loss.method == "none"
            role = "teacher" if model.arch == self.teacher_arch else "scratch"
        assert model.role is None and model.weights  # a fresh model, with initial weights
        return StubState(model, role, optimizer, loss)

    def train_step(
        self, state: StubState, data: StubData, indices: np.ndarray, lr: float
    ) -> tuple[StubState, float]:
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
        self.synced += 1

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
) -> tuple[Any, StubBackend, list[dict[str, Any]], Any]:
    """run_cell on the stub backend: (result, backend, emitted events, loaded spec)."""
    spec = tmp_path / "stub.toml"
    spec.write_text(STUB_SPEC.format(val_fraction=val_fraction))
    loaded = load_spec(str(spec))
    stub = StubBackend()
    stub.teacher_arch = loaded.teacher_arch
    asked: list[str] = []

    def get_backend(name: str) -> Backend:
        asked.append(name)
        return stub

    # Where kdbench.harness.cell looks the backend up.
    monkeypatch.setattr(cell_module, "get_backend", get_backend)
    events: list[dict[str, Any]] = []
    result = run_cell(
        loaded, "stub", 0, Settings(threads=1), emit=events.append, teacher_cache=cache
    )
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
    assert distilled.loss == LossConfig("soft", 4.0, 0.9)
    # The two students start from the same initial weights; the teacher from its own.
    assert scratch.model.weights is distilled.model.weights
    assert set(teacher.model.weights) == set(loaded.teacher_arch.param_shapes())
    assert len(set(stub.built_seeds)) == 3  # each model its own dropout stream
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
        assert phase.step_time_median_s == pytest.approx(np.median(phase.steady_times()))
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
    assert result.timings.setup_s >= 0 and result.timings.data_load_s > 0
    assert result.timings.put_dataset_s >= 0
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
    m = result.metrics
    assert m.teacher_acc == 37 / 50 and m.agreement == 30 / 50
    assert m.teacher_val_acc is None and m.scratch_val_acc is None
    assert m.distilled_val_acc is None


def test_run_cell_takes_a_cached_teacher_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "teachers"
    first, _, _, _ = stub_run(tmp_path, monkeypatch, cache=cache)
    assert len(list(cache.glob("*.npz"))) == len(list(cache.glob("*.json"))) == 1
    second, stub, events, _ = stub_run(tmp_path, monkeypatch, cache=cache)
    assert [s.role for s in stub.trained] == ["scratch", "distilled"]  # no teacher trained
    assert events[0] == {"phase": "teacher", "cached": True}
    assert second.metrics.teacher_from_cache is True
    assert second.phases["teacher"].from_cache is True
    assert first.phases["teacher"].from_cache is False
    assert second.phases["teacher"].step_times_s == first.phases["teacher"].step_times_s
    for name in ("teacher_acc", "distilled_acc", "agreement", "agreement_scratch", "gain"):
        assert getattr(second.metrics, name) == getattr(first.metrics, name)


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


def test_a_change_beyond_the_threshold_that_is_not_significant_is_uncertain() -> None:
    seeds = (0, 1, 2)
    base = [noisy_record(s) for s in seeds]
    cand = [noisy_record(s, 1.08) for s in seeds]
    th = Thresholds(time=0.05, alpha=0.01)
    cmp = compare_records(base, cand, th)
    for cell in cmp.cells:
        for phase in ("teacher", "distill"):
            check = cell.times[phase]
            assert check.ratio == pytest.approx(1.08)  # beyond the 5% threshold...
            assert check.p_value > th.alpha  # ...but 29 blocks of noise cannot tell
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
