"""`kdbench report`: the numbers in its tables, its sections, its files and its page.

The fixture records are written by hand so that every interval in the tables
can be checked against a value worked out on paper (t quantiles from a
table: t(0.975, 1) = 12.7062, t(0.975, 2) = 4.3027).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_spec

from kdbench.backends.base import is_installed
from kdbench.errors import KdbenchError
from kdbench.host import cpu_isa
from kdbench.report import FORMATS, parse_formats, write_report
from kdbench.report.aggregate import build, load
from kdbench.report.plots import _steady_times
from kdbench.report.provenance import runs_environment
from kdbench.report.quantities import describe, format_stat

MIB = 1024**2
H100 = "NVIDIA H100 80GB HBM3"


def ok_record(
    backend: str,
    seed: int,
    acc: tuple[float, float, float],
    agreement: float = 0.95,
    *,
    run_id: str = "A",
    device: str = "cpu",
    precision: str = "float32",
    step_s: float = 0.002,
    device_peak: int | None = None,
    flops: float | None = None,
) -> dict[str, Any]:
    """A finished cell with the fields the harness writes."""
    teacher, scratch, distilled = acc
    framework = {"pytorch": "torch", "tensorflow": "tensorflow", "jax": "jax"}[backend]
    phases: dict[str, Any] = {}
    for i, phase in enumerate(("teacher", "scratch", "distill")):
        phases[phase] = {
            "steps": 12,
            "batch_size": 32,
            "epochs": 2,
            "warmup_steps": 2,
            "warmup_s": 0.9,
            "first_step_s": 0.5,
            "steady_steps": 10,
            "step_time_median_s": step_s,
            "step_time_iqr_s": step_s / 2,
            "throughput_samples_per_s": 32 / step_s,
            # Two slow warm-up steps that the step-time plot must leave out.
            "step_times_s": [0.5, 0.4] + [step_s] * 10,
            "loss_step0": 2.3 + i,
            "loss_epochs": [1.0 + i, 0.5 + i],
            "device_peak_bytes": device_peak,
            "host_peak_rss_bytes": (300 + i) * MIB,
        }
        if flops is not None:
            phases[phase]["achieved_flops_per_s"] = flops
            phases[phase]["fraction_of_peak"] = 0.25
    for model in ("teacher", "student"):
        phases[f"eval_{model}"] = {
            "batch_size": 1000,
            "warmup_s": 0.2,
            "warmup_steps": 1,
            "step_time_median_s": 0.001,
            "step_time_iqr_s": 0.0001,
            "throughput_samples_per_s": 1e6,
            "step_times_s": [0.2] + [0.001] * 10,
            "device_peak_bytes": device_peak,
        }
        if flops is not None:
            phases[f"eval_{model}"]["achieved_flops_per_s"] = flops / 2
            phases[f"eval_{model}"]["fraction_of_peak"] = 0.125
    return {
        **_base(backend, seed, run_id, precision),
        "device": device,
        "framework": framework,
        "framework_version": "9.9",
        "environment": {"compile_mode": "eager", "intra_op_threads": 2},
        "status": "ok",
        "metrics": {
            "teacher_acc": teacher,
            "scratch_acc": scratch,
            "distilled_acc": distilled,
            "gain": distilled - scratch,
            "agreement": agreement,
        },
        "phases": phases,
        "memory": {"host_peak_rss_bytes": 400 * MIB, "framework_import_bytes": 100 * MIB},
        "timings": {"setup_s": 1.0},
    }


def failed_record(
    backend: str, seed: int, status: str, error: str, run_id: str = "A", precision: str = "float32"
) -> dict[str, Any]:
    """A cell that died early: no device, metrics or phases."""
    return {**_base(backend, seed, run_id, precision), "status": status, "error": error}


def _base(backend: str, seed: int, run_id: str, precision: str) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "run_id": run_id,
        "cell_id": f"tiny/{backend}/seed{seed}",
        "spec": {"name": "tiny", "hash": "78e534942f3d23ac", "path": "specs/tiny.toml"},
        "backend": backend,
        "seed": seed,
        "settings": {
            "compile": "default",
            "compile_mode": "eager",
            "precision": precision,
            "threads": 2,
            "deterministic": False,
            "device": "auto",
            "teacher_batch_size": 32,
            "student_batch_size": 32,
            "eval_batch_size": 1000,
            "warmup_steps": 2,
            "method": "soft",
            "temperature": 4.0,
            "alpha": 0.9,
        },
        "host": {
            "cpu": "AMD EPYC",
            "cpu_count": 2,
            "os": "Linux",
            "python": "3.11.7",
            "kdbench_version": "0.1.0",
            "git_commit": "0123456789abcdef",
            "git_dirty": False,
        },
        "started_at": f"2026-01-01T00:00:0{seed}+00:00",
        "error": None,
        "duration_s": 10.0,
    }


def write_run(folder: Path, records: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "results.jsonl", "w") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
    (folder / "run.json").write_text(json.dumps({"argv": ["kdbench", "run", "tiny.toml"]}))
    return folder


def make_runs(base: Path) -> tuple[Path, Path]:
    """Run A: CPU, float32 (three backends, failures) and tf32 (one cell).
    Run B: an H100 with device counters and FLOP/s; its jax cell ran out of memory."""
    a = write_run(
        base / "run-a",
        [
            ok_record("pytorch", 0, (0.90, 0.80, 0.83), 0.95, step_s=0.001),
            ok_record("tensorflow", 0, (0.91, 0.80, 0.82)),
            ok_record("jax", 0, (0.95, 0.85, 0.88), 0.97),
            ok_record("pytorch", 1, (0.92, 0.82, 0.86), 0.97, step_s=0.002),
            ok_record("tensorflow", 1, (0.93, 0.81, 0.83)),
            failed_record("jax", 1, "timeout", "the cell ran past its time limit of 60 s"),
            ok_record("pytorch", 2, (0.94, 0.81, 0.84), 0.96, step_s=0.003),
            failed_record("tensorflow", 2, "failed", "RuntimeError: boom"),
            ok_record("pytorch", 0, (0.99, 0.90, 0.91), precision="tf32"),
        ],
    )
    b = write_run(
        base / "run-b",
        [
            ok_record(
                "pytorch",
                s,
                (0.9, 0.8, 0.85),
                run_id="B",
                device=H100,
                device_peak=(512 + 64 * s) * MIB,
                flops=2.5e12,
            )
            for s in (0, 1)
        ]
        + [failed_record("jax", 0, "oom", "XlaRuntimeError: RESOURCE_EXHAUSTED", run_id="B")],
    )
    return a, b


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    return make_runs(tmp_path)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The full report of both runs, written once for the tests that read files."""
    base = tmp_path_factory.mktemp("published")
    out = base / "report"
    return out, write_report([str(r) for r in make_runs(base)], out)


