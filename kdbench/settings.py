"""The runtime settings every backend applies the same way, declared once.

A setting is one field of ``Settings``. Everything else is derived from these
fields: the spec's ``[measure]`` table holds them (``MeasureSpec`` inherits
them), a matrix may vary any of them as an axis, ``kdbench run`` has a flag
for each, and every record carries them. Adding a setting means adding one
field here (and applying it in each backend's ``setup``).

They are resolved once, spec <- matrix axis <- command line, by
``resolve_settings``; ``Settings.resolved`` turns "0 threads" into the
number of cores, in this one place.
"""

from __future__ import annotations

import argparse
import os
import typing
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdbench.errors import KdbenchError

CompileMode = Literal["default", "eager", "compiled"]
Precision = Literal["float32", "tf32", "bf16"]
Device = Literal["auto", "cpu", "gpu"]


class Settings(BaseModel):
    """The fairness settings: what every framework must do alike."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    compile: CompileMode = Field(
        "default",
        description="each framework's usual way (default: PyTorch eager, tf.function, jax.jit), "
        "its compiler (compiled), or plain eager execution",
    )
    precision: Precision = Field(
        "float32",
        description="float32 (TF32 off on GPUs), tf32, or bf16 (bfloat16 compute, float32 "
        "weights, softmax and loss), for every framework",
    )
    threads: int = Field(
        0, ge=0, le=1024, description="intra-op threads for every framework; 0: all cores"
    )
    deterministic: bool = Field(False, description="each framework's deterministic mode")
    device: Device = Field("auto", description="where cells run: auto, cpu or gpu")

    def resolved(self) -> Settings:
        """The settings as a backend applies them: 0 threads means all cores."""
        if self.threads:
            return self
        return self.model_copy(update={"threads": os.cpu_count() or 1})

    @property
    def bf16(self) -> bool:
        """Mixed precision: layers compute in bfloat16; the weights the optimizer
        updates, the logits' softmax and the loss stay float32."""
        return self.precision == "bf16"

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


SETTING_NAMES: tuple[str, ...] = tuple(Settings.model_fields)


def allowed_values(name: str) -> str:
    """What a setting accepts, as an error message shows it."""
    annotation = Settings.model_fields[name].annotation
    choices = typing.get_args(annotation)
    if choices:
        return ", ".join(str(c) for c in choices)
    return getattr(annotation, "__name__", str(annotation))


def check_value(name: str, value: Any) -> str | None:
    """None when value is allowed for setting name, else why not (one line)."""
    try:
        Settings.model_validate({name: value})
    except ValidationError as exc:
        message = exc.errors()[0]["msg"]
        if exc.errors()[0]["type"] in ("literal_error", "int_type", "bool_type", "int_parsing"):
            return f"{value!r} is not allowed; allowed: {allowed_values(name)}"
        return f"{value!r}: {message}"
    return None


def resolve_settings(*layers: Mapping[str, Any]) -> Settings:
    """Merge layers of setting values, later ones winning (spec <- matrix axis
    <- command line); None means "not given". The result is resolved."""
    chosen: dict[str, Any] = {}
    for layer in layers:
        chosen.update({k: v for k, v in layer.items() if k in SETTING_NAMES and v is not None})
    try:
        settings = Settings(**chosen).resolved()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        raise KdbenchError(f"setting {name}: {err['msg']} (got {err.get('input')!r})") from None
    cores = os.cpu_count() or 1
    if settings.threads > 4 * cores:  # more only thrashes; a typo more likely than a wish
        raise KdbenchError(
            f"setting threads: at most {4 * cores} on this machine ({cores} cores; 0 means "
            f"all of them), got {settings.threads}"
        )
    return settings


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--<name>`` flag per setting, each overriding the spec for every backend."""
    for name, field in Settings.model_fields.items():
        flag = f"--{name}"
        help_text = f"{field.description} (default: the spec's)"
        choices = typing.get_args(field.annotation)
        if field.annotation is bool:
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        elif choices:
            parser.add_argument(flag, choices=choices, help=help_text)
        else:
            parser.add_argument(flag, type=field.annotation, help=help_text)


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (None where not given)."""
    return {name: getattr(args, name, None) for name in SETTING_NAMES}
