"""`kdbench compare`: real runs for the proof, synthetic records for the rules.

The proof uses real, noisy data from this machine: an A/A run (the same spec
in two environments of one interpreter, their cells alternating in time so
that a change of machine load hits both) must not be called a regression,
and a copy of one run with every step 20% slower must be, while 2% slower
must not.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ab_envs import env_flags, interpreter
from conftest import tiny_spec

from kdbench.backends.base import is_installed
from kdbench.compare import (
    FASTER,
    NOT_COMPARABLE,
    SAME,
    SLOWER,
    UNCERTAIN,
    Thresholds,
    compare_records,
)
from kdbench.compare.stats import faster_half, fastest_block

# Realistic step counts (about 470 steady steps per phase, ~0.5 ms each): the
# tiny 78-step spec of test_cli is too short to tell 20% from noise on a
# loaded machine, and the compare says so (uncertain) rather than guess.
STEPS_SPEC = tiny_spec("steps", epochs=3, batch_size=8, warmup=5)

needs_torch = pytest.mark.skipif(not is_installed("pytorch"), reason="torch is not installed")
Records = list[dict[str, Any]]


# --- helpers -------------------------------------------------------------------------


def _main() -> Callable[[list[str]], int]:
    from kdbench.commands import main

    return main


def run_compare(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = _main()(["compare", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def write_run(path: Path, records: Records) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    (path / "results.jsonl").write_text(text)
    return path


def read_run(path: Path) -> Records:
    return [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]


# A phase whose 10-step block medians spread less than this (q75/q25) shows a
# 20% change beyond doubt; a busier machine may leave compare honestly uncertain.
QUIET = 1.1


def block_spread(times: list[float], block: int = 10) -> float:
    """q75 / q25 of the medians of consecutive blocks: the noise compare's test sees."""
    medians = [np.median(times[i : i + block]) for i in range(0, len(times) - block + 1, block)]
    q1, q3 = np.percentile(medians, [25, 75])
    return float(q3 / q1)


def slower(records: Records, factor: float, backend: str = "pytorch") -> Records:
    """Every timing of one backend multiplied by factor: raw steps, medians, throughput."""
    out = copy.deepcopy(records)
    for record in out:
        if record["backend"] != backend:
            continue
        for phase in record["phases"].values():
            if "step_times_s" in phase:
                phase["step_times_s"] = [t * factor for t in phase["step_times_s"]]
            for key in list(phase):
                if key.endswith("_s") and isinstance(phase[key], float):
                    phase[key] *= factor
            phase["throughput_samples_per_s"] /= factor
    return out


def more_memory(records: Records, factor: float) -> Records:
    out = copy.deepcopy(records)
    for record in out:
        record["memory"]["host_peak_rss_bytes"] = int(
            record["memory"]["host_peak_rss_bytes"] * factor
        )
    return out


def less_accurate(records: Records, points: float) -> Records:
    out = copy.deepcopy(records)
    for record in out:
        record["metrics"]["distilled_acc"] -= points / 100
    return out


def synthetic(seed: int, scale: float = 1.0, steps: int = 300, **fields: Any) -> dict[str, Any]:
    """A record with the fields compare reads; step times log-normal around 1 ms."""
    rng = np.random.default_rng(seed + 100)
    phases = {}
    for name in ("teacher", "scratch", "distill"):
        times = scale * 1e-3 * rng.lognormal(0.0, 0.1, size=steps)
        phases[name] = {
            "warmup_steps": 5,
            "step_times_s": times.tolist(),
            "step_time_median_s": float(np.median(times[5:])),
            "device_peak_bytes": None,
        }
    phases["eval"] = {"batch_time_median_s": 1e-4, "device_peak_bytes": None}
    record: dict[str, Any] = {
        "schema_version": 1,
        "cell_id": f"syn/pytorch/seed{seed}",
        "spec": {"name": "syn", "hash": "0123456789abcdef"},
        "backend": "pytorch",
        "seed": seed,
        "label": "",
        "settings": {"compile_mode": "eager", "precision": "float32", "threads": 1},
        "device": "cpu",
        "framework": "torch",
        "framework_version": "2.0",
        "status": "ok",
        "error": None,
        "phases": phases,
        "memory": {"host_peak_rss_bytes": 300 * 2**20},
        "metrics": {"teacher_acc": 0.95, "scratch_acc": 0.85, "distilled_acc": 0.88},
    }
    record.update(fields)
    return record