def rows(table: pd.DataFrame) -> dict[str, dict[str, str]]:
    return {r["backend"]: r for r in table.to_dict("records")}


# --- statistics ---------------------------------------------------------------


def test_interval_matches_hand_computation() -> None:
    stat = describe([90.0, 92.0, 94.0])
    # mean 92, sd 2, half-width 4.3027 * 2 / sqrt(3) = 4.9683
    assert stat.n == 3 and stat.mean == pytest.approx(92.0) and stat.sd == pytest.approx(2.0)
    assert stat.ci_high - stat.mean == pytest.approx(4.30265 * 2 / 3**0.5, rel=1e-5)
    assert stat.ci_low == pytest.approx(92.0 - 4.96828, abs=1e-4)
    assert format_stat(stat, 2, "ci") == "92.00 ± 4.97"
    assert format_stat(describe([95.0]), 2, "ci") == "95.00 (n=1, no interval)"
    assert format_stat(describe([]), 2, "ci") == "-"
    assert format_stat(describe([1.0, 3.0, 2.0]), 1, "median") == "2.0"
    assert format_stat(describe([1.0, 3.0, 2.0]), 1, "max") == "3.0"


# --- tables -------------------------------------------------------------------


def test_sections_split_hardware_and_settings(runs: tuple[Path, Path]) -> None:
    report = build(runs)
    keys = [(s.hardware["device"], s.settings["settings.precision"]) for s in report.sections]
    assert keys == [("cpu", "float32"), ("cpu", "tf32"), (H100, "float32")]
    first = report.sections[0]
    assert first.settings_shown["compile"] == "default"
    assert first.settings_shown["threads"] == "2"
    assert first.title == "Section 1: CPU (AMD EPYC, 2 CPUs)"
    assert report.sections[2].title.startswith(f"Section 3: {H100}")
    # Each backend of a section is one row; no row mixes sections.
    assert [len(s.cells) for s in report.sections] == [8, 1, 3]
    assert report.notes and "not comparable" in report.notes[0]


