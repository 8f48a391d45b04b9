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

from pydantic import Field, model_validator

from kdbench.architectures import Architecture, resolve
from kdbench.builtins import builtin_files, find_named
from kdbench.errors import KdbenchError
from kdbench.methods import METHODS as _METHODS
from kdbench.methods import FeaturePair, resolve_pairs
from kdbench.settings import SETTING_NAMES, Settings
from kdbench.spec_errors import parse_spec
from kdbench.spec_nets import (
    NetSpec,
    OptimizerSpec,
    ScheduleSpec,
    Strict,
    drop_later_net_defaults,
)
from kdbench.toml_files import read_toml

# The speed tools' workload (overhead, reference ratios, step benchmarks); the
# default matrix runs mnist5k-jitter, whose distillation phase is slower to time.
DEFAULT_SPEC = "mnist5k"
METHODS = tuple(_METHODS)


_Strict = Strict
__all__ = [
    "DEFAULT_SPEC",
    "DistillSpec",
    "LoadedSpec",
    "NetSpec",
    "OptimizerSpec",
    "ScheduleSpec",
    "Spec",
    "load_spec",
]


_DIGITS = ("mnist5k", "digits", "mnist")


class AugmentSpec(_Strict):
    """Training-time augmentation, the CIFAR recipe's: a random crop of the
    image padded by crop_padding pixels per side, and a random horizontal flip
    (never for digits or letters, which a mirror changes)."""

    crop_padding: int = Field(0, ge=0, le=16)
    flip: bool = False
    # Which nets train on augmented batches: "all" (the CIFAR recipe) or
    # "teacher" only (Hinton et al.'s MNIST experiment: the teacher learns
    # shift invariance from jittered digits, both students see plain ones,
    # and the distilled one can learn the invariance from the soft targets).
    nets: Literal["all", "teacher"] = "all"

    @model_validator(mode="after")
    def _something(self) -> AugmentSpec:
        if self.crop_padding == 0 and not self.flip:
            raise ValueError("augment does nothing: give crop_padding > 0 or flip = true")
        return self


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
    augment: AugmentSpec | None = None

    @model_validator(mode="after")
    def _no_mirrored_digits(self) -> DataSpec:
        if self.augment is not None and self.augment.flip and self.dataset in _DIGITS:
            raise ValueError(
                f"augment.flip: a mirrored digit is another symbol; set flip = false for "
                f"{self.dataset!r} (crop_padding alone is fine)"
            )
        return self

    @model_validator(mode="after")
    def _synthetic_fields(self) -> DataSpec:
        given = [f for f in ("samples", "shape", "classes") if getattr(self, f) is not None]
        if given and self.dataset != "synthetic":
            raise ValueError(f"{given[0]} is for dataset 'synthetic' only")
        if self.shape is not None and any(d <= 0 for d in self.shape):
            raise ValueError("shape must be three positive integers [height, width, channels]")
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
    "data": {"augment": None},
    "measure": {"best_epoch": False},
    "": {"assistant": None},  # top-level sections
}


class MeasureSpec(Settings):
    """How a cell is measured: the runtime settings (kdbench.settings) and these."""

    warmup_steps: int = Field(5, ge=1, le=10_000)
    eval_batch_size: int = Field(1000, gt=0, le=65_536)
    seeds: int = Field(3, ge=1, le=100)
    # Also report each student's test accuracy at the epoch of its best
    # validation accuracy (evaluated after every epoch, outside the step clock);
    # the last epoch's stays the headline. Never chosen on the test split.
    best_epoch: bool = False

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
        for role in ("student", "assistant"):
            net = getattr(self, role)
            if net is not None and (net.shared_from or net.checkpoint):
                raise ValueError(f"{role}: shared_from and checkpoint are for [teacher] only")
        if self.teacher.checkpoint and self.distill.method == "ensemble":
            raise ValueError(
                "teacher.checkpoint: one file is one teacher; method 'ensemble' trains several"
            )
        aug = self.data.augment
        if self.distill.method == "offline" and aug is not None and aug.nets == "all":
            raise ValueError(
                "data.augment: method 'offline' computes the teacher's logits once, on "
                "unaugmented images; remove augment, set augment.nets = 'teacher' or use "
                "method 'soft'"
            )
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
    teacher_checkpoint: Path | None = None  # teacher.checkpoint, resolved and checked

    @property
    def name(self) -> str:
        return self.spec.name


def spec_hash(spec: Spec, checkpoint_digest: str | None = None) -> str:
    """Hash of the validated content: comments and key order do not change it.

    A teacher checkpoint counts by its content (checkpoint_digest), not its path."""
    content = spec.model_dump(mode="json")
    if checkpoint_digest is not None:
        content["teacher"]["checkpoint"] = f"sha256:{checkpoint_digest}"
    for section, defaults in _LATER_DEFAULTS.items():
        table = content[section] if section else content
        for key, default in defaults.items():
            if key in table and table[key] == default:
                del table[key]
    for net in ("teacher", "student", "assistant"):
        if content.get(net):
            drop_later_net_defaults(content[net])
    if (content["data"].get("augment") or {}).get("nets") == "all":  # a later field
        del content["data"]["augment"]["nets"]
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
    checkpoint, digest = _teacher_checkpoint(spec, path, teacher, where)
    return LoadedSpec(
        spec=spec,
        path=path,
        content_hash=spec_hash(spec, digest),
        teacher_checkpoint=checkpoint,
        teacher_arch=teacher,
        student_arch=student,
        pairs=resolved,
        assistant_arch=assistant,
    )


def _teacher_checkpoint(
    spec: Spec, path: Path, teacher: Architecture, where: str
) -> tuple[Path | None, str | None]:
    """teacher.checkpoint resolved against the spec's folder, checked to hold
    this teacher (architecture, input, classes), and its content digest."""
    from kdbench.checkpoint import file_digest, read_metadata

    if spec.teacher.checkpoint is None:
        return None, None
    file = Path(spec.teacher.checkpoint).expanduser()
    if not file.is_absolute():
        file = (path.parent / file).resolve()
    if not file.is_file():
        raise KdbenchError(
            f"{where}: teacher.checkpoint: no file {file} (paths are relative to the spec's "
            "folder; make one with kdbench export-teacher)"
        )
    meta = read_metadata(file)
    if meta.get("arch") != teacher.name:
        raise KdbenchError(
            f"{where}: teacher.checkpoint: {file} holds a {meta.get('arch')}, "
            f"but teacher.arch is {teacher.name}"
        )
    return file, file_digest(file)


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
            archs[role] = resolve(net.arch, net.layers, info.shape, info.classes, net.width)
        except ValueError as exc:
            field = f"{role}.arch" if net.arch else f"{role}.layers"
            raise KdbenchError(f"{source}: {field}: {exc}") from None
    teacher, student = archs["teacher"], archs["student"]
    assert teacher is not None and student is not None
    return teacher, student, archs["assistant"]
