"""TOML files (specs, matrices) read with one-line errors, and a nesting limit."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


MAX_TOML_DEPTH = 16  # a spec nests 4 levels deep (layers in a net in a spec)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; unreadable, malformed or absurdly nested files are
    one-line errors."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise KdbenchError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise KdbenchError(
            f"{path}: nested too deeply to read; specs and matrices nest at most "
            f"{MAX_TOML_DEPTH} levels"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KdbenchError(f"{path}: cannot read the file: {exc}") from None
    if nesting_depth(data) > MAX_TOML_DEPTH:
        raise KdbenchError(
            f"{path}: tables or arrays nested more than {MAX_TOML_DEPTH} levels deep; "
            "a spec or matrix never needs that many"
        )
    return data


def nesting_depth(value: Any) -> int:
    """How deeply tables and arrays nest in value (iteratively: no recursion limit)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest
