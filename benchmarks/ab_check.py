"""Interleaved A/B regression checks, repeated: how often does compare get it right?

Each repetition makes three A/B runs of the quick matrix (1 seed, 3 rounds):
A/A (the same environment under two labels), a candidate whose every training
step is 20% slower, and one 3% slower (tests/slow_env: the same interpreter,
its steps stretched by a busy-wait). Each is judged by
``kdbench compare RUN --envs a b``, once per statistic (the floor, compare's
default, and the median), so both rules meet the same runs; the three
conditions take turns inside a repetition so that drift of the machine
spreads over all of them. Prints every outcome, then per statistic and
condition how often compare flagged a regression (exit 1).

    python benchmarks/ab_check.py --repeats 10 --backend pytorch --out /tmp/ab [--duet]
    python benchmarks/ab_check.py --out /tmp/ab --judge-only   # judge those runs again
    python benchmarks/ab_check.py --repeats 10 --neighbours 2 --out /tmp/abn   # beside load

Goals (issue 12): A/A never flagged, +20% flagged every time, +3% never.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ab_envs import env_flags, interpreter  # noqa: E402

CONDITIONS = {"A/A": 1.0, "+20%": 1.2, "+3%": 1.03}
WANTED = {"A/A": False, "+20%": True, "+3%": False}  # flagged?
STATISTICS = ("floor", "median")


def busy_neighbour(seed: int) -> None:
    """Busy for 0-3 s, idle for 0-3 s, at random, forever: load that comes and goes."""
    rng = random.Random(seed)
    while True:
        time.sleep(rng.uniform(0.0, 3.0))
        end = time.perf_counter() + rng.uniform(0.0, 3.0)
        while time.perf_counter() < end:
            pass


def start_neighbours(count: int) -> list[multiprocessing.Process]:
    procs = [multiprocessing.Process(target=busy_neighbour, args=(i,)) for i in range(count)]
    for proc in procs:
        proc.daemon = True  # gone with this script
        proc.start()
    return procs


def folder_of(out: Path, repeat: int, condition: str) -> Path:
    return out / f"r{repeat}-{condition.strip('+%').replace('/', '')}"


def ab_run(folder: Path, slowdown: float, args: argparse.Namespace) -> float:
    """One A/B run of the matrix; its wall time in seconds."""
    envs = (("a", interpreter(folder / "envs", "a")),)
    envs += (("b", interpreter(folder / "envs", "b", slowdown)),)
    run = [sys.executable, "-m", "kdbench", "run", "--matrix", args.matrix]
    run += ["--backend", args.backend, "--rounds", str(args.rounds), "--seeds", "1"]
    run += ["--threads", str(args.threads)] + (["--duet"] if args.duet else [])
    run += ["--out", str(folder / "run"), *env_flags(*envs)]
    started = time.perf_counter()
    done = subprocess.run(run, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"kdbench run failed in {folder}:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def judge(folder: Path, statistic: str) -> dict:
    """compare's exit status, cell verdicts and per-round ratios of one A/B run."""
    compare = [sys.executable, "-m", "kdbench", "compare", str(folder / "run")]
    compare += ["--envs", "a", "b", "--statistic", statistic, "--json", "-"]
    judged = subprocess.run(compare, capture_output=True, text=True)
    if judged.returncode not in (0, 1):
        raise SystemExit(f"kdbench compare failed on {folder}:\n{judged.stderr[-2000:]}")
    result = json.loads(judged.stdout)
    ratios = {}
    for phase in ("teacher", "distill"):
        values = [c["time"][phase]["ratio"] for c in result["cells"] if phase in c["time"]]
        ratios[phase] = sorted(v for v in values if v is not None)
    return {
        "exit": judged.returncode,
        "verdicts": sorted({c["verdict"] for c in result["cells"]}),
        "ratios": ratios,
    }


def summary(outcomes: list[dict], console: Console) -> None:
    """Per statistic, a table of every run, then how often each condition was flagged."""
    for statistic in STATISTICS:
        table = Table(title=f"judged on the {statistic}")
        for col in ("repeat", "condition", "exit", "verdicts", "teacher ratios", "distill ratios"):
            table.add_column(col)
        for o in outcomes:
            j = o["judged"][statistic]
            ratios = {p: " ".join(f"{r:.2f}" for r in v) for p, v in j["ratios"].items()}
            row = (str(o["repeat"]), o["condition"], str(j["exit"]), "/".join(j["verdicts"]))
            table.add_row(*row, ratios["teacher"], ratios["distill"])
        console.print(table)
    for statistic in STATISTICS:
        for condition in CONDITIONS:
            rows = [o["judged"][statistic] for o in outcomes if o["condition"] == condition]
            flagged = sum(j["exit"] == 1 for j in rows)
            goal = "every time" if WANTED[condition] else "never"
            met = flagged == (len(rows) if WANTED[condition] else 0)
            console.print(
                f"{statistic}: {condition}: flagged {flagged}/{len(rows)} (goal: {goal}) "
                f"{'met' if met else 'MISSED'}",
                highlight=False,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--backend", default="pytorch")
    parser.add_argument("--matrix", default="quick")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--duet", action="store_true", help="run each round's two environments at once (--duet)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads (default 1: on a shared "
        "machine PyTorch's OpenMP threads wait for busy cores, which no A/B can pair away)",
    )
    parser.add_argument("--out", type=Path, required=True, help="an empty folder for the runs")
    parser.add_argument(
        "--judge-only",
        action="store_true",
        help="run nothing: judge the runs already in --out (those of the first --repeats)",
    )
    parser.add_argument(
        "--neighbours",
        type=int,
        default=0,
        help="run beside this many processes busy for 0-3 s, idle for 0-3 s, at random",
    )
    parser.add_argument("--json", type=Path, help="write every outcome here")
    args = parser.parse_args()
    console = Console()
    neighbours = [] if args.judge_only else start_neighbours(args.neighbours)
    outcomes = []
    for repeat in range(args.repeats):
        for condition, slowdown in CONDITIONS.items():
            folder = folder_of(args.out, repeat, condition)
            if args.judge_only and not (folder / "run" / "results.jsonl").exists():
                continue  # judging: this run was never made (or a smaller --repeats)
            wall = None if args.judge_only else ab_run(folder, slowdown, args)
            judged = {s: judge(folder, s) for s in STATISTICS}
            outcomes.append(
                {"repeat": repeat, "condition": condition, "wall_s": wall, "judged": judged}
            )
            floor = judged["floor"]
            ratios = {p: " ".join(f"{r:.2f}" for r in v) for p, v in floor["ratios"].items()}
            console.print(
                f"repeat {repeat} {condition}: exit {floor['exit']} (median: "
                f"{judged['median']['exit']}), {'/'.join(floor['verdicts'])}, floor ratios: "
                f"teacher {ratios['teacher']}, distill {ratios['distill']}"
                + (f" ({wall:.0f} s)" if wall is not None else ""),
                highlight=False,
            )
    for proc in neighbours:
        proc.terminate()
    summary(outcomes, console)
    if args.json:
        args.json.write_text(json.dumps(outcomes, indent=1) + "\n")


if __name__ == "__main__":
    main()
