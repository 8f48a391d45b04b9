"""The built-in specs and matrices: TOML files installed as package data.

In the source tree they live in benchmarks/specs and benchmarks/matrices;
installed, they are the packages kdbench.specs and kdbench.matrices.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from kdbench.errors import KdbenchError

Kind = Literal["spec", "matrix"]
PACKAGES: dict[str, str] = {"spec": "kdbench.specs", "matrix": "kdbench.matrices"}
PLURAL: dict[str, str] = {"spec": "specs", "matrix": "matrices"}


def builtin_files(kind: Kind) -> dict[str, Path]:
    """Name (file stem) -> path of every built-in file of a kind."""
    folder = Path(str(resources.files(PACKAGES[kind])))
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def find_named(kind: Kind, name_or_path: str) -> Path:
    """A built-in file by name, or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists() or "/" in name_or_path:
        if not path.is_file():
            raise KdbenchError(f"{kind} file {name_or_path} does not exist")
        return path
    builtins = builtin_files(kind)
    if name_or_path not in builtins:
        raise KdbenchError(
            f"no {kind} named {name_or_path!r}; built-in {PLURAL[kind]}: {', '.join(builtins)} "
            "(or give the path of a .toml file)"
        )
    return builtins[name_or_path]
