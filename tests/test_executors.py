"""Cluster executors: a local Ray cluster and submitit's local executor run real cells.

Real `kdbench run` processes on the stub backend (tests/stub_backend.py),
so each case takes seconds; the quick and default matrices on real backends
are measured by benchmarks/executor_check.py. The cases follow the issue:
records identical to the local executor's, a worker killed mid-cell, Ctrl-C
then --resume, a driver killed and restarted, a teacher trained once by cells
that share it on two workers.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_run_store import kdbench, lines, ok_per_cell, one_line_error, start, write_spec

pytestmark = pytest.mark.slow

# What a cell computes, as opposed to when, where and how fast: the same for
# the same cell whichever executor ran it.
COMPUTED = ("cell_id", "status", "backend", "seed", "label", "overrides", "settings", "metrics",
            "framework", "framework_version", "device", "data")  # fmt: skip
PHASE_COMPUTED = ("steps", "samples", "epochs", "batch_size", "loss_step0", "loss_epochs",
                  "warmup_steps", "steady_steps", "flops_per_step")  # fmt: skip


def content(record: dict) -> dict:
    """What the record says was computed (timings, host and ids left out)."""
    kept = {k: record.get(k) for k in COMPUTED}
    # Which of two cells sharing a teacher trains it is a race the executor decides.
    kept["metrics"] = {
        k: v for k, v in (kept["metrics"] or {}).items() if k != "teacher_from_cache"
    }
    kept["phases"] = {
        name: {k: phase.get(k) for k in PHASE_COMPUTED}
        for name, phase in (record.get("phases") or {}).items()
    }
    return kept


def matrix(folder: Path, spec: Path, table: str, *, seeds: int = 2, axes: str = "") -> Path:
    path = folder / "m.toml"
    path.write_text(
        f'name = "m"\nspecs = ["{spec}"]\nseeds = {seeds}\nbackends = ["stub"]\n'
        f"cell_timeout_s = 300\n{axes}\n[executor]\n{table}\n"
    )
    return path


RAY = "kind = 'ray'\nworkers = 2\ncpus_per_cell = 1"
# Two temperatures of one seed: two cells at once that share one teacher (its
# key has no distill section).
TWO_TEMPERATURES = 'axes = { "distill.temperature" = [2.0, 8.0] }'
SUBMITIT = "kind = 'slurm'\ncluster = 'local'\ncpus_per_cell = 1\nmax_parallel = 2\npoll_s = 0.2"


def matrix_args(path: Path, out: Path) -> tuple[str, ...]:
    return ("run", "--matrix", str(path), "--out", str(out), "--threads", "1")


def run_matrix(path: Path, out: Path, *more: str, **env: str):
    return kdbench(*matrix_args(path, out), *more, **env)


def start_matrix(path: Path, out: Path, step_s: str):
    """kdbench run of the matrix in the background, each stub step sleeping step_s."""
    return start(*matrix_args(path, out), KDBENCH_STUB_STEP_S=step_s)


def cell_processes(out: Path) -> list[psutil.Process]:
    """The cell processes of a run (python -m kdbench.runner.worker OUT/logs/...)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "kdbench.runner.worker" in cmdline and any(str(out) in a for a in cmdline):
            found.append(proc)
    return found


