"""What every command shares: the consoles, the parser class, one-line errors."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from rich.console import Console

from kdbench.errors import KdbenchError

# Wide enough for the side-by-side table when stdout is a file or a pipe.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True)


class Parser(argparse.ArgumentParser):
    """Argument mistakes become KdbenchError: one line, exit 2, no usage dump."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.verbs: dict[str, Parser] = {}  # the top-level parser's subcommands, by name

    def error(self, message: str) -> NoReturn:
        raise KdbenchError(f"{message} (see '{self.prog} --help')")


def print_error(message: str) -> None:
    err_console.print(f"kdbench: error: {message}", highlight=False, soft_wrap=True, markup=False)


def warn(message: str) -> None:
    err_console.print(f"kdbench: warning: {message}", markup=False, highlight=False)
