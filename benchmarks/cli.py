"""The ``kdbench`` command line: run, show, list, validate."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from backends.base import Settings, backend_names, check_backend, installed_backends, is_installed
from benchmarks.architectures import ARCHITECTURES
from benchmarks.errors import KdbenchError
from benchmarks.records import load_runs
from benchmarks.spec import (
    COMPILE_MODES,
    DEFAULT_SPEC,
    METHODS,
    PRECISIONS,
    builtin_specs,
    load_spec,
)
from benchmarks.tables import rich_table, summary

# Wide enough for the side-by-side table when stdout is a file or a pipe.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise KdbenchError(f"{message} (see 'kdbench {self.prog.split()[-1]} --help')")


def _backends(value: str | None) -> list[str]:
    if value is None:
        names = installed_backends()
        if not names:
            raise KdbenchError(
                "no backend is installed; install one with pip install 'kdbench[torch]' "
                "(or [tensorflow], [jax], [all])"
            )
        return names
    names = [n.strip() for n in value.split(",") if n.strip()]
    for name in names:
        check_backend(name)
    return names


def _settings(loaded: Any, args: argparse.Namespace) -> Settings:
    m = loaded.spec.measure
    threads = args.threads if args.threads is not None else m.threads
    return Settings(
        compile=args.compile or m.compile,
        precision=args.precision or m.precision,
        threads=threads or os.cpu_count() or 1,
        deterministic=bool(args.deterministic or m.deterministic),
        device=args.device or m.device,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from benchmarks.runner import RunPlan, default_out_dir, execute, prepare_run_dir

    specs = [load_spec(s) for s in (args.specs or [DEFAULT_SPEC])]
    backends = _backends(args.backend)
    if args.seeds is not None and args.seeds < 1:
        raise KdbenchError(f"--seeds must be at least 1 (got {args.seeds})")
    n_seeds = args.seeds or max(s.spec.measure.seeds for s in specs)
    out = Path(args.out) if args.out else default_out_dir()
    if (out / "results.jsonl").exists():
        raise KdbenchError(f"{out} already holds a run (results.jsonl); choose another --out")
    plan = RunPlan(
        specs=specs,
        backends=backends,
        seeds=list(range(n_seeds)),
        settings={s.name: _settings(s, args) for s in specs},
        out_dir=out,
        data_dir=args.data_dir,
        cell_timeout_s=args.cell_timeout,
    )
    prepare_run_dir(plan, sys.argv)
    jobs = plan.jobs()
    console.print(
        f"kdbench: {len(jobs)} cells ({', '.join(s.name for s in specs)} x "
        f"{', '.join(backends)} x {n_seeds} seeds) -> {out}"
    )
    started = time.perf_counter()
    failed = 0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        overall = progress.add_task("cells", total=len(jobs))
        current = progress.add_task("", total=None)

        def on_event(job: Any, event: dict[str, Any]) -> None:
            text = f"{job.cell_id}: {event.get('phase', '')}"
            if "epoch" in event:
                text += f" epoch {event['epoch']}/{event['epochs']}"
            progress.update(current, description=text)

        def on_record(record: dict[str, Any]) -> None:
            nonlocal failed
            if record["status"] != "ok":
                failed += 1
                progress.console.print(
                    f"[red]{record['cell_id']}: {record['status']}: {record['error']}[/red]"
                )
            progress.advance(overall)

        try:
            results = execute(plan, on_event, on_record)
        except KeyboardInterrupt:
            err_console.print(f"kdbench: interrupted; finished cells are saved in {out}")
            return 130
    wall = time.perf_counter() - started
    _print_table([str(out)], f"kdbench run {plan.run_id}")
    console.print(f"{len(jobs)} cells in {wall:.1f} s; records: {results}")
    return 1 if failed else 0


def _print_table(runs: list[str], title: str) -> None:
    frame = load_runs(runs)
    if frame.empty:
        console.print("no records")
        return
    console.print(rich_table(summary(frame), title))


def cmd_show(args: argparse.Namespace) -> int:
    for run in args.runs:
        if not Path(run).exists():
            raise KdbenchError(f"run folder {run} does not exist")
    _print_table(args.runs, " + ".join(args.runs))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from benchmarks.datasets import DATASETS, FILE_DATASETS

    console.print("[bold]specs[/bold] (benchmarks/specs)")
    for name, path in builtin_specs().items():
        try:
            description = load_spec(str(path)).spec.description
        except KdbenchError as exc:
            description = f"INVALID: {exc}"
        console.print(f"  {name:<16} {description}")
    console.print("[bold]datasets[/bold]")
    for name in DATASETS:
        where = "needs a folder (data.path or --data-dir)" if name in FILE_DATASETS else "built in"
        console.print(f"  {name:<16} {where}")
    console.print("[bold]architectures[/bold]")
    for name, (description, _) in ARCHITECTURES.items():
        console.print(f"  {name:<16} {description}")
    console.print("[bold]methods[/bold]")
    for name in METHODS:
        console.print(f"  {name}")
    console.print(f"[bold]compile modes[/bold]  {', '.join(COMPILE_MODES)}")
    console.print(f"[bold]precisions[/bold]     {', '.join(PRECISIONS)}")
    console.print("[bold]backends[/bold]")
    for name in backend_names():
        state = "installed" if is_installed(name) else "not installed"
        console.print(f"  {name:<16} {state}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    bad = 0
    for name in args.specs:
        try:
            loaded = load_spec(name)
        except KdbenchError as exc:
            err_console.print(
                f"kdbench: error: {exc}", highlight=False, soft_wrap=True, markup=False
            )
            bad += 1
        else:
            console.print(f"{loaded.path}: ok ({loaded.name}, hash {loaded.content_hash})")
    return 2 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kdbench", description="Knowledge-distillation benchmarks across frameworks."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run specs on backends and print the table")
    run.add_argument(
        "specs", nargs="*", help=f"spec names or .toml files (default: {DEFAULT_SPEC})"
    )
    run.add_argument("--backend", help="comma-separated backends (default: every installed one)")
    run.add_argument("--seeds", type=int, help="number of seeds, 0..N-1 (default: the spec's)")
    run.add_argument("--out", help="run folder (default: results/runs/<timestamp>)")
    run.add_argument("--compile", choices=COMPILE_MODES, help="override the spec's compile mode")
    run.add_argument("--precision", choices=PRECISIONS, help="override the spec's precision")
    run.add_argument("--device", choices=("auto", "cpu", "gpu"), help="override the spec's device")
    run.add_argument("--threads", type=int, help="intra-op threads for every framework (0: all)")
    run.add_argument(
        "--deterministic", action="store_true", help="each framework's deterministic mode"
    )
    run.add_argument("--data-dir", help="folder with the dataset files (mnist, cifar...)")
    run.add_argument("--cell-timeout", type=float, help="seconds before a cell is stopped")
    run.set_defaults(func=cmd_run)

    show = sub.add_parser("show", help="the table of finished runs")
    show.add_argument("runs", nargs="+", help="run folders")
    show.set_defaults(func=cmd_show)

    lst = sub.add_parser("list", help="specs, datasets, architectures, methods, backends")
    lst.set_defaults(func=cmd_list)

    val = sub.add_parser("validate", help="check spec files without running them")
    val.add_argument("specs", nargs="+", help="spec names or .toml files")
    val.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KdbenchError as exc:
        err_console.print(f"kdbench: error: {exc}", highlight=False, soft_wrap=True, markup=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
