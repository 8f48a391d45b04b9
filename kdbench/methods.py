"""The distillation methods: which loss terms each composes, with which weights,
and which features of the two networks it pairs.

Framework-free: the spec validates against this table, the harness resolves a
method into a LossConfig (terms, weights, tapped layers, connector shapes),
and each backend computes exactly those terms. The float64 oracle of every
term is tests/oracles/methods.py.

Terms (every one averaged over the batch):
  ce    cross-entropy with the labels
  kd    Hinton: T^2 * KL(softmax(t/T) || softmax(s/T))
  hard  cross-entropy with the teacher's argmax
  hint  FitNet: mean squared error between a teacher feature and a learned
        linear connector applied to the student feature (per pair, summed)
  at    attention transfer: mean squared distance between the L2-normalised
        attention maps mean_c |f|^p of each pair (summed over pairs)
  tckd  DKD's target-class term: T^2 * KL of the binary (target, rest) split
  nckd  DKD's non-target term: T^2 * KL over the non-target classes
An ensemble's teacher logits are T * log(sum_k w_k softmax(t_k / T)): softened
by T they give the weighted mean of the members' softened outputs, so kd
matches the student to that mean.
The distillation terms (all but ce) are multiplied by the warm-up factor
min(epoch / warmup_epochs, 1), epochs counted from 1, as mdistiller's DKD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdbench.architectures import Architecture
from kdbench.initial_weights import glorot_uniform


@dataclass(frozen=True)
class Method:
    terms: tuple[str, ...]  # the terms it may weigh; the others are refused
    defaults: dict[str, float]  # weights when the spec gives none
    summary: str
    feature: str | None = None  # "hint" or "at": the method pairs taps
    uses_alpha: bool = False  # soft and hard also accept alpha (the old spelling)
    # Where the distillation target comes from: one teacher run at every step
    # ("model"), its logits computed once over the training split ("table"),
    # several teachers ("ensemble"), or an assistant trained from the teacher
    # first ("chain").
    teacher: str = "model"


def _hinton(summary: str, teacher: str = "model") -> Method:
    """Hinton KD's terms and weights (CE 0.1, KD 0.9), from wherever the teacher comes."""
    return Method(("ce", "kd"), {"ce": 0.1, "kd": 0.9}, summary, uses_alpha=True, teacher=teacher)


METHODS: dict[str, Method] = {
    "none": Method(("ce",), {"ce": 1.0}, "labels only (the scratch student)"),
    "soft": _hinton("Hinton KD: T^2 KL of softened outputs plus CE"),
    "hard": Method(
        ("ce", "hard"),
        {"ce": 0.1, "hard": 0.9},
        "CE against the teacher's argmax plus CE",
        uses_alpha=True,
    ),
    "offline": _hinton(
        "Hinton KD from the teacher's logits computed once over the training split", "table"
    ),
    "ensemble": _hinton(
        "Hinton KD towards the (weighted) mean of several teachers' softened outputs", "ensemble"
    ),
    "assistant": _hinton(
        "teacher -> assistant -> student (Mirzadeh et al. 2020): Hinton KD on each link", "chain"
    ),
    "fitnet": Method(
        ("ce", "kd", "hint"),
        {"ce": 1.0, "kd": 0.0, "hint": 100.0},
        "FitNet hints: MSE of a linear connector on student features vs teacher features",
        feature="hint",
    ),
    "at": Method(
        ("ce", "kd", "at"),
        {"ce": 1.0, "kd": 0.0, "at": 1000.0},
        "attention transfer: distance of normalised spatial attention maps",
        feature="at",
    ),
    "dkd": Method(
        ("ce", "tckd", "nckd"),
        {"ce": 1.0, "tckd": 1.0, "nckd": 8.0},
        "decoupled KD: target-class and non-target-class KL, weighted apart",
    ),
}


@dataclass(frozen=True)
class FeaturePair:
    """A teacher layer and a student layer whose outputs a feature term compares."""

    teacher: int  # layer index: the output of this layer is the feature
    student: int


def alpha_weights(method: str, alpha: float) -> dict[str, float]:
    """Written the old way: alpha on the distillation term, 1 - alpha on CE."""
    term = "hard" if method == "hard" else "kd"
    return {"ce": 1.0 - alpha, term: alpha}


def term_weights(
    method: str, weights: dict[str, float] | None, alpha: float | None
) -> dict[str, float]:
    """Every term of the method with its weight: the spec's, else alpha's, else the defaults.

    Raises ValueError naming the field at fault."""
    info = METHODS[method]
    if weights is not None and alpha is not None:
        raise ValueError(
            "give either alpha or weights, not both (weights = { ce = 0.1, kd = 0.9 })"
        )
    if alpha is not None:
        if not info.uses_alpha:
            allowed = ", ".join(f"{t} = {info.defaults[t]:g}" for t in info.terms)
            takers = ", ".join(m for m in METHODS if METHODS[m].uses_alpha)
            raise ValueError(
                f"alpha is only for methods {takers}; method {method!r} takes "
                f"weights = {{ {allowed} }}"
            )
        return alpha_weights(method, alpha)
    if weights is None:
        return dict(info.defaults)
    unknown = sorted(set(weights) - set(info.terms))
    if unknown:
        raise ValueError(
            f"weights: term {unknown[0]!r} is not part of method {method!r}; "
            f"its terms are {', '.join(info.terms)}"
        )
    return {term: float(weights.get(term, 0.0)) for term in info.terms}