# --- the proof on real runs ----------------------------------------------------------


# Five seeds: a phase is called slower or faster only if it is so in every
# seed, and each seed is a process with a speed of its own (eval batches of
# one process came out 2x slower than the others' on a quiet machine). With
# three seeds, same-code sides agree in every seed by chance 1 time in 4 where
# each seed's test is significant; with five, 1 in 16.
AA_SEEDS = 5


@dataclass(frozen=True)
class RealRuns:
    ab: Path  # the A/B run: environments a and b, the same interpreter
    a: Path  # its environment a as a plain run (for copies made slower)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> RealRuns:
    """An A/A run: the same spec in two environments (this interpreter under two
    labels) whose cells alternate in time (a0 b0 a1 b1 ...), so that a change of
    machine load hits both sides alike.

    Not two runs side by side: those go in lockstep, one a little behind, and a
    short phase near a cell's end (the eval batches) then always meets the other
    run in the same state; in a CI run b's eval batches came out 30% faster in
    every seed. Not pinned to a CPU each either: a pinned run keeps its CPU's
    other load for its whole length, and all of its seeds come out slower (or
    faster) together.
    """
    if not is_installed("pytorch"):
        pytest.skip("torch is not installed")
    root = tmp_path_factory.mktemp("compare")
    spec = root / "steps.toml"
    spec.write_text(STEPS_SPEC)
    envs = env_flags(*((e, interpreter(root / "envs", e)) for e in ("a", "b")))
    done = subprocess.run(
        [sys.executable, "-m", "kdbench", "run", str(spec), "--backend", "pytorch", *envs]
        + ["--seeds", str(AA_SEEDS), "--threads", "1", "--out", str(root / "ab")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    records = read_run(root / "ab")
    assert [r["env"] for r in records] == ["a", "b"] * AA_SEEDS  # alternating
    mine = [{**r, "env": "", "cell_id": r["cell_id"].replace("/env=a", "")} for r in records
            if r["env"] == "a"]  # fmt: skip
    return RealRuns(root / "ab", write_run(root / "a", mine))


@needs_torch
@pytest.mark.torch
@pytest.mark.slow
def test_the_same_code_in_two_environments_of_an_ab_run_is_not_a_regression(
    real_runs: RealRuns, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, out, err = run_compare(
        capsys, real_runs.ab, "--envs", "a", "b", "--json", tmp_path / "aa.json"
    )
    print(out)  # the A/A table, for the record (pytest -s)
    assert rc == 0, out + err
    result = json.loads((tmp_path / "aa.json").read_text())
    assert not result["regressed"] and result["exit_code"] == 0
    assert len(result["cells"]) == AA_SEEDS
    for cell in result["cells"]:
        # A shift seen in one process only is noise: same, or at worst uncertain.
        assert cell["verdict"] in (SAME, UNCERTAIN), out
        assert cell["regressions"] == []
    assert all(not g["regressed"] for g in result["accuracy"])
    assert "no regression" in out


@needs_torch
@pytest.mark.torch
@pytest.mark.slow
def test_a_copy_made_20_percent_slower_is_flagged_and_2_percent_is_not(
    real_runs: RealRuns, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = real_runs.a
    records = read_run(base)

    by_cell = {r["cell_id"]: r for r in records}
    slow = write_run(tmp_path / "slow20", slower(records, 1.20))
    rc, out, _ = run_compare(capsys, base, slow, "--json", "-")
    result = json.loads(out)
    for cell in result["cells"]:
        verdicts = set()
        for phase in ("teacher", "distill"):
            check = cell["time"][phase]
            assert check["ratio"] == pytest.approx(1.2, rel=1e-6)
            assert check["throughput_ratio"] == pytest.approx(1 / 1.2, rel=1e-6)
            assert check["block_steps"] == 10
            if block_spread(by_cell[cell["cell_id"]]["phases"][phase]["step_times_s"]) < QUIET:
                assert check["verdict"] == SLOWER and check["p_value"] < 0.01
            else:  # this phase's own noise is wider than the change: honestly uncertain at worst
                assert check["verdict"] in (SLOWER, UNCERTAIN)
            verdicts.add(check["verdict"])
        if SLOWER in verdicts:
            assert cell["verdict"] == SLOWER
            assert any("step time +20.0%" in r for r in cell["regressions"])
        else:
            assert cell["verdict"] == UNCERTAIN
    flagged = any(c["verdict"] == SLOWER for c in result["cells"])
    assert (rc == 1) == flagged == bool(result["regressed"])

    tiny = write_run(tmp_path / "slow2", slower(records, 1.02))
    rc, out, _ = run_compare(capsys, base, tiny, "--json", "-")
    result = json.loads(out)
    assert rc == 0 and not result["regressed"]
    assert {c["verdict"] for c in result["cells"]} == {SAME}

    fast = write_run(tmp_path / "fast20", slower(records, 1 / 1.2))
    rc, out, _ = run_compare(capsys, base, fast, "--json", "-")
    assert rc == 0
    for cell in json.loads(out)["cells"]:
        spreads = [block_spread(by_cell[cell["cell_id"]]["phases"][p]["step_times_s"])
                   for p in ("teacher", "distill")]  # fmt: skip
        assert cell["verdict"] == FASTER or (
            cell["verdict"] == UNCERTAIN and max(spreads) >= QUIET
        ), (cell["verdict"], spreads)


@needs_torch
@pytest.mark.torch
@pytest.mark.slow
def test_memory_and_accuracy_regressions_on_a_real_run(
    real_runs: RealRuns, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = real_runs.a
    records = read_run(base)

    rc, out, _ = run_compare(capsys, base, write_run(tmp_path / "m15", more_memory(records, 1.15)))
    assert rc == 1 and "host peak RSS +15.0%" in out and "more memory" in out
    rc, out, _ = run_compare(capsys, base, write_run(tmp_path / "m5", more_memory(records, 1.05)))
    assert rc == 0, out

    rc, out, _ = run_compare(
        capsys, base, write_run(tmp_path / "acc", less_accurate(records, 2.0)), "--json", "-"
    )
    result = json.loads(out)
    assert rc == 1 and result["regressed"]
    (group,) = result["accuracy"]
    assert group["regressed"] == ["distilled"] and group["seeds"] == list(range(AA_SEEDS))
    assert group["mean_delta_pts"]["distilled"] == pytest.approx(-2.0)
    assert group["note"] == f"mean over {AA_SEEDS} seeds"
    rc, _, _ = run_compare(capsys, base, write_run(tmp_path / "acc05", less_accurate(records, 0.5)))
    assert rc == 0


# --- rules, on synthetic records ------------------------------------------------------


def test_a_big_shift_in_a_few_steps_is_uncertain_not_slower() -> None:
    base = [synthetic(0, steps=8)]  # 3 steady steps after 5 warm-up steps
    cmp = compare_records(base, [synthetic(0, scale=1.5, steps=8)])
    check = cmp.cells[0].times["distill"]
    assert check.ratio == pytest.approx(1.5)
    assert check.verdict == UNCERTAIN and check.p_value is None
    assert "too few" in check.note
    assert cmp.exit_code == 0


def test_a_tiny_significant_shift_within_the_threshold_is_same() -> None:
    base = [synthetic(s, steps=2000) for s in (0, 1)]
    cand = [synthetic(s, scale=1.02, steps=2000) for s in (0, 1)]
    for cell in compare_records(base, cand).cells:
        check = cell.times["distill"]
        assert check.p_value < 1e-6  # significant...
        assert check.verdict == SAME  # ...but only 2%


def test_a_slowdown_in_one_seed_only_is_uncertain() -> None:
    base = [synthetic(0), synthetic(1)]
    cand = [synthetic(0, scale=1.3), synthetic(1)]
    cmp = compare_records(base, cand)
    seed0 = cmp.cells[0].times["teacher"]
    assert seed0.seed_verdict == SLOWER and seed0.verdict == UNCERTAIN
    assert seed0.note == "teacher slower here, not in every seed (seed 1 same)"
    assert cmp.exit_code == 0
    # With one seed there is nothing to reproduce it against: it stands.
    assert compare_records(base[:1], cand[:1]).exit_code == 1


def test_rounds_of_an_ab_run_are_paired_and_each_must_show_the_change() -> None:
    def side(env: str, scales: list[float]) -> Records:
        return [
            synthetic(0, scale, env=env, round=r, cell_id=f"syn/pytorch/seed0/env={env}/round{r}")
            for r, scale in enumerate(scales)
        ]

    base = side("a", [1.0, 1.0, 1.0])
    cmp = compare_records(base, side("b", [1.3, 1.3, 1.3]))
    assert [c.key[4] for c in cmp.cells] == [0, 1, 2]
    assert {c.verdict for c in cmp.cells} == {SLOWER} and cmp.exit_code == 1
    assert cmp.single_seed == []  # three processes a side: checked across them
    (group,) = cmp.accuracy
    assert group.pairs == 3 and group.seeds == [0]
    assert group.note == "mean over 3 pairs (1 seed x 3 rounds)"

    def seeds_and_rounds(env: str, scale: float) -> Records:
        return [
            synthetic(s, scale, env=env, round=r, cell_id=f"syn/pytorch/seed{s}/env={env}/round{r}")
            for s in (0, 1)
            for r in (0, 1)
        ]

    (group,) = compare_records(seeds_and_rounds("a", 1.0), seeds_and_rounds("b", 1.0)).accuracy
    assert group.note == "mean over 4 pairs (2 seeds x 2 rounds)"

    cmp = compare_records(base, side("b", [1.3, 1.0, 1.3]))
    round0 = cmp.cells[0].times["teacher"]
    assert round0.seed_verdict == SLOWER and round0.verdict == UNCERTAIN
    assert round0.note == "teacher slower here, not in every seed and round (seed 0 round 1 same)"
    assert cmp.exit_code == 0


def other_process(scale: float = 1.0) -> dict[str, Any]:
    """Seed 0's cell with step times of its own: the same code (times scale) run again."""
    return {**synthetic(1, scale), "seed": 0, "cell_id": "syn/pytorch/seed0"}


def test_a_process_slowed_by_a_neighbour_is_judged_on_its_fastest_stretch() -> None:
    """The same code in two processes, one slowed by 30% from its 150th step on
    (a neighbour that started mid-run): its median moved, its floor did not."""
    base = [synthetic(0)]
    busy = other_process()
    times = busy["phases"]["teacher"]["step_times_s"]
    busy["phases"]["teacher"]["step_times_s"] = times[:150] + [t * 1.3 for t in times[150:]]
    floor = compare_records(base, [busy]).cells[0].times["teacher"]
    assert floor.statistic == "floor" and floor.ratio == floor.floor_ratio
    assert floor.median_ratio > 1.1 and floor.ratio < 1.05
    assert floor.verdict == SAME
    by_median = compare_records(base, [busy], Thresholds(statistic="median"))
    median = by_median.cells[0].times["teacher"]
    assert median.statistic == "median" and median.ratio == median.median_ratio
    assert median.verdict == SLOWER and by_median.exit_code == 1
    # A change of the code itself moves every step, the fastest ones too.
    slow = compare_records(base, [other_process(1.2)]).cells[0].times["teacher"]
    assert slow.ratio == pytest.approx(1.2, rel=0.05) and slow.verdict == SLOWER


def test_a_slower_candidate_beside_a_baseline_slowed_most_of_its_run_is_slower() -> None:
    """The baseline's process slowed by half after its first 140 steps (13 of
    its 29 blocks clean, as in a measured A/B round where 10 of 22 were), the
    candidate's code 20% slower throughout: the medians point the other way;
    the floors and the test of the faster halves see the change."""
    base = synthetic(0)
    times = base["phases"]["teacher"]["step_times_s"]
    base["phases"]["teacher"]["step_times_s"] = times[:140] + [t * 1.5 for t in times[140:]]
    cand = other_process(1.2)
    check = compare_records([base], [cand]).cells[0].times["teacher"]
    # (the baseline's floor is the fastest of its 13 clean blocks, the candidate's of 29)
    assert 1.1 < check.ratio < 1.25 and check.verdict == SLOWER
    assert check.p_value < 0.01
    by_median = compare_records([base], [cand], Thresholds(statistic="median"))
    median = by_median.cells[0].times["teacher"]
    assert median.ratio < 1 and median.verdict != SLOWER


def test_the_faster_half_is_the_blocks_with_the_lower_medians() -> None:
    rows = np.array([[3.0, 3.0], [1.0, 9.0], [2.0, 2.0], [0.5, 0.5], [4.0, 4.0]])
    assert faster_half(rows).tolist() == [[0.5, 0.5], [2.0, 2.0], [3.0, 3.0]]
    assert faster_half(rows[:4]).tolist() == [[0.5, 0.5], [2.0, 2.0]]


def test_the_floor_is_the_fastest_block_median_not_the_fastest_step() -> None:
    # One interval collected early (its predecessor's completion seen late) is
    # not a floor: the median of its block is.
    times = np.array([1.0, 1.0, 0.1, 1.0, 1.0, 0.9, 0.9, 2.0, 0.9, 0.9, 0.5])
    assert fastest_block(times, 5) == 0.9  # the 11th step is a partial block
    assert fastest_block(times, 1) == 0.1
    assert fastest_block(np.array([3.0, 2.0]), 5) == 2.0  # fewer steps than a block


def test_eval_has_medians_only_and_never_fails() -> None:
    cand = synthetic(0)
    cand["phases"]["eval"]["batch_time_median_s"] = 5e-4  # 5x slower
    cell = compare_records([synthetic(0)], [cand]).cells[0]
    assert cell.times["eval"].medians_only and cell.times["eval"].verdict == UNCERTAIN
    assert cell.verdict == SAME and cell.regressions == []


def test_eval_phases_with_raw_samples_are_tested_like_training() -> None:
    def with_eval(scale: float) -> dict[str, Any]:
        record = synthetic(0)
        del record["phases"]["eval"]
        times = scale * 1e-4 * np.random.default_rng(7).lognormal(0.0, 0.1, size=11)
        for name in ("eval_teacher", "eval_student"):
            record["phases"][name] = {"warmup_steps": 1, "step_times_s": times.tolist()}
        record["phases"]["eval_teacher"]["step_times_s"] = (times / scale).tolist()
        return record

    cell = compare_records([with_eval(1.0)], [with_eval(1.5)]).cells[0]
    assert set(cell.times) == {"teacher", "distill", "eval_student", "eval_teacher"}
    assert cell.times["eval_student"].samples == (10, 10)
    assert cell.times["eval_student"].verdict == SLOWER
    assert cell.times["eval_teacher"].verdict == SAME
    assert cell.regressions == ["eval_student step time +50.0%"]


def test_teacher_from_the_cache_is_not_timed() -> None:
    cand = synthetic(0, scale=2.0)
    cand["phases"]["teacher"]["from_cache"] = True
    cell = compare_records([synthetic(0)], [cand]).cells[0]
    assert cell.times["teacher"].verdict == NOT_COMPARABLE
    assert "teacher cache" in cell.times["teacher"].note
    assert cell.times["distill"].verdict == SLOWER


def test_device_memory_is_the_peak_over_phases() -> None:
    base, cand = synthetic(0), synthetic(0)
    for record, peak in ((base, 1000), (cand, 1200)):
        record["phases"]["distill"]["device_peak_bytes"] = peak
        record["phases"]["eval"]["device_peak_bytes"] = 10
    cell = compare_records([base], [cand]).cells[0]
    device = next(m for m in cell.memory if m.name == "device peak")
    assert device.ratio == pytest.approx(1.2) and device.regressed
    assert "device peak +20.0%" in cell.regressions


def test_one_seed_accuracy_is_a_threshold_only_judgement() -> None:
    cand = synthetic(0)
    cand["metrics"]["teacher_acc"] -= 0.015
    cmp = compare_records([synthetic(0)], [cand], Thresholds(accuracy=1.0))
    (group,) = cmp.accuracy
    assert group.regressed == ["teacher"]
    assert group.note == "1 seed: threshold only, no averaging over seeds"


def test_the_last_record_of_a_cell_wins() -> None:
    failed = synthetic(0, status="failed", error="boom")
    cmp = compare_records([synthetic(0)], [failed, synthetic(0)])
    assert cmp.cells[0].verdict == SAME


# --- refusals, missing and failed cells -------------------------------------------------


def test_different_settings_are_refused_and_force_compares_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_run(tmp_path / "base", [synthetic(0), synthetic(1)])
    other = synthetic(1)
    other["settings"] = {**other["settings"], "threads": 4}
    cand = write_run(tmp_path / "cand", [synthetic(0), other])

    rc, out, _ = run_compare(capsys, base, cand)
    assert rc == 0  # seed 0 compared; seed 1 refused, not an error
    assert "refused: syn/pytorch/seed1: settings differ: threads 1 vs 4" in out

    rc, out, _ = run_compare(capsys, base, cand, "--force", "--json", "-")
    result = json.loads(out)
    assert rc == 0 and result["refused"] == []
    forced = result["cells"][1]
    assert forced["forced"] == "forced: settings differ: threads 1 vs 4"
    assert forced["verdict"] == SAME


def test_nothing_comparable_is_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_run(tmp_path / "base", [synthetic(0)])
    cand = write_run(
        tmp_path / "cand",
        [synthetic(0, device="cuda:0", spec={"name": "syn", "hash": "fedcba9876543210"})],
    )
    rc, out, err = run_compare(capsys, base, cand)
    assert rc == 2
    assert "spec content changed: hash 0123456789abcdef vs fedcba9876543210" in out
    assert "device differs: cpu vs cuda:0" in out
    assert err.startswith("kdbench: error: no cell could be compared (1 refused)")
    assert "--force compares the refused ones" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "nothing compared" in out and "no regression" not in out
    rc, out, _ = run_compare(capsys, base, cand, "--force")
    assert rc == 0 and "forced: spec content changed" in out
    # Different matrices: every cell is missing on one side.
    other = write_run(tmp_path / "other", [synthetic(0, spec={"name": "x", "hash": "1"})])
    rc, _, err = run_compare(capsys, base, other)
    assert rc == 2
    assert "(1 missing in baseline, 1 missing in candidate)" in err


def test_missing_and_failed_cells_are_not_comparable_and_lost_ones_regress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cell ok in the baseline that failed or is missing in the candidate is
    a regression (exit 1); one new in the candidate is not."""
    timeout = synthetic(1, status="timeout", error="the cell ran past its time limit of 60 s")
    base = write_run(tmp_path / "base", [synthetic(0), synthetic(1)])
    cand = write_run(tmp_path / "cand", [synthetic(0), timeout, synthetic(2)])
    rc, out, _ = run_compare(capsys, base, cand, "--json", "-")
    assert rc == 1
    result = json.loads(out)
    cells = {c["seed"]: c for c in result["cells"]}
    assert cells[0]["verdict"] == SAME and cells[0]["lost"] is None
    assert cells[1]["verdict"] == NOT_COMPARABLE
    assert cells[1]["reason"] == "candidate timeout: the cell ran past its time limit of 60 s"
    assert cells[1]["lost"].startswith("candidate timeout (ok in the baseline)")
    assert cells[2]["reason"] == "missing in baseline" and cells[2]["lost"] is None
    assert result["regressions"] == [f"syn/pytorch/seed1: {cells[1]['lost']}"]
    rc, out, _ = run_compare(capsys, cand, base, "--json", "-")
    cells = {c["seed"]: c for c in json.loads(out)["cells"]}
    assert cells[2]["reason"] == "missing in candidate"
    assert rc == 1 and cells[2]["lost"] == "missing in the candidate (ok in the baseline)"
    assert cells[1]["lost"] is None  # failed in the baseline: nothing to lose


def test_an_all_failed_candidate_is_a_regression_not_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_run(tmp_path / "base", [synthetic(0), synthetic(1)])
    failed = [synthetic(s, status="failed", error="RuntimeError: boom") for s in (0, 1)]
    rc, out, err = run_compare(capsys, base, write_run(tmp_path / "cand", failed))
    assert rc == 1 and err == ""
    assert "REGRESSED (2)" in out and "candidate failed (ok in the baseline): RuntimeError" in out


# --- input, output and exit codes ----------------------------------------------------------


def test_json_output_structure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_run(tmp_path / "base", [synthetic(0)])
    cand = write_run(tmp_path / "cand", [synthetic(0, scale=1.3)])
    rc, out, err = run_compare(capsys, base, cand, "--json", "-", "--time-threshold", "0.1")
    assert rc == 1
    result = json.loads(out)  # stdout is the JSON alone; the table went to stderr
    assert "kdbench compare" in err
    assert set(result) >= {
        "format", "baseline", "candidate", "thresholds", "regressed", "exit_code",
        "counts", "cells", "accuracy", "refused", "warnings",
    }  # fmt: skip
    assert result["thresholds"] == {
        "time": 0.1, "memory": 0.1, "accuracy": 1.0, "alpha": 0.01, "statistic": "floor",
    }  # fmt: skip
    assert result["counts"] == {SLOWER: 1}
    (cell,) = result["cells"]
    assert (cell["spec"], cell["backend"], cell["seed"]) == ("syn", "pytorch", 0)
    teacher = cell["time"]["teacher"]
    assert set(teacher) >= {
        "verdict", "baseline_median_s", "candidate_median_s", "ratio", "throughput_ratio",
        "ci", "p_value", "samples", "seed_verdict", "statistic", "baseline_floor_s",
        "candidate_floor_s", "median_ratio", "floor_ratio",
    }  # fmt: skip
    assert teacher["samples"] == [295, 295] and len(teacher["ci"]) == 2
    assert teacher["statistic"] == "floor" and teacher["ratio"] == teacher["floor_ratio"]
    assert teacher["floor_ratio"] == pytest.approx(1.3) == teacher["median_ratio"]
    assert teacher["baseline_floor_s"] < teacher["baseline_median_s"]
    assert cell["memory"]["host peak RSS"]["ratio"] == 1.0
    assert cell["accuracy_delta_pts"] == {"teacher": 0.0, "scratch": 0.0, "distilled": 0.0}

    rc, _, _ = run_compare(capsys, base, cand, "--json", tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text())["exit_code"] == rc == 1


def test_a_torn_last_line_still_compares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_run(tmp_path / "base", [synthetic(0), synthetic(1)])
    cand = write_run(tmp_path / "cand", [synthetic(0), synthetic(1)])
    with open(cand / "results.jsonl", "a") as fh:
        fh.write(json.dumps(synthetic(2))[:120])  # cut off mid-write
    rc, out, _ = run_compare(capsys, base, cand / "results.jsonl")  # a file works too
    assert rc == 0
    assert "warning:" in out and "line 3 is incomplete" in out
    assert "2 cells: 2 same" in out


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "nope", "no results.jsonl here"),
        (lambda d: write_run(d / "empty", []), "holds no records"),
        (lambda d: write_run(d / "v9", [synthetic(0, schema_version=9)]), "schema_version 9"),
    ],
)
def test_bad_input_is_exit_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], Path],
    message: str,
) -> None:
    good = write_run(tmp_path / "good", [synthetic(0)])
    rc, _, err = run_compare(capsys, good, make(tmp_path))
    assert rc == 2 and message in err
    assert err.startswith("kdbench: error:") and len(err.strip().splitlines()) == 1


def test_a_damaged_line_costs_that_line_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rest of the file is compared; the damaged line is named in a warning."""
    good = write_run(tmp_path / "good", [synthetic(0)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("garbage\n" + json.dumps(synthetic(0)) + "\n")
    rc, out, _ = run_compare(capsys, good, bad)
    assert rc == 0 and "1 cells: 1 same" in out
    assert "warning:" in out and "line 1 is not a JSON record (damaged); it was skipped" in out


def test_bad_thresholds_are_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_run(tmp_path / "good", [synthetic(0)])
    rc, _, err = run_compare(capsys, good, good, "--alpha", "1.5")
    assert rc == 2 and "--alpha must be between 0 and 1" in err
    rc, _, err = run_compare(capsys, good, good, "--memory-threshold", "-0.1")
    assert rc == 2 and "--memory-threshold must be 0 or more" in err
    rc, _, err = run_compare(capsys, good, good, "--statistic", "mean")
    assert rc == 2 and "--statistic: invalid choice: 'mean' (choose from" in err
