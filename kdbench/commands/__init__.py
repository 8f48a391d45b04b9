"""The ``kdbench`` command line: one module per verb, each with add_parser and run."""

from __future__ import annotations

import argparse
import sys
import warnings

from kdbench.commands import compare, export_teacher, listing, report, run, show, validate
from kdbench.commands.common import Parser, print_error, warn
from kdbench.errors import KdbenchError

COMMANDS = (run, show, listing, validate, report, compare, export_teacher)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="kdbench", description="Knowledge-distillation benchmarks across frameworks."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(func=command.run)
    return parser


def _warning_line(message: Warning | str, *args: object, **kwargs: object) -> None:
    warn(str(message))


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _warning_line  # one line each, without the source line
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # the verb's own parser names itself in the hint
            verb = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
            verb.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except KdbenchError as exc:
        print_error(str(exc))
        return 2
    except KeyboardInterrupt:  # before a run started (a run prints its own resume hint)
        print_error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
