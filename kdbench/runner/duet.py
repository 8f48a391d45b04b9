"""Duet A/B runs: the environments' cells of one round run at the same time.

On a shared or virtual machine the speed of the machine itself drifts by tens
of percent over seconds (another tenant, the hypervisor), so two cells timed
one after the other can differ by more than the regression an A/B run looks
for: on this project's 2-core VM, one cell process in three of an A/A run ran
1.3-1.85x slower than the fastest, and a 20% slower candidate ran through
three sequential rounds was flagged 7 times in 10. Duet benchmarking (Bulej et
al., "Duet Benchmarking: Improving Measurement Accuracy in the Cloud", ICPE
2020) runs the two sides at the same time instead, each on its own CPUs, so
that whatever slows the machine slows both, and their ratio keeps what
differs between them. ``kdbench run --env A=.. --env B=.. --duet`` does that:
the cells that differ only in their environment start together, each pinned
to an equal share of this process's CPUs (the shares rotate round by round,
so no environment keeps one CPU), and the next group starts when the last of
them has ended. Their records are appended in the planned order.

Measured on that VM (results/README.md): judged on medians, the duet did not
narrow the spread of a round's ratio (0.217 against 0.244 in log units, 7 in
10 +20% runs flagged either way): what slowed a cell belonged to its process
or CPU, not to the moment. Judged on floors (compare's rule since), another
day, both ways flagged +20% 10 times in 10 and A/A never (A/A spread 0.011
side by side, 0.014-0.071 taking turns). It always cuts an A/B run's wall
time (12-15 s against 24-27 s for 3 quick rounds), so the same minutes buy
more rounds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from kdbench.errors import KdbenchError
from kdbench.records.schema import Record
from kdbench.records.store import append_record
from kdbench.runner.execute import OnEvent, check_stop, new_attempt, run_attempt, unwritable
from kdbench.runner.folder import Run
from kdbench.runner.job import CellJob


def duet_groups(jobs: list[CellJob]) -> list[list[CellJob]]:
    """The jobs that differ only in their environment, in the order planned."""
    groups: dict[str, list[CellJob]] = {}
    for job in jobs:
        groups.setdefault(dataclasses.replace(job, env="", python="").cell_id, []).append(job)
    return list(groups.values())


def cpu_shares(count: int) -> list[tuple[int, ...]]:
    """This process's CPUs split into count equal shares (what is left over unused)."""
    cpus = sorted(os.sched_getaffinity(0))
    size = len(cpus) // count
    if size < 1:
        raise KdbenchError(
            f"--duet runs {count} cells at once, one per environment, but this process may "
            f"use only {len(cpus)} CPU(s); use at most {len(cpus)} environments"
        )
    return [tuple(cpus[i * size : (i + 1) * size]) for i in range(count)]


def check_duet(jobs: list[CellJob], envs: dict[str, str], executor: str) -> None:
    """Before anything is written: a duet fits this machine, one line if not."""
    if len(envs) < 2:
        raise KdbenchError(
            "--duet runs the environments of an A/B run side by side: give two or more "
            "--env LABEL=PYTHON"
        )
    if executor != "local":
        raise KdbenchError(f"--duet pins cells to this machine's CPUs: it runs on the local "
                           f"executor, not {executor} (drop --executor or --duet)")  # fmt: skip
    share = len(cpu_shares(len(envs))[0])
    threads = max(job.settings.threads for job in jobs)
    if threads > share:
        raise KdbenchError(
            f"--duet gives each of the {len(envs)} environments {share} CPU(s), but the cells "
            f"use {threads} threads; set --threads {share} (or fewer)"
        )


def execute_duets(
    run: Run,
    jobs: list[CellJob],
    on_event: OnEvent,
    on_record: Callable[[Record], None],
) -> None:
    """Run each group's cells at once, each pinned to its share of the CPUs."""
    envs = sorted({job.env for job in jobs})
    shares = cpu_shares(len(envs))
    with ThreadPoolExecutor(max_workers=len(envs)) as pool:
        for group in duet_groups(jobs):
            check_stop()
            futures = []
            for job in group:
                turn = (envs.index(job.env) + (job.round or 0)) % len(shares)
                with unwritable(run, job):
                    attempt = new_attempt(job, run)
                futures.append(
                    (job, pool.submit(run_attempt, attempt, run, on_event, cpus=shares[turn]))
                )
            for job, future in futures:
                with unwritable(run, job):
                    record = future.result()
                    append_record(run.results, record)
                on_record(record)