def taps(arch: Architecture) -> dict[str, int]:
    """The named feature points of an architecture: name -> the layer whose output it is.

    conv<k>: the k-th convolution's block (after its ReLU, and its max-pool if
    one follows); dense<k>: the k-th hidden dense layer after its ReLU;
    pre_logits: the input of the logit layer. Nets with batch norm (the CIFAR
    nets) name stages instead: stage<k> is the last layer at the k-th spatial
    size, the end of a ResNet stage or of a VGG block before its pool, as
    RepDistiller's feature lists take them.
    """
    if arch.has_batchnorm:
        return _stage_taps(arch)
    found: dict[str, int] = {}
    layers = arch.layers
    convs = denses = 0
    for index, layer in enumerate(layers[:-1]):
        if layer.type not in ("conv2d", "dense"):
            continue
        end = index
        follow = ("relu", "maxpool") if layer.type == "conv2d" else ("relu",)
        for kind in follow:
            if end + 1 < len(layers) - 1 and layers[end + 1].type == kind:
                end += 1
        if layer.type == "conv2d":
            convs += 1
            found[f"conv{convs}"] = end
        else:
            denses += 1
            found[f"dense{denses}"] = end
    found["pre_logits"] = len(layers) - 2
    return {name: index for name, index in found.items() if index >= 0}


def _stage_taps(arch: Architecture) -> dict[str, int]:
    walk = arch.walk()
    ends: list[int] = []
    for index, _, _, out in walk[:-1]:
        if len(out) != 3:
            break
        after = walk[index + 1][3]
        if len(after) != 3 or after[:2] != out[:2]:
            ends.append(index)
    found = {f"stage{k}": index for k, index in enumerate(ends, start=1)}
    found["pre_logits"] = len(arch.layers) - 2
    return found


def tap_shape(arch: Architecture, index: int) -> tuple[int, ...]:
    """The per-sample shape of layer index's output."""
    return arch.walk()[index][3]


def resolve_pairs(
    method: str,
    pairs: list[tuple[str, str]],
    teacher: Architecture,
    student: Architecture,
) -> tuple[FeaturePair, ...]:
    """Tap names -> layer indices, with the shape checks the method needs.

    Raises ValueError starting with the field at fault ('pairs[0].student: ...')."""
    info = METHODS[method]
    if info.feature is None:
        if pairs:
            raise ValueError(f"pairs: method {method!r} compares no features; remove pairs")
        return ()
    if not pairs:
        raise ValueError(
            f"pairs: method {method!r} needs at least one pair of taps, for example "
            f"pairs = [{{ teacher = {next(iter(taps(teacher)))!r}, student = "
            f"{next(iter(taps(student)))!r} }}]"
        )
    out = []
    for k, (t_name, s_name) in enumerate(pairs):
        ends = []
        for role, arch, name in (("teacher", teacher, t_name), ("student", student, s_name)):
            named = taps(arch)
            if name not in named:
                raise ValueError(
                    f"pairs[{k}].{role}: {arch.name} has no tap {name!r}; "
                    f"its taps are {', '.join(named)}"
                )
            ends.append(named[name])
        t_shape, s_shape = tap_shape(teacher, ends[0]), tap_shape(student, ends[1])
        if info.feature == "at" and (len(t_shape) != 3 or len(s_shape) != 3):
            raise ValueError(
                f"pairs[{k}]: attention transfer needs image features (H, W, C) on both "
                f"sides; {t_name} is {t_shape}, {s_name} is {s_shape}"
            )
        if len(t_shape) != len(s_shape) or t_shape[:-1] != s_shape[:-1]:
            raise ValueError(
                f"pairs[{k}]: teacher {t_name} {t_shape} and student {s_name} {s_shape} "
                "must have the same spatial size (the connector maps channels only)"
            )
        out.append(FeaturePair(ends[0], ends[1]))
    return tuple(out)


def connector_shapes(
    method: str, pairs: tuple[FeaturePair, ...], teacher: Architecture, student: Architecture
) -> dict[str, tuple[int, ...]]:
    """The student-side connector parameters (FitNet's regressors), neutral layouts."""
    if METHODS[method].feature != "hint":
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    for k, pair in enumerate(pairs):
        c_s = tap_shape(student, pair.student)[-1]
        c_t = tap_shape(teacher, pair.teacher)[-1]
        shapes[f"hint{k}.kernel"] = (c_s, c_t)
        shapes[f"hint{k}.bias"] = (c_t,)
    return shapes


def init_connectors(
    shapes: dict[str, tuple[int, ...]], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Glorot-uniform kernels and zero biases, like the harness's logit layers."""
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name.endswith(".kernel"):
            out[name] = glorot_uniform(shape, shape[0], shape[1], rng).astype(np.float32)
        else:
            out[name] = np.zeros(shape, np.float32)
    return out


def connector_forward_flops(
    method: str, pairs: tuple[FeaturePair, ...], teacher: Architecture, student: Architecture
) -> int:
    """Multiply-adds x 2 of the connectors for one sample: a (C_s x C_t) map per position."""
    total = 0
    shapes = connector_shapes(method, pairs, teacher, student)
    for k, pair in enumerate(pairs):
        if f"hint{k}.kernel" not in shapes:
            continue
        c_s, c_t = shapes[f"hint{k}.kernel"]
        positions = int(np.prod(tap_shape(student, pair.student)[:-1]))
        total += 2 * c_s * c_t * positions
    return total


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """The distillation terms' weight factor in epoch (0-based)."""
    if warmup_epochs <= 0:
        return 1.0
    return min((epoch + 1) / warmup_epochs, 1.0)
