"""Benchmark matrices: specs x settings x seeds x backends, from one TOML file.

An axis is either a runtime setting that every backend applies the same way
(compile, precision, threads, deterministic, device) or a dotted spec key
(for example "distill.temperature" or "student.batch_size") that changes
what is computed; a spec changed by an axis gets its own content hash.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kdbench.backends.base import backend_names
from kdbench.builtins import builtin_files, find_named
from kdbench.errors import KdbenchError
from kdbench.runner.executors.options import ExecutorOptions
from kdbench.settings import SETTING_NAMES, check_value
from kdbench.spec import LoadedSpec, load_spec, read_toml

DEFAULT_MATRIX = "default"
Scalar = str | int | float | bool


class MatrixFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    specs: list[str] = Field(min_length=1)
    backends: list[str] | None = Field(None, description="default: every installed backend")
    seeds: int | None = Field(None, ge=1, le=100, description="default: each spec's own")
    cell_timeout_s: float | None = Field(1800.0, gt=0, allow_inf_nan=False)
    axes: dict[str, list[Scalar]] = Field(default_factory=dict)
    # Dotted spec keys set in every cell, not an axis (no label): e.g. the
    # cifar-smoke matrix runs the CIFAR pairs at 1/8 width for a few steps.
    overrides: dict[str, Scalar] = Field(default_factory=dict)
    executor: ExecutorOptions | None = Field(None, description="where the cells run")

    @field_validator("overrides")
    @classmethod
    def _dotted(cls, value: dict[str, Scalar]) -> dict[str, Scalar]:
        for key in value:
            if "." not in key:
                raise ValueError(
                    f"override {key!r}: give a dotted spec key such as 'teacher.epochs'"
                )
        return value

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            if name not in backend_names():
                raise ValueError(f"unknown backend {name!r}; allowed: {', '.join(backend_names())}")
        return value

    @field_validator("axes")
    @classmethod
    def _axes(cls, value: dict[str, list[Scalar]]) -> dict[str, list[Scalar]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values")
            if key in SETTING_NAMES:
                for v in values:
                    problem = check_value(key, v)
                    if problem:
                        raise ValueError(f"axis {key!r}: {problem}")
            elif "." not in key:
                raise ValueError(
                    f"unknown axis {key!r}; allowed: {', '.join(SETTING_NAMES)} "
                    "or a dotted spec key such as 'distill.temperature'"
                )
        return value


@dataclass(frozen=True)
class Combo:
    """One point of the settings axes."""

    runtime: dict[str, Any] = field(default_factory=dict)
    axis_overrides: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)  # the matrix's overrides

    @property
    def spec_overrides(self) -> dict[str, Any]:
        """Every dotted spec key this cell sets: the matrix's, then its axes'."""
        return {**self.fixed, **self.axis_overrides}

    @property
    def label(self) -> str:
        items = {**self.runtime, **self.axis_overrides}
        return ",".join(f"{k}={v}" for k, v in items.items())


@dataclass(frozen=True)
class Matrix:
    name: str
    path: Path | None
    description: str
    specs: list[str]
    backends: list[str] | None
    seeds: int | None
    cell_timeout_s: float | None
    combos: list[Combo]
    executor: ExecutorOptions | None = None

    def expand(self) -> list[tuple[LoadedSpec, Combo]]:
        """Every (spec as it will run, combo); spec errors name the matrix and axis."""
        out = []
        for spec in self.specs:
            for combo in self.combos:
                where = f"{self.path or self.name} (spec {spec}"
                where += f", {combo.label})" if combo.label else ")"
                out.append((load_spec(spec, combo.spec_overrides, source=where), combo))
        return out


def builtin_matrices() -> dict[str, Path]:
    return builtin_files("matrix")


def find_matrix(name_or_path: str) -> Path:
    return find_named("matrix", name_or_path)


def load_matrix(name_or_path: str) -> Matrix:
    path = find_matrix(name_or_path)
    try:
        parsed = MatrixFile.model_validate(read_toml(path))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            table = ExecutorOptions if err["loc"][:1] == ("executor",) else MatrixFile
            message = f"unknown key; allowed keys: {', '.join(table.model_fields)}"
        raise KdbenchError(f"{path}: {loc}: {message}") from None
    keys = list(parsed.axes)
    combos = []
    for values in itertools.product(*(parsed.axes[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        combos.append(
            Combo(
                runtime={k: v for k, v in point.items() if k in SETTING_NAMES},
                axis_overrides={k: v for k, v in point.items() if k not in SETTING_NAMES},
                fixed=dict(parsed.overrides),
            )
        )
    return Matrix(
        name=parsed.name,
        path=path,
        description=parsed.description,
        specs=parsed.specs,
        backends=parsed.backends,
        seeds=parsed.seeds,
        cell_timeout_s=parsed.cell_timeout_s,
        combos=combos or [Combo(fixed=dict(parsed.overrides))],
        executor=parsed.executor,
    )


def adhoc_matrix(specs: list[str]) -> Matrix:
    """`kdbench run SPEC...`: those specs, no axes."""
    return Matrix("adhoc", None, "", specs, None, None, None, [Combo()])