def wait_for(condition, what: str, runner=None, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        if runner is not None:
            assert runner.poll() is None, f"the runner ended first: {runner.stderr.read()}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def local_records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The reference: the same two cells on the local executor."""
    folder = tmp_path_factory.mktemp("local")
    spec = write_spec(folder, epochs=2)
    out = folder / "run"
    proc = run_matrix(matrix(folder, spec, "kind = 'local'", seeds=1, axes=TWO_TEMPERATURES), out)
    assert proc.returncode == 0, proc.stderr
    return {r["cell_id"]: r for r in lines(out)}


def test_ray_runs_every_cell_as_the_local_executor_does_and_trains_a_shared_teacher_once(
    tmp_path: Path, local_records
) -> None:
    pytest.importorskip("ray")
    spec = write_spec(tmp_path, epochs=2)
    out = tmp_path / "run"
    path = matrix(tmp_path, spec, RAY, seeds=1, axes=TWO_TEMPERATURES)
    proc = run_matrix(path, out, KDBENCH_STUB_STEP_S="0.02")  # slow enough to overlap
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "cells to run on ray" in proc.stdout
    records = {r["cell_id"]: r for r in lines(out)}
    assert set(records) == set(local_records) and len(lines(out)) == 2
    for cell_id, record in records.items():
        assert record["status"] == "ok"
        assert record["host"]["executor"] == "ray" and record["host"]["hostname"]
        assert record["metrics"]["distilled_acc"] is not None
        assert local_records[cell_id]["host"]["executor"] == "local"
        assert content(record) == content(local_records[cell_id])
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["executor"]["kind"] == "ray" and manifest["executor"]["workers"] == 2
    # The two cells ran at once on two workers; one trained the teacher, the
    # other waited for it and loaded it.
    starts = sorted(r["started_at"] for r in records.values())
    cached = sorted(bool(r["phases"]["teacher"].get("from_cache")) for r in records.values())
    assert cached == [False, True], starts
    assert len(list((out / "teachers").glob("*.npz"))) == 1


def test_submitit_runs_every_cell_as_the_local_executor_does(tmp_path: Path, local_records) -> None:
    pytest.importorskip("submitit")
    spec = write_spec(tmp_path, epochs=2)
    out = tmp_path / "run"
    proc = run_matrix(matrix(tmp_path, spec, SUBMITIT, seeds=1, axes=TWO_TEMPERATURES), out)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    records = {r["cell_id"]: r for r in lines(out)}
    assert set(records) == set(local_records) and len(lines(out)) == 2
    for cell_id, record in records.items():
        assert record["status"] == "ok" and record["host"]["executor"] == "slurm"
        assert content(record) == content(local_records[cell_id])
    jobs = json.loads((out / "run.json").read_text())["slurm_jobs"]
    assert set(jobs) == set(records)
    for cell_id, job in jobs.items():  # each job id names the job that published the record
        assert (out / "slurm" / job["job_id"]).is_dir()
        assert records[cell_id]["attempt_id"] == job["attempt_id"]


def test_a_ray_worker_killed_mid_cell_is_a_failed_record_and_the_rest_finish(
    tmp_path: Path,
) -> None:
    pytest.importorskip("ray")
    spec = write_spec(tmp_path, epochs=2)
    out = tmp_path / "run"
    path = matrix(tmp_path, spec, RAY)
    runner = start_matrix(path, out, "0.05")
    seed0: list[psutil.Process] = []

    def seed0_running() -> bool:
        seed0[:] = [p for p in cell_processes(out) if any("seed0" in a for a in p.cmdline())]
        return bool(seed0)

    wait_for(seed0_running, "the cell of seed 0 to start", runner)
    worker = seed0[0].parent()  # the Ray worker running the cell's task
    assert worker is not None and "ray" in " ".join(worker.cmdline()).lower()
    worker.kill()
    _, err = runner.communicate(timeout=180)
    assert runner.returncode == 1, err
    records = {r["cell_id"]: r for r in lines(out)}
    assert records["s/stub/seed1"]["status"] == "ok"
    failed = records["s/stub/seed0"]
    assert failed["status"] == "failed" and "Ray worker running the cell died" in failed["error"]
    assert failed["host"]["executor"] == "ray" and failed["host"].get("hostname") is None
    assert len(lines(out)) == 2
    wait_for(lambda: not seed0[0].is_running() or seed0[0].status() == "zombie", "the cell to die")


def test_ctrl_c_cancels_the_ray_tasks_and_resume_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    pytest.importorskip("ray")
    spec = write_spec(tmp_path, epochs=2)
    out = tmp_path / "run"
    path = matrix(tmp_path, spec, RAY, seeds=3)
    runner = start_matrix(path, out, "0.05")
    wait_for(lambda: len(cell_processes(out)) == 2, "two cells to run at once", runner)
    runner.send_signal(signal.SIGINT)
    _, err = runner.communicate(timeout=120)
    assert runner.returncode == 130, err
    assert f"continue with: kdbench run --resume {out}" in err
    wait_for(lambda: not cell_processes(out), "the cancelled cells to stop", timeout=60)
    before = lines(out) if (out / "results.jsonl").exists() else []
    resumed = kdbench("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "on ray" in resumed.stdout  # the executor the run was started with
    assert ok_per_cell(out) == {f"s/stub/seed{s}": 1 for s in range(3)}
    assert len(lines(out)) == 3 and lines(out)[: len(before)] == before


def test_a_restarted_driver_waits_for_the_jobs_it_left_instead_of_running_them_again(
    tmp_path: Path,
) -> None:
    pytest.importorskip("submitit")
    spec = write_spec(tmp_path, epochs=2)
    out = tmp_path / "run"
    path = matrix(tmp_path, spec, SUBMITIT, seeds=3)
    runner = start_matrix(path, out, "0.03")

    def two_jobs() -> bool:
        manifest = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
        return len(manifest.get("slurm_jobs", {})) == 2 and len(cell_processes(out)) == 2

    wait_for(two_jobs, "two jobs submitted and running", runner)
    left = json.loads((out / "run.json").read_text())["slurm_jobs"]
    runner.send_signal(signal.SIGKILL)  # the driver dies; its jobs go on
    runner.wait(timeout=30)
    assert len(cell_processes(out)) == 2
    resumed = kdbench("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert ok_per_cell(out) == {f"s/stub/seed{s}": 1 for s in range(3)}
    after = json.loads((out / "run.json").read_text())["slurm_jobs"]
    for cell_id, job in left.items():  # waited for, not submitted again
        assert after[cell_id] == job
    records = {r["cell_id"]: r for r in lines(out)}
    assert {records[c]["attempt_id"] for c in left} == {j["attempt_id"] for j in left.values()}
    assert len(list((out / "slurm").glob("[0-9]*"))) == 3  # three jobs in all


def test_executor_mistakes_are_one_line_before_any_cell(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    bad = matrix(tmp_path, spec, "kind = 'ray'\npartitoin = 'gpu'")
    error = one_line_error(run_matrix(bad, tmp_path / "a"))
    assert "executor.partitoin: unknown key; allowed keys: kind, cpus_per_cell" in error
    bad = matrix(tmp_path, spec, "kind = 'kubernetes'")
    assert "executor.kind" in one_line_error(run_matrix(bad, tmp_path / "b"))
    error = one_line_error(kdbench("run", str(spec), "--backend", "stub", "--executor", "mpi"))
    assert "--executor: invalid choice: 'mpi'" in error
    if pytest.importorskip("ray"):
        big = matrix(tmp_path, spec, "kind = 'ray'\nworkers = 1\ncpus_per_cell = 4")
        error = one_line_error(run_matrix(big, tmp_path / "c"))
        assert "asks for 4 CPUs and 0 GPUs; the cluster has 1 CPUs" in error
        assert not (tmp_path / "c" / "results.jsonl").exists()


def test_slurm_jobs_ask_for_what_the_executor_table_says(tmp_path: Path, monkeypatch) -> None:
    submitit = pytest.importorskip("submitit")
    from kdbench.runner.executors.options import ExecutorOptions
    from kdbench.runner.executors.slurm_jobs import make_executor
    from kdbench.runner.folder import Run

    (tmp_path / "bin").mkdir()
    srun = tmp_path / "bin" / "srun"  # submitit looks for it to know it is on a cluster
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    options = ExecutorOptions(
        kind="slurm", partition="gpu", mem_gb=32.0, slurm_options={"account": "me", "qos": "short"}
    )
    run = Run(tmp_path / "run", "r1", [], 900.0)
    executor = make_executor(submitit, run, options, cpus=8, gpus=1)
    script = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--cpus-per-task=8", "--gpus-per-node=1", "--mem=32GB",
                 "--time=20", "--account=me", "--qos=short", "--job-name=kdbench-r1"):  # fmt: skip
        assert f"#SBATCH {line}\n" in script
    untimed = make_executor(submitit, Run(tmp_path / "run", "r1", [], None), options, 1, 0)
    assert "#SBATCH --time=1440\n" in untimed._executor._make_submission_file_text("x", "u")


def test_slurm_without_a_cluster_and_missing_packages_are_one_line(
    tmp_path: Path, monkeypatch
) -> None:
    pytest.importorskip("submitit")
    spec = write_spec(tmp_path)
    path = matrix(tmp_path, spec, "kind = 'slurm'")
    error = one_line_error(run_matrix(path, tmp_path / "run", PATH="/usr/bin:/bin"))
    assert "no srun on PATH, so this is not a Slurm machine" in error
    assert "cluster = 'local'" in error
    assert not (tmp_path / "run").exists()  # refused before anything is written

    from kdbench.errors import KdbenchError
    from kdbench.runner.executors.ray_cluster import import_ray
    from kdbench.runner.executors.slurm_jobs import import_submitit

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(KdbenchError, match=r"pip install 'kdbench\[ray\]'"):
        import_ray()
    with pytest.raises(KdbenchError, match=r"pip install 'kdbench\[slurm\]'"):
        import_submitit()
