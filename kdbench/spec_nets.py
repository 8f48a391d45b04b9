"""The network sections of a spec: which net, and how it is trained."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kdbench.architectures import ARCHITECTURES, Layer
from kdbench.cifar_architectures import CIFAR_ARCHITECTURES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class OptimizerSpec(Strict):
    name: Literal["sgd", "adam"]
    lr: float = Field(gt=0.0, le=10.0)
    momentum: float | None = Field(None, ge=0.0, lt=1.0, description="sgd only, default 0.9")
    nesterov: bool | None = Field(None, description="sgd only, default false")
    beta1: float | None = Field(None, ge=0.0, lt=1.0, description="adam only, default 0.9")
    beta2: float | None = Field(None, ge=0.0, lt=1.0, description="adam only, default 0.999")
    eps: float | None = Field(None, gt=0.0, le=1.0, description="adam only, default 1e-8")
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0, description="L2 added to the gradient")
    # What weight decay touches: "all" parameters (RepDistiller's recipe, and
    # PyTorch's default for an optimizer given model.parameters()), or only the
    # "kernels" of convolutions and dense layers (no biases, no batch norm
    # scale or shift: the usual exclusion in larger-scale recipes).
    decay: Literal["all", "kernels"] = "all"

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
                "decay": self.decay,
            }
        return {
            "name": "adam",
            "beta1": 0.9 if self.beta1 is None else self.beta1,
            "beta2": 0.999 if self.beta2 is None else self.beta2,
            "eps": 1e-8 if self.eps is None else self.eps,
            "weight_decay": self.weight_decay,
            "decay": self.decay,
        }


class ScheduleSpec(Strict):
    """The learning rate over training. multistep: times gamma at each milestone
    epoch (RepDistiller's CIFAR recipe: milestones = [150, 180, 210], gamma 0.1)."""

    name: Literal["constant", "cosine", "step", "multistep"] = "constant"
    every_epochs: int | None = Field(None, gt=0, description="step only")
    gamma: float | None = Field(
        None, gt=0.0, le=1.0, description="step and multistep only, default 0.1"
    )
    milestones: list[int] | None = Field(None, description="multistep only: epochs, increasing")

    @model_validator(mode="after")
    def _step_fields(self) -> ScheduleSpec:
        if self.name not in ("step", "multistep") and self.gamma is not None:
            raise ValueError("gamma applies to schedules 'step' and 'multistep' only")
        if self.name != "step" and self.every_epochs is not None:
            raise ValueError("every_epochs applies to schedule 'step' only")
        if self.name != "multistep" and self.milestones is not None:
            raise ValueError("milestones apply to schedule 'multistep' only")
        if self.name == "step" and self.every_epochs is None:
            raise ValueError("schedule 'step' needs every_epochs")
        if self.name == "multistep":
            m = self.milestones
            if not m or min(m) < 1 or any(b <= a for a, b in zip(m, m[1:], strict=False)):
                raise ValueError(
                    "schedule 'multistep' needs milestones: increasing epochs from 1, "
                    "e.g. milestones = [150, 180, 210]"
                )
        return self


class NetSpec(Strict):
    """One network and how it is trained."""

    arch: str | None = None
    layers: list[Layer] | None = None
    epochs: int = Field(gt=0, le=10_000)
    batch_size: int = Field(gt=0, le=65_536)
    optimizer: OptimizerSpec
    schedule: ScheduleSpec = ScheduleSpec()
    # The reference CIFAR nets' channel counts times width (rounded, at least 1):
    # the same pairs at a size a CPU or a test can run.
    width: float = Field(1.0, gt=0.0, le=8.0)
    # Teachers only: where the trained teacher comes from. Neither: each backend
    # trains its own. shared_from: trained once, in that backend, and loaded by
    # every backend (its cell runs first), so every framework distils from the
    # very same teacher. checkpoint: loaded from a kdbench teacher file
    # (kdbench export-teacher), relative to the spec's folder.
    shared_from: Literal["pytorch", "tensorflow", "jax"] | None = None
    checkpoint: str | None = None

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
        """(Also the teacher-source pair; Spec refuses them on other nets.)"""
        if (self.arch is None) == (self.layers is None):
            raise ValueError("give exactly one of arch (a named architecture) or layers (inline)")
        if self.shared_from is not None and self.checkpoint is not None:
            raise ValueError("give shared_from or checkpoint, not both")
        if self.width != 1.0 and self.arch not in CIFAR_ARCHITECTURES:
            raise ValueError(
                f"width scales the CIFAR nets only ({', '.join(CIFAR_ARCHITECTURES)}); "
                "remove it or pick one of them"
            )
        return self


# Fields added after specs were first hashed, left out of the hash at their
# defaults so every spec written before keeps its hash (kdbench.spec.spec_hash).
_LATER_NET_DEFAULTS = {"width": 1.0, "shared_from": None, "checkpoint": None}
_LATER_SCHEDULE_DEFAULTS = {"milestones": None}
_LATER_LAYER_DEFAULTS = {"conv2d": {"bias": True}}


def drop_later_net_defaults(net: dict[str, Any]) -> None:
    """Remove, in place, the later fields of a dumped net section at their defaults."""
    _drop(net, _LATER_NET_DEFAULTS)
    _drop(net.get("optimizer") or {}, {"decay": "all"})
    _drop(net.get("schedule") or {}, _LATER_SCHEDULE_DEFAULTS)
    _drop_layer_defaults(net.get("layers") or [])


def _drop(table: dict[str, Any], defaults: dict[str, Any]) -> None:
    for key, default in defaults.items():
        if key in table and table[key] == default:
            del table[key]


def _drop_layer_defaults(layers: list[dict[str, Any]]) -> None:
    for layer in layers:
        _drop(layer, _LATER_LAYER_DEFAULTS.get(layer["type"], {}))
        for nested in ("body", "shortcut"):
            _drop_layer_defaults(layer.get(nested, []))
