"""The benchmark spec: one TOML file that fixes everything but the framework.

Alpha, everywhere in kdbench, is the weight of the distillation term; the
hard-label cross-entropy gets (1 - alpha). Some libraries use the opposite
convention; this one is fixed here and documented in the README.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kdbench.architectures import ARCHITECTURES, Architecture, Layer, resolve
from kdbench.builtins import builtin_files, find_named
from kdbench.errors import KdbenchError
from kdbench.methods import METHODS as _METHODS
from kdbench.methods import FeaturePair, resolve_pairs
from kdbench.settings import SETTING_NAMES, Settings
from kdbench.spec_errors import parse_spec
from kdbench.toml_files import read_toml

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

    method: Literal[
        "none", "soft", "hard", "offline", "ensemble", "assistant", "fitnet", "at", "dkd"
    ]
    temperature: float = Field(4.0, gt=0.0, le=100.0)
    alpha: float = Field(0.9, ge=0.0, le=1.0)
    weights: dict[str, float] | None = None
    pairs: list[PairSpec] = []
    warmup_epochs: int = Field(0, ge=0, le=10_000)
    at_p: float = Field(2.0, gt=0.0, le=8.0)
    # ensemble: this many teachers, the [teacher] net from independent initial
    # weights and batch orders, weighted by teacher_weights (default: equal).
    teachers: int = Field(1, ge=1, le=16)
    teacher_weights: list[float] | None = None

    @model_validator(mode="after")
    def _method_terms(self) -> DistillSpec:
        from kdbench.methods import term_weights

        alpha = self.alpha if "alpha" in self.model_fields_set else None
        term_weights(self.method, self.weights, alpha)  # raises ValueError naming the field
        for term, weight in (self.weights or {}).items():
            if not (0.0 <= weight <= 1e6):
                raise ValueError(f"weights.{term}: {weight} is not between 0 and 1e6")
        if self.method == "ensemble" and self.teachers < 2:
            raise ValueError("teachers: method 'ensemble' needs at least 2 (teachers = 3)")
        if self.method != "ensemble" and self.teachers != 1:
            raise ValueError(f"teachers: only method 'ensemble' takes several, not {self.method!r}")
        if self.teacher_weights is not None:
            w = self.teacher_weights
            if self.method != "ensemble" or len(w) != self.teachers:
                raise ValueError(
                    "teacher_weights: give one weight per ensemble member "
                    f"({self.teachers} for teachers = {self.teachers})"
                )
            if min(w) < 0 or sum(w) <= 0:
                raise ValueError("teacher_weights: weights must be >= 0 with a positive sum")
        return self

    def ensemble_weights(self) -> tuple[float, ...]:
        """The members' weights, summing to 1 (() for one teacher)."""
        if self.method != "ensemble":
            return ()
        raw = self.teacher_weights or [1.0] * self.teachers
        return tuple(w / sum(raw) for w in raw)

    def term_weights(self) -> dict[str, float]:
        from kdbench.methods import term_weights

        alpha = self.alpha if "alpha" in self.model_fields_set else None
        return term_weights(self.method, self.weights, alpha)


# Fields added after specs were first hashed: left out of the hash at their
# defaults, so every spec written before them keeps its hash (and its cached
# teachers, resumable runs and baselines).
_LATER_DEFAULTS = {
    "distill": {
        "weights": None,
        "pairs": [],
        "warmup_epochs": 0,
        "at_p": 2.0,
        "teachers": 1,
        "teacher_weights": None,
    },
    "": {"assistant": None},  # top-level sections
}


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
    # method 'assistant': the middle net of teacher -> assistant -> student.
    assistant: NetSpec | None = None

    @model_validator(mode="after")
    def _assistant_for_its_method(self) -> Spec:
        if self.distill.method == "assistant" and self.assistant is None:
            raise ValueError(
                "distill.method 'assistant' needs an [assistant] table (arch, epochs, "
                "batch_size, optimizer), like [student]"
            )
        if self.distill.method != "assistant" and self.assistant is not None:
            raise ValueError("[assistant] is only for distill.method = 'assistant'; remove it")
        return self


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec, where it came from and the hash of its content."""

    spec: Spec
    path: Path
    content_hash: str
    teacher_arch: Architecture
    student_arch: Architecture
    pairs: tuple[FeaturePair, ...] = ()  # the feature method's taps, as layer indices
    assistant_arch: Architecture | None = None  # method 'assistant'

    @property
    def name(self) -> str:
        return self.spec.name


def spec_hash(spec: Spec) -> str:
    """Hash of the validated content: comments and key order do not change it."""
    content = spec.model_dump(mode="json")
    for section, defaults in _LATER_DEFAULTS.items():
        table = content[section] if section else content
        for key, default in defaults.items():
            if key in table and table[key] == default:
                del table[key]
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def builtin_specs() -> dict[str, Path]:
    return builtin_files("spec")


def find_spec(name_or_path: str) -> Path:
    """A built-in spec by name, or a TOML file by path."""
    return find_named("spec", name_or_path)


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
    teacher, student, assistant = resolve_architectures(spec, where)
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
        assistant_arch=assistant,
    )


def resolve_architectures(
    spec: Spec, source: str
) -> tuple[Architecture, Architecture, Architecture | None]:
    """Check the networks (teacher, student, the assistant where the method has
    one) against the dataset's shape and class count."""
    from kdbench.datasets import dataset_info

    data = spec.data
    info = dataset_info(
        data.dataset,
        synthetic_shape=tuple(data.shape) if data.shape else (28, 28, 1),
        synthetic_classes=data.classes or 10,
    )
    archs: dict[str, Architecture | None] = {"assistant": None}
    for role in ("teacher", "student", "assistant"):
        net: NetSpec | None = getattr(spec, role)
        if net is None:
            continue
        try:
            archs[role] = resolve(net.arch, net.layers, info.shape, info.classes)
        except ValueError as exc:
            field = f"{role}.arch" if net.arch else f"{role}.layers"
            raise KdbenchError(f"{source}: {field}: {exc}") from None
    teacher, student = archs["teacher"], archs["student"]
    assert teacher is not None and student is not None
    return teacher, student, archs["assistant"]
