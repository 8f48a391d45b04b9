"""Result records: appended one line at a time, read back even after a crash."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kdbench.errors import KdbenchError
from kdbench.host import cpu_isa
from kdbench.records import append_record, load_runs, read_records, upgrade
from kdbench.tables import summary


def record(backend: str, seed: int, acc: float, status: str = "ok") -> dict:
    return {
        "schema_version": 1,
        "cell_id": f"s/{backend}/seed{seed}",
        "spec": {"name": "s", "hash": "abc"},
        "backend": backend,
        "device": "cpu",
        "seed": seed,
        "settings": {"compile_mode": "eager", "precision": "float32"},
        "status": status,
        "error": None if status == "ok" else "boom",
        "duration_s": 1.0,
        "metrics": {
            "teacher_acc": 0.9,
            "scratch_acc": acc,
            "distilled_acc": acc + 0.01,
            "gain": 0.01,
            "agreement": 0.95,
        },
        "phases": {
            "distill": {
                "step_time_median_s": 0.002,
                "throughput_samples_per_s": 32000.0,
                "warmup_s": 0.1,
                "loss_step0": math.nan,
                "step_times_s": [0.002, 0.002],
            }
        },
    }


def test_append_then_load(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    for seed in range(2):
        append_record(path, upgrade(record("pytorch", seed, 0.8)))
    append_record(path, upgrade(record("jax", 0, 0.8, status="failed")))
    rows = read_records(path)
    assert [r.seed for r in rows] == [0, 1, 0]
    assert rows[0].phases["distill"].loss_step0 is None  # NaN is stored as null
    frame = load_runs([tmp_path])
    assert len(frame) == 3 and "metrics.scratch_acc" in frame
    assert "phases.distill.step_times_s" not in frame  # raw samples only on request
    assert "phases.distill.step_times_s" in load_runs([tmp_path], keep_step_times=True)
    table = summary(frame).set_index("backend")
    assert table.loc["pytorch", "seeds ok"] == "2/2"
    assert table.loc["pytorch", "scratch acc %"] == "80.00 ± 0.00"
    assert table.loc["jax", "seeds ok"] == "0/1" and "failed: boom" in table.loc["jax", "failures"]


def test_a_torn_last_line_keeps_every_complete_record(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    append_record(path, upgrade(record("pytorch", 0, 0.8)))
    append_record(path, upgrade(record("pytorch", 1, 0.8)))
    with open(path, "a") as fh:
        fh.write(json.dumps(record("pytorch", 2, 0.8))[:40])
    before = path.read_bytes()
    with pytest.warns(UserWarning, match="line 3 is incomplete"):
        rows = read_records(path)
    assert [r.seed for r in rows] == [0, 1]
    assert path.read_bytes() == before  # reading never rewrites the file


def test_a_damaged_middle_line_costs_that_line_only(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    for seed in range(3):
        append_record(path, upgrade(record("pytorch", seed, 0.8)))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "not json", lines[2]]) + "\n")
    with pytest.warns(UserWarning, match="line 2 is not a JSON record"):
        rows = read_records(path)
    assert [r.seed for r in rows] == [0, 2]


def test_loading_a_folder_without_results_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(KdbenchError, match="no results.jsonl here"):
        load_runs([tmp_path])


def test_cells_with_different_matrix_settings_never_share_a_row(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    for label, acc in (("distill.temperature=2.0", 0.8), ("distill.temperature=8.0", 0.6)):
        append_record(path, upgrade({**record("pytorch", 0, acc), "label": label}))
    table = summary(load_runs([tmp_path])).set_index("settings")
    assert table.loc["distill.temperature=2.0", "scratch acc %"] == "80.00"
    assert table.loc["distill.temperature=8.0", "scratch acc %"] == "60.00"


def test_cpu_isa_names_the_kernel_deciding_extensions_of_x86_and_arm() -> None:
    x86 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16 amx_tile rdrand\n"
    assert cpu_isa(x86) == ["amx_tile", "avx", "avx2", "avx512_bf16", "avx512f", "fma", "sse4_2"]
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm sve bf16 i8mm\n"
    assert cpu_isa(arm) == ["asimd", "bf16", "i8mm", "sve"]
    assert cpu_isa("processor\t: 0\n") is None  # no flags line: unknown, not "none"
