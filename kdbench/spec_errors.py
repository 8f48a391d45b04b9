"""Pydantic's validation errors of a spec as one line per problem, naming the field.

A misspelt key lists the allowed keys there (and the closest one); a missing
field, a wrong value or an unknown layer type says which field, in the
dotted form a user writes ('teacher.layers[2].units').
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from kdbench.errors import KdbenchError

if TYPE_CHECKING:
    from kdbench.spec import Spec


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif (
            item in ("dense", "conv2d", "maxpool", "flatten", "relu", "dropout")
            and parts
            and (parts[-1].endswith("]"))
        ):
            continue  # pydantic's discriminator tag, not a field
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the field at loc, to list its allowed keys."""
    from kdbench import architectures

    by_tag = {
        cls.model_fields["type"].default: cls
        for cls in (
            architectures.Dense,
            architectures.Conv2D,
            architectures.MaxPool,
            architectures.Flatten,
            architectures.ReLU,
            architectures.Dropout,
        )
    }
    from kdbench.spec import Spec

    model: Any = Spec
    for item in loc:
        if isinstance(item, int):
            continue
        if item in by_tag:
            model = by_tag[item]
        elif isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(item))
            model = _unwrap(field.annotation) if field else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        holder = _model_at(loc[:-1])
        if holder is None:  # pragma: no cover - every model in the spec is reachable
            return f"{_format_loc(loc)}: unknown key"
        allowed = list(holder.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        return f"{_format_loc(loc)}: unknown key;{hint} allowed keys here: {', '.join(allowed)}"
    if kind == "missing":
        return f"{_format_loc(loc)}: required field is missing"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    if kind == "union_tag_invalid":
        return f"{_format_loc(loc)}.type: {message}"
    return f"{_format_loc(loc)}: {message}{shown}"


def parse_spec(data: dict[str, Any], source: str) -> Spec:
    """Validate raw TOML data; every problem becomes one line naming the field."""
    try:
        from kdbench.spec import Spec

        return Spec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # A misspelt key also makes the real one "missing": report the typo only.
        misspelt = {tuple(e["loc"][:-1]) for e in errors if e["type"] == "extra_forbidden"}
        errors = [
            e for e in errors if not (e["type"] == "missing" and tuple(e["loc"][:-1]) in misspelt)
        ]
        lines = [f"{source}: {_describe(err)}" for err in errors]
        raise KdbenchError("\n".join(lines)) from None
