"""The benchmark spec: one TOML file that fixes everything but the framework.

Alpha, everywhere in kdbench, is the weight of the distillation term; the
hard-label cross-entropy gets (1 - alpha). Some libraries use the opposite
convention; this one is fixed here and documented in the README.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdbench.architectures import ARCHITECTURES, Architecture, Layer, resolve
from kdbench.builtins import builtin_files, find_named
from kdbench.errors import KdbenchError
from kdbench.methods import METHODS as _METHODS
from kdbench.methods import FeaturePair, resolve_pairs
from kdbench.settings import SETTING_NAMES, Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_SPEC = "mnist5k"
METHODS = tuple(_METHODS)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataSpec(_Strict):
    dataset: Literal[
        "mnist5k", "digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "synthetic"
    ]
    path: str | None = Field(None, description="folder with the dataset files (file datasets)")
    val_fraction: float = Field(0.1, ge=0.0, le=0.5)
    test_fraction: float = Field(0.2, gt=0.0, le=0.5)
    train_limit: int | None = Field(None, gt=0)
    samples: int | None = Field(None, gt=0, description="synthetic only: number of samples")
    shape: list[int] | None = Field(None, min_length=3, max_length=3)
    classes: int | None = Field(None, ge=2, le=10_000)

    @model_validator(mode="after")
    def _synthetic_fields(self) -> DataSpec:
        given = [f for f in ("samples", "shape", "classes") if getattr(self, f) is not None]
        if given and self.dataset != "synthetic":
            raise ValueError(f"{given[0]} is for dataset 'synthetic' only")
        if self.shape is not None and any(d <= 0 for d in self.shape):
            raise ValueError("shape must be three positive integers [height, width, channels]")
        return self


class OptimizerSpec(_Strict):
    name: Literal["sgd", "adam"]
    lr: float = Field(gt=0.0, le=10.0)
    momentum: float | None = Field(None, ge=0.0, lt=1.0, description="sgd only, default 0.9")
    nesterov: bool | None = Field(None, description="sgd only, default false")
    beta1: float | None = Field(None, ge=0.0, lt=1.0, description="adam only, default 0.9")
    beta2: float | None = Field(None, ge=0.0, lt=1.0, description="adam only, default 0.999")
    eps: float | None = Field(None, gt=0.0, le=1.0, description="adam only, default 1e-8")
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0, description="L2 added to the gradient")

    @model_validator(mode="after")
    def _fields_of_this_optimizer(self) -> OptimizerSpec:
        own = {"sgd": ("momentum", "nesterov"), "adam": ("beta1", "beta2", "eps")}
        for other, fields in own.items():
            if other == self.name:
                continue
            for field in fields:
                if getattr(self, field) is not None:
                    raise ValueError(f"{field} applies to optimizer {other!r}, not {self.name!r}")
        return self

    def resolved(self) -> dict[str, Any]:
        """Every hyper-parameter with its default filled in, for the backends."""
        if self.name == "sgd":
            return {
                "name": "sgd",
                "momentum": 0.9 if self.momentum is None else self.momentum,
                "nesterov": bool(self.nesterov),
                "weight_decay": self.weight_decay,
            }
        return {
            "name": "adam",
            "beta1": 0.9 if self.beta1 is None else self.beta1,
            "beta2": 0.999 if self.beta2 is None else self.beta2,
            "eps": 1e-8 if self.eps is None else self.eps,
            "weight_decay": self.weight_decay,
        }


class ScheduleSpec(_Strict):
    name: Literal["constant", "cosine", "step"] = "constant"
    every_epochs: int | None = Field(None, gt=0, description="step only")
    gamma: float | None = Field(None, gt=0.0, le=1.0, description="step only, default 0.1")

    @model_validator(mode="after")
    def _step_fields(self) -> ScheduleSpec:
        if self.name != "step" and (self.every_epochs is not None or self.gamma is not None):
            raise ValueError("every_epochs and gamma apply to schedule 'step' only")
        if self.name == "step" and self.every_epochs is None:
            raise ValueError("schedule 'step' needs every_epochs")
        return self


class NetSpec(_Strict):
    """One network and how it is trained."""

    arch: str | None = None
    layers: list[Layer] | None = None
    epochs: int = Field(gt=0, le=10_000)
    batch_size: int = Field(gt=0, le=65_536)
    optimizer: OptimizerSpec
    schedule: ScheduleSpec = ScheduleSpec()

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str | None) -> str | None:
        if value is not None and value not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {value!r}; allowed: {', '.join(ARCHITECTURES)} "
                "(or give inline layers instead of arch)"
            )
        return value

    @model_validator(mode="after")
    def _arch_xor_layers(self) -> NetSpec:
        if (self.arch is None) == (self.layers is None):
            raise ValueError("give exactly one of arch (a named architecture) or layers (inline)")
        return self


class PairSpec(_Strict):
    """A teacher tap and a student tap that a feature method compares."""

    teacher: str
    student: str


class DistillSpec(_Strict):
    """How the student learns from the teacher: a method (kdbench.methods) and
    the weights of its loss terms.

    soft and hard may still say alpha: alpha on the distillation term, 1 - alpha
    on the label cross-entropy (loss = alpha * T^2 * KL(teacher_T || student_T)
    + (1 - alpha) * CE for 'soft'). Every method takes weights = { term = w }
    instead; terms left out weigh 0, and without either the method's reference
    weights apply.
    """

    method: Literal["none", "soft", "hard", "fitnet", "at", "dkd"]
    temperature: float = Field(4.0, gt=0.0, le=100.0)
    alpha: float = Field(0.9, ge=0.0, le=1.0)
    weights: dict[str, float] | None = None
    pairs: list[PairSpec] = []
    warmup_epochs: int = Field(0, ge=0, le=10_000)
    at_p: float = Field(2.0, gt=0.0, le=8.0)

    @model_validator(mode="after")
    def _method_terms(self) -> DistillSpec:
        from kdbench.methods import term_weights

        alpha = self.alpha if "alpha" in self.model_fields_set else None
        term_weights(self.method, self.weights, alpha)  # raises ValueError naming the field
        for term, weight in (self.weights or {}).items():
            if not (0.0 <= weight <= 1e6):
                raise ValueError(f"weights.{term}: {weight} is not between 0 and 1e6")
        return self

    def term_weights(self) -> dict[str, float]:
        from kdbench.methods import term_weights

        alpha = self.alpha if "alpha" in self.model_fields_set else None
        return term_weights(self.method, self.weights, alpha)


# Fields added after specs were first hashed: left out of the hash at their
# defaults, so every spec written before them keeps its hash (and its cached
# teachers, resumable runs and baselines).
_LATER_DEFAULTS = {"distill": {"weights": None, "pairs": [], "warmup_epochs": 0, "at_p": 2.0}}


class MeasureSpec(Settings):
    """How a cell is measured: the runtime settings (kdbench.settings) and these."""

    warmup_steps: int = Field(5, ge=1, le=10_000)
    eval_batch_size: int = Field(1000, gt=0, le=65_536)
    seeds: int = Field(3, ge=1, le=100)

    def settings(self) -> Settings:
        """The runtime settings part, as the spec gives it (unresolved)."""
        return Settings(**{name: getattr(self, name) for name in SETTING_NAMES})


class Spec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=80)
    description: str = ""
    data: DataSpec
    teacher: NetSpec
    student: NetSpec
    distill: DistillSpec
    measure: MeasureSpec = MeasureSpec()


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec, where it came from and the hash of its content."""

    spec: Spec
    path: Path
    content_hash: str
    teacher_arch: Architecture
    student_arch: Architecture
    pairs: tuple[FeaturePair, ...] = ()  # the feature method's taps, as layer indices

    @property
    def name(self) -> str:
        return self.spec.name