def test_accuracy_table_pins_means_and_intervals(runs: tuple[Path, Path]) -> None:
    table = build(runs).sections[0].tables[0]
    assert table.name == "accuracy"
    assert list(table.shown.columns) == [
        "spec", "backend", "seeds ok", "teacher acc %", "scratch acc %", "distilled acc %",
        "KD gain pts", "teacher-student agreement %", "status",
    ]  # fmt: skip
    by = rows(table.shown)
    assert list(by) == ["pytorch", "tensorflow", "jax"]
    torch = by["pytorch"]
    assert torch["seeds ok"] == "3/3" and torch["status"] == "ok"
    assert torch["teacher acc %"] == "92.00 ± 4.97"  # 90, 92, 94
    assert torch["scratch acc %"] == "81.00 ± 2.48"  # 80, 82, 81: sd 1
    assert torch["distilled acc %"] == "84.33 ± 3.79"  # 83, 86, 84: sd 1.5275
    assert torch["KD gain pts"] == "3.33 ± 1.43"  # paired gains 3, 4, 3: sd 0.5774
    assert torch["teacher-student agreement %"] == "96.0 ± 2.5"  # 95, 97, 96
    tf = by["tensorflow"]
    assert tf["seeds ok"] == "2/3"
    assert tf["teacher acc %"] == "92.00 ± 12.71"  # 91, 93: 12.7062 * 1.4142 / 1.4142
    assert tf["status"] == "1 failed: RuntimeError: boom"
    jax = by["jax"]
    assert jax["seeds ok"] == "1/2"
    assert jax["teacher acc %"] == "95.00 (n=1, no interval)"
    assert jax["KD gain pts"] == "3.00 (n=1, no interval)"
    assert jax["status"].startswith("1 timeout: the cell ran past")

    tidy = table.tidy.set_index(["backend", "quantity"])
    gain = tidy.loc[("pytorch", "metrics.gain")]
    assert gain["n"] == 3 and gain["unit"] == "pts"
    assert gain["ci_low"] == pytest.approx(10 / 3 - 4.30265 / 3, abs=1e-4)
    assert gain["ci_high"] == pytest.approx(10 / 3 + 4.30265 / 3, abs=1e-4)


def test_a_seed_repeated_across_runs_counts_once(runs: tuple[Path, Path], tmp_path: Path) -> None:
    again = write_run(tmp_path / "run-c", [ok_record("pytorch", 0, (0.92, 0.80, 0.83), 0.95)])
    torch = rows(build([runs[0], again]).sections[0].tables[0].shown)["pytorch"]
    assert torch["seeds ok"] == "3/3 (4/4 cells)"
    # seed 0: (90 + 92) / 2 = 91; with 92 and 94: mean 92.33, sd 1.5275, half-width 3.79
    assert torch["teacher acc %"] == "92.33 ± 3.79"


def by_phase(table: pd.DataFrame) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["phase"], r["backend"]): r for r in table.to_dict("records")}


