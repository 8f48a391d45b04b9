"""The run store loses nothing and cannot be fooled: every case of issue 9, replayed.

Real `kdbench` processes run real cells, on a stub backend (tests/stub_backend.py,
registered through $KDBENCH_BACKENDS) whose cells take about a second, so
the store's behaviour is tested without a framework's start-up cost. The
numbered cases follow the issue. Case 18 (untrusted data files) lives with
the dataset loaders' tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import conftest
import pytest

from kdbench.records.store import QUARANTINE_FILE, TORN_FILE

TESTS = Path(__file__).resolve().parent
STUB = {
    "KDBENCH_BACKENDS": "stub=stub_backend:StubBackend",
    "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p),
}
pytestmark = pytest.mark.slow


def kdbench(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return conftest.run_kdbench(*args, env={**STUB, **env}, timeout=120, cwd=cwd)


def start(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kdbench", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **STUB, **env},
    )


def write_spec(folder: Path, name: str = "s.toml", **kwargs: int) -> Path:
    """A tiny digits spec: one epoch each, so a stub cell is a second."""
    folder.mkdir(parents=True, exist_ok=True)
    options = {"name": "s", "epochs": 1, "batch_size": 64, "warmup": 2, **kwargs}
    path = folder / name
    path.write_text(conftest.tiny_spec(**options))  # type: ignore[arg-type]
    return path


def run_stub(spec: Path, out: Path, *more: str, **env: str) -> subprocess.CompletedProcess:
    return kdbench("run", str(spec), "--backend", "stub", "--out", str(out), *more, **env)


def lines(out: Path) -> list[dict]:
    """Every line of results.jsonl, each of which must parse."""
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def ok_per_cell(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in lines(out):
        counts[record["cell_id"]] = counts.get(record["cell_id"], 0) + (record["status"] == "ok")
    return counts


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error line: one, no traceback (warnings, e.g. of a busy machine, aside)."""
    err = [x for x in proc.stderr.strip().splitlines() if not x.startswith("kdbench: warning:")]
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert len(err) == 1 and err[0].startswith("kdbench: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return err[0]


def no_temp_files(out: Path) -> None:
    left = [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert not left, left


# --- lost or corrupted records ----------------------------------------------------------


def test_1_a_torn_tail_is_moved_aside_and_never_appended_onto(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_stub(write_spec(tmp_path), out, "--seeds", "2").returncode == 0
    results = out / "results.jsonl"
    first, second = results.read_text().splitlines()
    results.write_text(first + "\n" + second[:500])  # a crash cut the last line
    shown = kdbench("show", str(out))
    assert shown.returncode == 0 and "1/1" in shown.stdout
    resumed = kdbench("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "line 2 was cut off by a crash" in resumed.stderr
    assert (out / TORN_FILE).read_text() == second[:500] + "\n"
    assert ok_per_cell(out) == {"s/stub/seed0": 1, "s/stub/seed1": 1}
    again = kdbench("run", "--resume", str(out))
    assert again.returncode == 0 and "0 of 2 cells to run" in again.stdout
    assert ok_per_cell(out) == {"s/stub/seed0": 1, "s/stub/seed1": 1}


def test_2_a_damaged_middle_line_costs_that_line_only(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_stub(write_spec(tmp_path), out, "--seeds", "3").returncode == 0
    results = out / "results.jsonl"
    rows = results.read_text().splitlines()
    results.write_text("\n".join([rows[0], '{"seed": 1, "trunc', rows[2]]) + "\n")
    for command in (["show", str(out)], ["compare", str(out), str(out)]):
        proc = kdbench(*command)
        assert proc.returncode == 0, proc.stderr
        assert "line 2 is not a JSON record (damaged); it was skipped" in proc.stderr + proc.stdout
    report = kdbench("report", str(out), "--no-plots", "--format", "md")
    assert report.returncode == 0, report.stderr
    resumed = kdbench("run", "--resume", str(out))
    assert resumed.returncode == 0 and "0 of 3 cells to run" in resumed.stdout
    assert "line 2 was damaged; moved to" in resumed.stderr
    assert '"trunc' in (out / QUARANTINE_FILE).read_text()
    # The damaged line's record is whole in its cell's own file: merged back.
    assert "merged the record of s/stub/seed1" in resumed.stderr
    assert ok_per_cell(out) == {f"s/stub/seed{s}": 1 for s in range(3)}


def test_3_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "run"
    slow = start("run", str(spec), "--backend", "stub", "--seeds", "3", "--out", str(out),
                 KDBENCH_STUB_STEP_S="0.1")  # fmt: skip
    deadline = time.time() + 60
    while not (out / "run.json").exists():
        assert time.time() < deadline and slow.poll() is None
        time.sleep(0.1)
    other = one_line_error(run_stub(spec, out))
    assert f"{out} is in use by another kdbench run (pid {slow.pid} on " in other
    resume = one_line_error(kdbench("run", "--resume", str(out)))
    assert "is in use by another kdbench run" in resume
    slow.send_signal(signal.SIGKILL)  # the holder dies without releasing anything
    slow.wait(timeout=30)
    taken = kdbench("run", "--resume", str(out))
    assert taken.returncode == 0, taken.stderr
    assert ok_per_cell(out) == {f"s/stub/seed{s}": 1 for s in range(3)}
    assert all(r["settings"]["threads"] >= 1 for r in lines(out))


def test_4_write_failures_are_one_line_and_keep_every_record(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "run"
    results = out / "results.jsonl"
    full = run_stub(spec, out, "--seeds", "2", KDBENCH_STUB_DISK_FULL=str(results))
    error = one_line_error(full)  # the disk filled up while the first cell ran
    assert "cannot write the record of s/stub/seed0" in error
    assert "No space left on device" in error and f"--resume {out}" in error
    assert len(list((out / "records").glob("*.json"))) == 1  # the finished cell's record is kept
    no_temp_files(out)
    results.unlink()  # the disk has room again
    resumed = kdbench("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "merged the record of s/stub/seed0" in resumed.stderr
    assert ok_per_cell(out) == {"s/stub/seed0": 1, "s/stub/seed1": 1}
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for target in (a_file, a_file / "run"):
        assert "cannot create the run folder" in one_line_error(run_stub(spec, target))
    assert a_file.read_text() == "x"


# --- runs that silently used the wrong spec -------------------------------------------------


def test_5_a_new_run_never_reuses_what_a_folder_holds(tmp_path: Path) -> None:
    out = tmp_path / "run"
    stale = out / "specs" / "s.toml"
    stale.parent.mkdir(parents=True)
    stale.write_text("# a stale copy from another run\n")
    error = one_line_error(run_stub(write_spec(tmp_path), out))
    assert "is not empty" in error and stale.read_text().startswith("# a stale")
    # A run refused for duplicate spec file names writes nothing at all.
    one, two = write_spec(tmp_path / "a"), write_spec(tmp_path / "b", epochs=2)
    fresh = tmp_path / "fresh"
    error = one_line_error(kdbench("run", str(one), str(two), "--backend", "stub",
                                   "--out", str(fresh)))  # fmt: skip
    assert "both named s.toml" in error and not fresh.exists()


def test_6_resume_verifies_every_specs_content_hash(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_stub(write_spec(tmp_path), out, "--seeds", "2")
    assert proc.returncode == 0
    manifest = json.loads((out / "run.json").read_text())
    hashes = {job["spec_hash"] for job in manifest["jobs"]}
    assert hashes == {lines(out)[0]["spec"]["hash"]}
    copy = out / "specs" / "s.toml"
    copy.write_text(copy.read_text().replace('method = "soft"', 'method = "hard"'))
    error = one_line_error(kdbench("run", "--resume", str(out)))
    assert f"{copy}: its content (hash" in error and "the spec changed" in error


def test_7_a_run_folder_is_self_contained_and_movable(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "run"
    killed = start("run", str(spec), "--backend", "stub", "--seeds", "2", "--out", str(out),
                   KDBENCH_STUB_STEP_S="0.05")  # fmt: skip
    deadline = time.time() + 60
    while not ((out / "results.jsonl").exists() and lines(out)):
        assert time.time() < deadline and killed.poll() is None
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    manifest = json.loads((out / "run.json").read_text())
    assert all(not Path(job["spec_path"]).is_absolute() for job in manifest["jobs"])
    assert all(job["teacher_cache"] == "teachers" for job in manifest["jobs"])
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    out.rename(moved)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    resumed = kdbench("run", "--resume", str(moved), cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr
    assert ok_per_cell(moved) == {"s/stub/seed0": 1, "s/stub/seed1": 1}
    newest = lines(moved)[-1]
    assert newest["spec"]["path"].startswith(str(moved))


def test_8_resume_applies_or_refuses_every_flag_and_retries_failures(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "run"
    once = tmp_path / "markers"
    once.mkdir()
    env = {"KDBENCH_STUB_FAIL": "1", "KDBENCH_STUB_FAIL_ONCE_DIR": str(once)}
    first = run_stub(spec, out, "--seeds", "3", **env)
    assert first.returncode == 1 and "seed1: failed" in first.stdout
    for flag in (["--seeds", "5"], ["--compile", "eager"], ["--threads", "1"],
                 ["--teacher-cache", str(tmp_path)], ["--deterministic"]):  # fmt: skip
        error = one_line_error(kdbench("run", "--resume", str(out), *flag))
        assert f"{flag[0]} would change them" in error
    nothing = kdbench("run", "--resume", str(out), "--backend", "stub", "--cell-timeout", "60")
    assert nothing.returncode == 0 and "0 of 3 cells to run" in nothing.stdout
    retried = kdbench("run", "--resume", str(out), "--retry-failed", **env)
    assert retried.returncode == 0 and "1 of 3 cells to run" in retried.stdout, retried.stdout
    statuses = [(r["cell_id"], r["status"]) for r in lines(out)]
    assert statuses.count(("s/stub/seed1", "failed")) == 1  # append-only: the old attempt stays
    assert statuses[-1] == ("s/stub/seed1", "ok")
    shown = kdbench("show", str(out))
    assert "3/3" in shown.stdout  # the newer attempt supersedes the failed one
    timed = kdbench("run", "--resume", str(out), "--cell-timeout", "-1")
    assert "--cell-timeout must be a positive number" in one_line_error(timed)


def test_9_tables_group_by_content_not_by_name(tmp_path: Path) -> None:
    runs = []
    for epochs in (1, 2, 3):
        out = tmp_path / f"run{epochs}"
        assert run_stub(write_spec(tmp_path / f"s{epochs}", epochs=epochs), out).returncode == 0
        runs.append(str(out))
    shown = kdbench("show", *runs)
    assert shown.returncode == 0, shown.stderr
    rows = [line for line in shown.stdout.splitlines() if "│ s #" in line]
    assert len(rows) == 3 and all("1/1" in row for row in rows)
    assert "3/3" not in shown.stdout


# --- checks and commands that misled or harmed --------------------------------------------


def test_11_report_removes_only_its_own_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_stub(write_spec(tmp_path), out).returncode == 0
    report = tmp_path / "report"
    report.mkdir()
    victim, absolute = tmp_path / "victim.txt", tmp_path / "absolute.txt"
    victim.write_text("keep me")
    absolute.write_text("keep me too")
    own = report / "report.md"
    own.write_text("an old report")
    (report / "report.json").write_text(json.dumps({
        "runs": [str(out.resolve())],
        "files": ["../victim.txt", str(absolute), "report.md", "csv/../../victim.txt"],
    }))  # fmt: skip
    proc = kdbench("report", str(out), "--out", str(report), "--format", "html", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "keep me" and absolute.read_text() == "keep me too"
    assert not own.exists()  # a stale file of its own is cleaned up


def test_12_killed_is_not_oom_and_sighup_stops_cleanly(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "run"
    # Slow steps: the second cell is still running when SIGHUP comes, on a busy machine too.
    runner = start("run", str(spec), "--backend", "stub", "--seeds", "2", "--out", str(out),
                   KDBENCH_STUB_STEP_S="0.5")  # fmt: skip
    job = None
    deadline = time.time() + 120
    while job is None:
        assert time.time() < deadline and runner.poll() is None
        found = subprocess.run(["pgrep", "-f", f"kdbench.runner.worker {out}"],
                               capture_output=True, text=True).stdout.split()  # fmt: skip
        job = int(found[0]) if found else None
        time.sleep(0.1)
    os.kill(job, signal.SIGKILL)
    while not ((out / "results.jsonl").exists() and lines(out)):
        assert time.time() < deadline and runner.poll() is None
        time.sleep(0.1)
    record = lines(out)[0]
    assert record["status"] == "killed" and "signal 9 SIGKILL" in record["error"]
    assert runner.poll() is None, "the second cell finished before SIGHUP could stop it"
    runner.send_signal(signal.SIGHUP)
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 130, err
    assert f"continue with: kdbench run --resume {out}" in err


def test_13_log_names_never_collide(tmp_path: Path) -> None:
    a, b = write_spec(tmp_path, "x,y.toml"), write_spec(tmp_path, "x_y.toml")
    out = tmp_path / "run"
    proc = kdbench("run", str(a), str(b), "--backend", "stub", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    logs = sorted(p.name for p in (out / "logs").glob("*.log"))
    assert len(logs) == 2 and logs[0] != logs[1]


def test_14_show_reads_records_without_a_status(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_stub(write_spec(tmp_path), out).returncode == 0
    record = lines(out)[0]
    del record["status"]
    (out / "results.jsonl").write_text(json.dumps(record) + "\n")
    shown = kdbench("show", str(out))
    assert shown.returncode == 0 and "Traceback" not in shown.stderr and "0/1" in shown.stdout


# --- bad input up front -------------------------------------------------------------------


def test_15_deeply_nested_toml_is_one_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
    for args in (["run", str(deep)], ["run", "--matrix", str(deep)], ["validate", str(deep)]):
        assert "nested too deeply" in one_line_error(kdbench(*args))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cell-timeout", "0"], "--cell-timeout must be a positive number of seconds"),
        (["--cell-timeout", "-5"], "--cell-timeout must be a positive number of seconds"),
        (["--cell-timeout", "nan"], "--cell-timeout must be a positive number of seconds"),
        (["--threads", "-3"], "setting threads: Input should be greater than or equal to 0"),
        (["--threads", "100000"], "setting threads: Input should be less than or equal to 1024"),
        (["--threads", "1000"], "setting threads: at most"),
        (["--seeds", "100000"], "--seeds must be at least 1 and at most 100"),
    ],
)
def test_16_out_of_range_values_are_refused_before_anything_is_written(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    error = one_line_error(run_stub(write_spec(tmp_path), out, *args))
    assert message in error and not out.exists()


def test_16_matrix_values_are_range_checked(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    for axes, message in (("threads = [-1]", "axis 'threads': -1"),
                          ("", "cell_timeout_s")):  # fmt: skip
        matrix = tmp_path / "m.toml"
        timeout = "inf" if not axes else "60"
        matrix.write_text(f'name = "m"\nspecs = ["{spec}"]\ncell_timeout_s = {timeout}\n'
                          + (f"[axes]\n{axes}\n" if axes else ""))  # fmt: skip
        assert message in one_line_error(kdbench("run", "--matrix", str(matrix)))


def test_17_data_and_plan_mistakes_are_found_before_the_first_cell(tmp_path: Path) -> None:
    mnist = tmp_path / "mnist.toml"
    mnist.write_text(conftest.tiny_spec().replace('"digits"', '"mnist"'))
    out = tmp_path / "run"
    missing = one_line_error(kdbench("run", str(mnist), "--backend", "stub", "--out", str(out),
                                     "--data-dir", str(tmp_path / "nowhere")))  # fmt: skip
    assert "data:" in missing and not out.exists()
    big = write_spec(tmp_path / "big", batch_size=5000)
    error = one_line_error(run_stub(big, out))
    assert "teacher.batch_size 5000 is larger than the training split" in error
    warm = write_spec(tmp_path / "warm", warmup=500)
    error = one_line_error(run_stub(warm, out))
    assert "measure.warmup_steps 500 leaves no steady-state step" in error
    assert not out.exists()


def test_19_a_cell_whose_runner_died_records_nothing(tmp_path: Path) -> None:
    """A runner killed outright closes the event pipe before the kernel kills its
    cell; a cell that then recorded the broken pipe as its failure would be taken
    for done by --resume (CI caught one: seed0 'failed: BrokenPipeError')."""
    spec, out = write_spec(tmp_path), tmp_path / "run"
    runner = start("run", str(spec), "--backend", "stub", "--seeds", "1", "--out", str(out),
                   KDBENCH_STUB_STEP_S="0.2")  # fmt: skip
    deadline = time.time() + 60
    while not list(out.glob("logs/*.job.json")):  # the first cell has started
        assert time.time() < deadline and runner.poll() is None
        time.sleep(0.05)
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=30)
    (job_file,) = (out / "logs").glob("*.job.json")
    record_file = Path(json.loads(job_file.read_text())["record_file"])
    # The same cell under a parent that is gone before its first event (and that,
    # unlike the runner, set no death signal): the event pipe is broken from the start.
    orphan = subprocess.run(
        [sys.executable, "-c",
         "import os, subprocess, sys; p = subprocess.Popen([sys.executable, '-m', "
         "'kdbench.runner.worker', sys.argv[1]], stdout=subprocess.PIPE); print(p.pid)",
         str(job_file)],
        capture_output=True, text=True, env={**os.environ, **STUB}, timeout=60,
    )  # fmt: skip
    pid = int(orphan.stdout)
    while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text():
        assert time.time() < deadline + 60, "the orphaned cell did not stop"
        time.sleep(0.05)
    assert not record_file.exists()
    assert not list((out / "records").glob("*.json"))
    resumed = kdbench("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert ok_per_cell(out) == {"s/stub/seed0": 1}


# --- crash consistency ----------------------------------------------------------------------


KILLS = 30


def test_the_runner_killed_at_random_moments_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """SIGKILL the runner at a random moment (seeded), then --resume: after each
    resume every line parses and every cell has exactly one ok record."""
    import random

    rng = random.Random(20261129)
    spec = write_spec(tmp_path)
    cells = {f"s/stub/seed{s}": 1 for s in range(3)}
    seen = {"before the run was written": 0, "resumed": 0, "torn tails": 0, "merged": 0}
    kill = 0
    while seen["resumed"] < KILLS:  # 30 kills of a written run, and the early ones besides
        kill += 1
        assert kill <= 4 * KILLS, f"{kill - 1} kills, yet only {seen}"  # bounded, whatever happens
        out = tmp_path / f"run{kill}"
        runner = start("run", str(spec), "--backend", "stub", "--seeds", "3", "--out", str(out))
        if rng.random() < 0.25:  # any moment of the start, the run written or not
            time.sleep(rng.uniform(0.0, 1.5))
        else:  # a moment of the written run, however long the start took on a busy machine
            deadline = time.time() + 60
            while not (out / "run.json").exists() and runner.poll() is None:
                assert time.time() < deadline, "the run was not written within 60 s"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 3.0))
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=30)
        assert runner.returncode in (0, -signal.SIGKILL), f"kill {kill}: {runner.stderr.read()}"
        if not (out / "run.json").exists():  # killed before the run was written: nothing to lose
            assert not (out / "results.jsonl").exists()
            seen["before the run was written"] += 1
            continue
        resumed = kdbench("run", "--resume", str(out))
        assert resumed.returncode == 0, f"kill {kill}: {resumed.stderr}"
        assert ok_per_cell(out) == cells, f"kill {kill}"
        seen["resumed"] += 1
        seen["torn tails"] += resumed.stderr.count("was cut off by a crash")
        seen["merged"] += resumed.stderr.count("merged the record of")
    print(f"\n{kill} kills: {seen}; records lost: 0, cells run twice: 0")
    left = subprocess.run(["pgrep", "-f", f"kdbench.runner.worker {tmp_path}"],
                          capture_output=True, text=True).stdout  # fmt: skip
    assert not left.strip(), "a cell outlived its runner"


def test_a_stop_request_is_seen_even_if_its_exception_was_swallowed(monkeypatch) -> None:
    """The signal handler's KeyboardInterrupt can land in an at-fork hook, where
    Python ignores it (CI saw SIGHUP end a run with exit 1, not 130); the
    runner's waits see the stop request instead, before the next cell starts."""
    from kdbench.runner import execute as runner

    started = []
    monkeypatch.setattr(runner, "run_job", lambda job, run, on_event: started.append(job))
    runner.STOP.set()
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.execute(None, ["a job"], lambda *a: None, lambda r: None)  # type: ignore[arg-type]
    finally:
        runner.STOP.clear()
    assert started == []


def test_more_seeds_for_a_study_go_to_another_folder_and_report_together(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    first, more = tmp_path / "first", tmp_path / "more"
    assert run_stub(spec, first, "--seeds", "2").returncode == 0
    added = run_stub(spec, more, "--seeds", "4", "--first-seed", "2")
    assert added.returncode == 0, added.stderr
    assert ok_per_cell(more) == {"s/stub/seed2": 1, "s/stub/seed3": 1}
    # The folder resumes as planned: --resume plans nothing new.
    again = kdbench("run", "--resume", str(more))
    assert again.returncode == 0 and "0 of 2 cells to run" in again.stdout
    report = kdbench("report", str(first), str(more), "--out", str(tmp_path / "rep"))
    assert report.returncode == 0, report.stderr
    assert "4/4" in (tmp_path / "rep" / "report.md").read_text()
    beyond = run_stub(spec, tmp_path / "none", "--seeds", "2", "--first-seed", "2")
    assert beyond.returncode == 2
    assert one_line_error(beyond).endswith("its seeds are 0..1 (raise --seeds)")
    assert not (tmp_path / "none").exists()