def spec_hash(spec: Spec) -> str:
    """Hash of the validated content: comments and key order do not change it."""
    content = spec.model_dump(mode="json")
    for section, defaults in _LATER_DEFAULTS.items():
        for key, default in defaults.items():
            if content[section].get(key) == default:
                del content[section][key]
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def builtin_specs() -> dict[str, Path]:
    return builtin_files("spec")


def find_spec(name_or_path: str) -> Path:
    """A built-in spec by name, or a TOML file by path."""
    return find_named("spec", name_or_path)


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


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of raw spec data with dotted keys ('distill.temperature') replaced."""
    out = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise KdbenchError(f"cannot override {dotted}: {key} is not a table")
        node[leaf] = value
    return out


def load_spec(
    name_or_path: str, overrides: dict[str, Any] | None = None, source: str | None = None
) -> LoadedSpec:
    """A validated spec; overrides (dotted keys) are applied before validation,
    so the content hash names the spec that actually runs."""
    path = find_spec(name_or_path)
    raw = read_toml(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    where = source or str(path)
    spec = parse_spec(raw, where)
    teacher, student = resolve_architectures(spec, where)
    pairs = [(p.teacher, p.student) for p in spec.distill.pairs]
    try:
        resolved = resolve_pairs(spec.distill.method, pairs, teacher, student)
    except ValueError as exc:
        raise KdbenchError(f"{where}: distill.{exc}") from None
    return LoadedSpec(
        spec=spec,
        path=path,
        content_hash=spec_hash(spec),
        teacher_arch=teacher,
        student_arch=student,
        pairs=resolved,
    )


def resolve_architectures(spec: Spec, source: str) -> tuple[Architecture, Architecture]:
    """Check both networks against the dataset's shape and class count."""
    from kdbench.datasets import dataset_info

    data = spec.data
    info = dataset_info(
        data.dataset,
        synthetic_shape=tuple(data.shape) if data.shape else (28, 28, 1),
        synthetic_classes=data.classes or 10,
    )
    archs = []
    for role in ("teacher", "student"):
        net: NetSpec = getattr(spec, role)
        try:
            archs.append(resolve(net.arch, net.layers, info.shape, info.classes))
        except ValueError as exc:
            field = f"{role}.arch" if net.arch else f"{role}.layers"
            raise KdbenchError(f"{source}: {field}: {exc}") from None
    return archs[0], archs[1]