def test_phase_and_host_tables(runs: tuple[Path, Path]) -> None:
    sections = build(runs).sections
    phases = sections[0].tables[1]
    assert phases.name == "phases"
    # No device counter and no FLOP/s on this CPU: those columns are left out, and said so.
    assert list(phases.shown.columns) == [
        "spec", "phase", "backend", "compile mode", "step ms", "step IQR ms", "samples/s",
        "warm-up ms",
    ]  # fmt: skip
    assert any("GFLOP/s" in n and "device peak MiB" in n for n in phases.notes)
    order = [(r["phase"], r["backend"]) for _, r in phases.shown.iterrows()]
    assert order[:3] == [("teacher training", b) for b in ("pytorch", "tensorflow", "jax")]
    assert [p for p, _ in order[::3]] == [
        "teacher training", "student from scratch", "distillation", "teacher inference",
        "student inference",
    ]  # fmt: skip
    cpu = by_phase(phases.shown)
    # median over seeds of 1, 2, 3 ms; samples/s the median of 32000, 16000, 10667
    torch = cpu[("distillation", "pytorch")]
    assert torch["step ms"] == "2.000" and torch["samples/s"] == "16000"
    assert torch["step IQR ms"] == "1.000" and torch["warm-up ms"] == "900.0"
    assert torch["compile mode"] == "eager"
    assert cpu[("student inference", "jax")]["samples/s"] == "1000000"
    # The tensorflow seed that failed is not in its median (2 ms of seeds 0 and 1).
    assert cpu[("teacher training", "tensorflow")]["step ms"] == "2.000"

    host = rows(sections[0].tables[2].shown)
    assert host["pytorch"]["host peak RSS MiB"] == "400.0"
    assert host["pytorch"]["framework import MiB"] == "100.0"
    assert host["pytorch"]["cell wall s"] == "10.0"

    gpu = by_phase(sections[2].tables[1].shown)
    torch = gpu[("distillation", "pytorch")]
    assert torch["device peak MiB"] == "576.0"  # max of 512 and 576
    assert torch["GFLOP/s"] == "2500.00" and torch["% of peak"] == "25.0"
    assert gpu[("distillation", "jax")]["GFLOP/s"] == "-"


def mode_record(
    backend: str, compile: str, name: str, warmup_s: float, step_s: float, iqr_s: float
) -> dict[str, Any]:
    """A finished cell in one compile mode: its warm-up and steady steps as given."""
    record = ok_record(backend, 0, (0.9, 0.8, 0.85), step_s=step_s, run_id="C")
    record["settings"].update(compile=compile, compile_mode=name)
    record["label"] = f"compile={compile},distill.temperature=4.0"  # as a matrix labels it
    for phase in ("teacher", "scratch", "distill"):
        record["phases"][phase].update(
            warmup_s=warmup_s,
            first_step_s=0.75 * warmup_s,
            step_time_iqr_s=iqr_s,
            step_times_s=[0.75 * warmup_s, 0.25 * warmup_s] + [step_s] * 10,
        )
    return record


