"""``kdbench list``: specs, matrices, datasets, architectures, methods, settings, backends."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

from kdbench.architectures import ARCHITECTURES, resolve
from kdbench.backends.base import backend_names, is_installed
from kdbench.builtins import builtin_files
from kdbench.cifar_architectures import CIFAR_ARCHITECTURES
from kdbench.commands.common import console
from kdbench.errors import KdbenchError
from kdbench.methods import METHODS, tap_shape, taps
from kdbench.runner.matrix import load_matrix
from kdbench.settings import allowed_values
from kdbench.spec import load_spec


def add_parser(sub: Any) -> argparse.ArgumentParser:
    return sub.add_parser("list", help="specs, datasets, architectures, methods, backends")


def _described(kind: str, load: Any) -> None:
    for name, path in builtin_files(kind).items():
        try:
            description = load(str(path)).description
        except KdbenchError as exc:
            description = f"INVALID: {exc}"
        console.print(f"  {name:<16} {description}", markup=False)


def run(args: argparse.Namespace) -> int:
    from kdbench.datasets import DATASETS, FILE_DATASETS

    console.print("[bold]specs[/bold] (benchmarks/specs, installed as kdbench.specs)")
    _described("spec", lambda path: load_spec(path).spec)
    console.print("[bold]matrices[/bold] (benchmarks/matrices, installed as kdbench.matrices)")
    _described("matrix", load_matrix)
    console.print("[bold]datasets[/bold]")
    for name in DATASETS:
        where = "needs a folder (data.path or --data-dir)" if name in FILE_DATASETS else "built in"
        console.print(f"  {name:<16} {where}")
    console.print(
        "[bold]architectures[/bold] (parameters and feature taps at 28x28x1 input, 10 "
        "classes; the CIFAR nets at 32x32x3, 100 classes)"
    )
    for name, (description, _) in ARCHITECTURES.items():
        console.print(f"  {name:<16} {description}", markup=False)
        cifar = name in CIFAR_ARCHITECTURES
        arch = resolve(name, None, (32, 32, 3) if cifar else (28, 28, 1), 100 if cifar else 10)
        shown = ", ".join(f"{tap} {tap_shape(arch, i)}" for tap, i in taps(arch).items())
        console.print(f"  {'':<16} {arch.param_count():,} params; taps: {shown}", markup=False)
    console.print("[bold]methods[/bold] (terms and reference weights; distill.weights overrides)")
    for name, method in METHODS.items():
        weights = ", ".join(f"{t} {w:g}" for t, w in method.defaults.items())
        pairs = "  needs pairs of taps" if method.feature else ""
        console.print(f"  {name:<16} {method.summary}: {weights}{pairs}", markup=False)
    console.print(f"[bold]compile modes[/bold]  {allowed_values('compile')}")
    console.print(f"[bold]precisions[/bold]     {allowed_values('precision')}")
    console.print("[bold]backends[/bold]")
    for name in backend_names():
        state = "installed" if is_installed(name) else "not installed"
        console.print(f"  {name:<16} {state}")
    console.print("[bold]executors[/bold] (kdbench run --executor)")
    for name, package in (("local", None), ("ray", "ray"), ("slurm", "submitit")):
        found = package is None or importlib.util.find_spec(package) is not None
        state = "installed" if found else f"not installed (pip install 'kdbench[{name}]')"
        console.print(f"  {name:<16} {state}")
    return 0
