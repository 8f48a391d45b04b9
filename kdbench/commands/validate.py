"""``kdbench validate SPEC...``: check spec files without running them."""

from __future__ import annotations

import argparse
from typing import Any

from kdbench.commands.common import console, print_error
from kdbench.errors import KdbenchError
from kdbench.spec import load_spec


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("validate", help="check spec files without running them")
    p.add_argument("specs", nargs="+", help="spec names or .toml files")
    return p


def run(args: argparse.Namespace) -> int:
    """Every spec is checked and reported; exit 2 if any is invalid."""
    bad = 0
    for name in args.specs:
        try:
            loaded = load_spec(name)
        except KdbenchError as exc:
            print_error(str(exc))
            bad += 1
        else:
            console.print(f"{loaded.path}: ok ({loaded.name}, hash {loaded.content_hash})")
    return 2 if bad else 0
