"""The ``kdbench`` command line: one module per verb, each with add_parser and run."""

from __future__ import annotations

import sys
import warnings

from kdbench.commands import compare, export_teacher, listing, report, run, show, validate
from kdbench.commands.common import Parser, print_error, warn
from kdbench.errors import KdbenchError

COMMANDS = (run, show, listing, validate, report, compare, export_teacher)


def build_parser() -> Parser:
    parser = Parser(
        prog="kdbench", description="Knowledge-distillation benchmarks across frameworks."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        verb = command.add_parser(sub)
        verb.set_defaults(func=command.run)
        parser.verbs[verb.prog.split()[-1]] = verb
    return parser


def _warning_line(message: Warning | str, *args: object, **kwargs: object) -> None:
    warn(str(message))


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _warning_line  # one line each, without the source line
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # the verb's own parser names itself in the hint
            parser.verbs[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except KdbenchError as exc:
        print_error(str(exc))
        return 2
    except KeyboardInterrupt:  # before a run started (a run prints its own resume hint)
        print_error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