def test_compile_table_break_even(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """Break-even = warm-up steps + extra warm-up / step saved, worked out by hand."""
    cells = [
        # torch: compiled costs 4.0 s more warm-up and saves 3 ms a step: 2 + ceil(1333.3)
        mode_record("pytorch", "eager", "eager", 0.9, 0.008, 0.0004),
        mode_record("pytorch", "default", "eager", 0.9, 0.008, 0.0004),
        mode_record("pytorch", "compiled", "torch.compile", 4.9, 0.005, 0.0002),
        # tf: default has the shorter warm-up and the faster step (at once); compiled
        # saves 14 ms a step on 1.0 s more warm-up than eager (2 + ceil(71.4)), and
        # its steps are slower than default's (never)
        mode_record("tensorflow", "eager", "eager", 2.0, 0.020, 0.001),
        mode_record("tensorflow", "default", "tf.function", 1.5, 0.004, 0.0002),
        mode_record("tensorflow", "compiled", "tf.function+xla", 3.0, 0.006, 0.0002),
        # jax: eager timed out; compiled is 0.3 ms faster, inside the 1 ms IQRs: 2 + ceil(433.3)
        failed_record("jax", 0, "timeout", "the cell ran past its time limit of 60 s", "C"),
        mode_record("jax", "default", "jax.jit", 1.0, 0.0030, 0.001),
        mode_record("jax", "compiled", "jax.jit", 1.13, 0.0027, 0.001),
    ]
    cells[6]["settings"]["compile"] = "eager"
    cells[6]["label"] = "compile=eager,distill.temperature=4.0"
    report = build([write_run(tmp_path / "modes", cells)])
    assert len(report.sections) == 3 and len(report.comparisons) == 1
    assert build(runs).comparisons == []  # one compile mode: no table

    table = report.comparisons[0].tables[0]
    assert table.name == "compile" and "compile" not in report.comparisons[0].settings_shown
    shown = {(r["phase"], r["backend"], r["compile"]): r for r in table.shown.to_dict("records")}
    assert {p for p, _, _ in shown} == {"teacher training", "distillation"}
    assert set(table.shown["spec"]) == {"tiny [distill.temperature=4.0]"}  # one row per mode
    torch = shown[("distillation", "pytorch", "compiled")]
    assert torch["compile mode"] == "torch.compile" and torch["status"] == "ok"
    assert torch["warm-up s"] == "4.900" and torch["first step s"] == "3.675"
    assert torch["step ms"] == "5.000" and torch["steps total s"] == "4.95"
    assert torch["break-even vs eager"] == "1,336" and torch["break-even vs default"] == "1,336"
    # the same mode twice: equal steps are never faster, and the difference is noise
    assert (
        shown[("distillation", "pytorch", "default")]["break-even vs eager"]
        == "never (within noise)"
    )
    assert shown[("distillation", "pytorch", "eager")]["break-even vs eager"] == "-"
    tf = {m: shown[("distillation", "tensorflow", m)] for m in ("default", "compiled")}
    assert tf["default"]["break-even vs eager"] == "at once"
    assert tf["compiled"]["break-even vs eager"] == "74"
    assert tf["compiled"]["break-even vs default"] == "never"
    jax = {m: shown[("distillation", "jax", m)] for m in ("eager", "default", "compiled")}
    assert jax["eager"]["status"].startswith("1 timeout: the cell ran past")
    assert jax["eager"]["step ms"] == "-" and jax["compiled"]["break-even vs eager"] == "-"
    assert jax["compiled"]["break-even vs default"] == "436 (within noise)"
    assert jax["default"]["break-even vs eager"] == "-"

    tidy = table.tidy.set_index(["phase", "backend", "compile", "quantity"])["value"]
    assert tidy[("distill", "pytorch", "compiled", "break_even_steps_vs_eager")] == 1336
    assert tidy[("distill", "tensorflow", "compiled", "break_even_steps_vs_default")] == np.inf
    assert set(table.tidy["settings.precision"]) == {"float32"}

    out = tmp_path / "report"
    write_report([str(tmp_path / "modes")], out, formats=["md", "csv", "tex"], plots=False)
    md = (out / "report.md").read_text()
    assert "## Compile modes: CPU (AMD EPYC, 2 CPUs)" in md and "break-even vs eager" in md
    assert (out / "csv" / "compile.csv").is_file()
    assert "Compile modes" in (out / "report.tex").read_text()


def test_old_records_with_one_eval_phase(tmp_path: Path) -> None:
    record = ok_record("pytorch", 0, (0.9, 0.8, 0.85))
    for name in ("eval_teacher", "eval_student"):
        del record["phases"][name]
    record["phases"]["eval"] = {"batch_time_median_s": 0.004, "throughput_samples_per_s": 250.0}
    table = by_phase(build([write_run(tmp_path / "old", [record])]).sections[0].tables[1].shown)
    assert table[("inference", "pytorch")]["step ms"] == "4.000"
    assert table[("inference", "pytorch")]["samples/s"] == "250"


def test_failed_cells_are_listed_with_their_reason(runs: tuple[Path, Path]) -> None:
    sections = build(runs).sections
    failures = sections[0].tables[-1]
    assert failures.name == "failures"
    listed = {(r["backend"], r["seed"], r["status"]): r["error"] for _, r in
              failures.shown.iterrows()}  # fmt: skip
    assert listed == {
        ("jax", "1", "timeout"): "the cell ran past its time limit of 60 s",
        ("tensorflow", "2", "failed"): "RuntimeError: boom",
    }
    # The jax cell of run B died before it knew its device: it is listed with
    # the H100 cells of its run, as a row of its own.
    gpu = sections[2]
    jax = rows(gpu.tables[0].shown)["jax"]
    assert jax["seeds ok"] == "0/1" and jax["teacher acc %"] == "-"
    assert jax["status"] == "1 oom: XlaRuntimeError: RESOURCE_EXHAUSTED"
    assert rows(gpu.tables[-1].shown)["jax"]["status"] == "oom"


def test_missing_fields_do_not_fail(tmp_path: Path) -> None:
    """Older or partial records: no phases, no label, no host facts."""
    record = ok_record("pytorch", 0, (0.9, 0.8, 0.85))
    for key in ("phases", "memory", "timings", "host", "environment"):
        record.pop(key)
    run = write_run(tmp_path / "old", [record])
    files = write_report([str(run)])
    report = build([run])
    phases = report.sections[0].tables[1]
    assert phases.shown.empty and "No phase timings in these records." in phases.notes
    assert (run / "report" / "report.html").is_file() and files


def test_last_record_of_a_cell_wins(tmp_path: Path) -> None:
    first = failed_record("pytorch", 0, "failed", "RuntimeError: first try")
    run = write_run(tmp_path / "r", [first, ok_record("pytorch", 0, (0.9, 0.8, 0.85))])
    (accuracy, *_rest) = build([run]).sections[0].tables
    assert rows(accuracy.shown)["pytorch"]["seeds ok"] == "1/1"


def test_matrix_labels_old_records_and_code_warnings(tmp_path: Path) -> None:
    labelled = ok_record("pytorch", 0, (0.9, 0.8, 0.85))
    labelled.update(label="wide", cell_id="tiny/pytorch/seed0/wide")
    labelled["host"].update(git_commit="fedcba9876543210", git_dirty=True)
    run = write_run(tmp_path / "m", [ok_record("pytorch", 0, (0.9, 0.8, 0.85)), labelled])
    report = build([run])
    assert list(report.sections[0].tables[0].shown["spec"]) == ["tiny", "tiny [wide]"]
    assert any("2 different git commits" in n for n in report.notes)
    assert any("uncommitted changes" in n for n in report.notes)

    # Records from before settings.compile existed: the resolved mode is the setting.
    old = [ok_record("pytorch", s, (0.9, 0.8, 0.85)) for s in (0, 1)]
    for record in old:
        del record["settings"]["compile"]
    old[1]["settings"]["compile_mode"] = "torch.compile"
    sections = build([write_run(tmp_path / "old", old)]).sections
    assert [s.settings["settings.compile_mode"] for s in sections] == ["eager", "torch.compile"]


# --- files ----------------------------------------------------------------------


def test_every_format_is_written(published: tuple[Path, list[Path]]) -> None:
    out, files = published
    names = {str(p.relative_to(out)) for p in files}
    assert {"report.md", "report.html", "report.tex", "report.json"} <= names
    for table in ("accuracy", "phases", "host", "failures", "cells",
                  "environment_runs", "environment_frameworks"):  # fmt: skip
        assert f"csv/{table}.csv" in names
    pngs = sorted(out.glob("plots/*.png"))
    kinds = {p.stem.split("-tiny-")[1] for p in pngs}
    assert kinds == {"accuracy-throughput", "step-times", "memory", "loss"}
    assert len(pngs) == 3 * 4  # three sections, one spec, four figures
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000

    md = (out / "report.md").read_text()
    assert "| spec   | backend    | seeds ok   |" in md
    assert "92.00 ± 4.97" in md and "95.00 (n=1, no interval)" in md
    assert "## Section 2: CPU (AMD EPYC, 2 CPUs)" in md and "precision: tf32" in md
    assert "![tiny: loss](plots/s1-tiny-loss.png)" in md

    tex = (out / "report.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"92.00 \ensuremath{\pm} 4.97" in tex and r"teacher acc \%" in tex
    assert "±" not in tex

    accuracy = pd.read_csv(out / "csv" / "accuracy.csv")
    row = accuracy[(accuracy["section"] == 1) & (accuracy["backend"] == "pytorch")
                   & (accuracy["quantity"] == "metrics.teacher_acc")].iloc[0]  # fmt: skip
    assert row["mean"] == pytest.approx(92.0) and row["ci_high"] == pytest.approx(96.96828)
    assert row["settings.precision"] == "float32" and row["hardware.device"] == "cpu"
    failures = pd.read_csv(out / "csv" / "failures.csv")
    assert sorted(failures["status"]) == ["failed", "oom", "timeout"]
    cells = pd.read_csv(out / "csv" / "cells.csv")
    assert len(cells) == 12 and "phases.teacher.step_times_s" not in cells


def test_html_is_one_self_contained_page(published: tuple[Path, list[Path]]) -> None:
    out, _ = published
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page)
    assert links and all(link.startswith(("data:image/png;base64,", "#")) for link in links)
    assert "<link" not in page and "<script" not in page and "@import" not in page
    images = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(images) == 12
    for uri in images:
        assert uri.startswith("data:image/png;base64,")
        assert base64.b64decode(uri.split(",", 1)[1]).startswith(b"\x89PNG")
    assert "92.00 ± 4.97" in page and "RuntimeError: boom" in page
    assert 'class="bad"' in page  # rows with failed cells are marked
    for fact in ("0123456789ab", "framework version", "9.9", "kdbench run tiny.toml"):
        assert fact in page


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="no chromium to render with")
def test_html_renders_in_chromium(published: tuple[Path, list[Path]], tmp_path: Path) -> None:
    out, _ = published
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    subprocess.run(
        [
            "/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={shot}",
            "--window-size=1400,2400", (out / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=90,
        check=False,
    )  # fmt: skip
    assert shot.is_file() and shot.stat().st_size > 50_000
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.std() > 0.05  # not a blank page
    # The figures were decoded and drawn: pytorch's red is on the page.
    red = np.abs(pixels - np.array([0xD6, 0x27, 0x28]) / 255).max(axis=-1) < 0.08
    assert red.sum() > 200


def test_step_time_plot_leaves_out_warmup() -> None:
    row = pd.json_normalize([ok_record("pytorch", 0, (0.9, 0.8, 0.85), step_s=0.004)], sep=".")
    times = _steady_times(row.iloc[0], "distill")
    assert len(times) == 10 and times.max() == pytest.approx(0.004)


# --- the command line and its folder rules ------------------------------------------


def kdbench(*argv: str) -> int:
    """`kdbench ARGV` in this process."""
    from kdbench.commands import main

    return main(list(argv))


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdbench: error: "), err
    return err[0]


def test_cli_writes_the_default_folder(runs: tuple[Path, Path], capsys: Any) -> None:
    a, b = runs
    assert kdbench("report", str(a), "--format", "md,csv", "--no-plots") == 0
    assert (a / "report" / "report.md").is_file() and not (a / "report" / "report.html").exists()
    assert not (a / "report" / "plots").exists()
    assert "report.md" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "{tmp}/nowhere"], "does not exist"),
        (["report", "{tmp}/empty"], "no results.jsonl"),
        (["report", "{a}", "--format", "md,pdf"], "unknown report format 'pdf'"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    runs: tuple[Path, Path], tmp_path: Path, capsys: Any, argv: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    argv = [x.format(tmp=tmp_path, a=runs[0]) for x in argv]
    assert kdbench(*argv) == 2
    assert message in one_error_line(capsys)
    assert not (runs[0] / "report").exists()


def test_formats_parse() -> None:
    assert parse_formats("MD, html,md") == ["md", "html"]
    assert parse_formats(",".join(FORMATS)) == list(FORMATS)
    with pytest.raises(KdbenchError, match="choose from md, csv, html, tex"):
        parse_formats(",")


def test_out_folder_rules(runs: tuple[Path, Path], tmp_path: Path, capsys: Any) -> None:
    a, b = runs
    results = (a / "results.jsonl").read_bytes()
    # A run's own folder is never a report folder.
    assert kdbench("report", str(a), "--out", str(b), "--no-plots") == 2
    assert "is a run folder" in one_error_line(capsys)
    # A folder of other files is left alone.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert kdbench("report", str(a), "--out", str(other), "--no-plots") == 2
    assert "not a kdbench report" in one_error_line(capsys)
    # The report of the same runs is rewritten in place, stale files removed.
    out = tmp_path / "rep"
    assert kdbench("report", str(a), "--out", str(out), "--format", "md,html") == 0
    assert (out / "report.html").is_file()
    assert kdbench("report", str(a), "--out", str(out), "--format", "md", "--no-plots") == 0
    assert not (out / "report.html").exists() and not list(out.glob("plots/*.png"))
    # The report of other runs is kept unless --force.
    assert kdbench("report", str(a), str(b), "--out", str(out), "--no-plots") == 2
    assert "report of other runs" in one_error_line(capsys)
    assert kdbench("report", str(a), str(b), "--out", str(out), "--force", "--no-plots") == 0
    manifest = json.loads((out / "report.json").read_text())
    assert manifest["runs"] == [str(a.resolve()), str(b.resolve())]
    assert (a / "results.jsonl").read_bytes() == results


# --- one real run -------------------------------------------------------------------


TINY = tiny_spec()


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real PyTorch cell (about ten seconds): the records as the harness writes them."""
    tmp = tmp_path_factory.mktemp("real")
    (tmp / "tiny.toml").write_text(TINY)
    out = tmp / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "kdbench", "run", str(tmp / "tiny.toml"), "--backend",
         "pytorch", "--seeds", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.skipif(not is_installed("pytorch"), reason="torch is not installed")
@pytest.mark.torch
@pytest.mark.slow
def test_report_of_a_real_run(real_run: Path) -> None:
    digest = hashlib.sha256((real_run / "results.jsonl").read_bytes()).hexdigest()
    files = write_report([str(real_run)])
    assert all(p.is_relative_to(real_run / "report") for p in files)
    md = (real_run / "report" / "report.md").read_text()
    assert re.search(r"\| tiny +\| pytorch +\| *1/1 *\|", md) and "(n=1, no interval)" in md
    table = build([real_run]).sections[0].tables[1]
    phases = by_phase(table.shown)
    for phase in ("teacher training", "distillation", "student inference"):
        row = phases[(phase, "pytorch")]
        assert float(row["step ms"]) > 0 and float(row["samples/s"]) > 0
    # The number behind the cell, not its rounded text: on a busy machine the
    # tiny spec's rate can round to 0.00 GFLOP/s.
    flops = table.tidy.set_index(["phase", "quantity"])["median"]
    assert flops[("distill", "phases.distill.achieved_flops_per_s")] > 0
    assert phases[("distillation", "pytorch")]["GFLOP/s"] != "-"
    loss = sorted((real_run / "report" / "plots").glob("*-loss.png"))
    assert loss and loss[0].stat().st_size > 10_000
    # The CPU's vector extensions, which decide its kernels, are in the run's row.
    runs = runs_environment(load([real_run]))
    assert runs["cpu ISA"].tolist() == [" ".join(cpu_isa() or []) or "-"]
    assert hashlib.sha256((real_run / "results.jsonl").read_bytes()).hexdigest() == digest
