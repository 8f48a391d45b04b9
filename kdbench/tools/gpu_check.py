"""Sanity checks of a GPU run: every cell ok, on a GPU, with device memory
peaks and synced step times that make sense. ``python -m kdbench.tools.gpu_check RUN_DIR``."""

from __future__ import annotations

import sys

import pandas as pd

from kdbench.records.frame import load_runs
from kdbench.records.schema import column, phase_column

TRAIN_PHASES = ("teacher", "scratch", "distill")


def problems(frame: pd.DataFrame) -> list[str]:
    found = []
    for _, row in frame.iterrows():
        cell = row["cell_id"]
        if row["status"] != "ok":
            found.append(f"{cell}: {row['status']}: {row.get('error')}")
            continue
        if row.get(column("environment.device_kind")) != "gpu":
            found.append(f"{cell}: ran on {row.get('device')}, not a GPU")
        for phase in (*TRAIN_PHASES, "eval_teacher", "eval_student"):
            peak = row.get(phase_column(phase, "device_peak_bytes"))
            median = row.get(phase_column(phase, "step_time_median_s"))
            if not (isinstance(peak, int | float) and peak > 0):
                found.append(f"{cell}: {phase}: no device memory peak ({peak})")
            if not (isinstance(median, float) and 1e-6 < median < 10):
                found.append(f"{cell}: {phase}: implausible median step time {median}")
        for phase in TRAIN_PHASES:
            warm = row.get(phase_column(phase, "first_step_s"))
            if isinstance(warm, float) and warm < row[phase_column(phase, "step_time_median_s")]:
                found.append(
                    f"{cell}: {phase}: the first (compiling) step was faster than the median"
                )
    return found


def main(argv: list[str]) -> int:
    frame = load_runs(argv[:1])
    table = pd.DataFrame(
        {
            "cell": frame["cell_id"],
            "device": frame.get("device"),
            "status": frame["status"],
            "distill ms": frame.get("phases.distill.step_time_median_s", pd.Series(dtype=float))
            * 1e3,
            "distill MiB": frame.get("phases.distill.device_peak_bytes", pd.Series(dtype=float))
            / 2**20,
            "teacher ms": frame.get("phases.teacher.step_time_median_s", pd.Series(dtype=float))
            * 1e3,
            "teacher MiB": frame.get("phases.teacher.device_peak_bytes", pd.Series(dtype=float))
            / 2**20,
            "distilled acc %": frame.get("metrics.distilled_acc", pd.Series(dtype=float)) * 100,
        }
    )
    found = problems(frame)
    for line in found:
        print(f"PROBLEM {line}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("gpu check:", "FAILED" if found else "ok", f"({len(frame)} cells)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
