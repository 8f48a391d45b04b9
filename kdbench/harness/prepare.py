"""Everything a cell needs before any framework touches it, built in numpy.

The harness, the overhead benchmark and the step benchmarks all start here,
so they run the same data, weights, batches and loss for a (spec, seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdbench.backends.base import Augment, LossConfig, Weights
from kdbench.datasets import Dataset, load_dataset
from kdbench.initial_weights import init_weights
from kdbench.methods import connector_shapes, init_connectors
from kdbench.plan import BatchPlan, make_plan, rng_for, with_crops
from kdbench.spec import LoadedSpec, NetSpec, Spec


@dataclass(frozen=True)
class NetStart:
    """Where one more network of a method starts: an ensemble's other teachers,
    the assistant of a chain."""

    weights: Weights
    plan: BatchPlan
    seed: int  # the framework's own dropout stream


@dataclass(frozen=True)
class PreparedCell:
    """The framework-free inputs of one (spec, seed)."""

    loaded: LoadedSpec
    seed: int
    data: Dataset
    teacher_weights: Weights
    student_weights: Weights  # the scratch and the distilled student start here
    teacher_plan: BatchPlan
    student_plan: BatchPlan  # and see the same batches in the same order
    teacher_seed: int  # the frameworks' own dropout streams, per model
    scratch_seed: int
    student_seed: int
    loss: LossConfig  # the distillation loss (the scratch student uses "none")
    connectors: Weights  # the method's student-side connectors (FitNet), else {}
    # "teacher1", "teacher2"... (ensemble members beyond the first), "assistant"
    extra_nets: dict[str, NetStart]
    teacher_optimizer: dict[str, Any]
    student_optimizer: dict[str, Any]
    # The augmentation of the teachers' and of the students' training (their
    # crops are in the plans): both, or the teachers' only (augment.nets).
    teacher_augment: Augment | None = None
    student_augment: Augment | None = None

    @property
    def spec(self) -> Spec:
        return self.loaded.spec

    @property
    def warmup(self) -> int:
        return self.loaded.spec.measure.warmup_steps


def load_spec_data(spec: Spec, seed: int, data_dir: str | None = None) -> Dataset:
    """The spec's dataset, split and normalised for this seed."""
    d = spec.data
    return load_dataset(
        d.dataset,
        seed=seed,
        path=data_dir or d.path,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        train_limit=d.train_limit,
        synthetic_samples=d.samples or 2048,
        synthetic_shape=tuple(d.shape) if d.shape else (28, 28, 1),
        synthetic_classes=d.classes or 10,
    )


def augmentation(spec: Spec, data: Dataset) -> Augment | None:
    """The spec's augmentation; padding is a black pixel, normalised as the data."""
    aug = spec.data.augment
    if aug is None:
        return None
    fill = tuple(float(-m / s) for m, s in zip(data.mean, data.std, strict=True))
    return Augment(pad=aug.crop_padding, flip=aug.flip, fill=fill)


def planned(n_train: int, net: NetSpec, seed: int, name: str, augment: Augment | None) -> BatchPlan:
    """A net's batch plan and, with augmentation, its crops (a stream of their own)."""
    plan = make_plan(n_train, net.batch_size, net.epochs, rng_for(seed, f"{name}-plan"))
    if augment is None:
        return plan
    return with_crops(plan, augment.pad, augment.flip, rng_for(seed, f"{name}-augment"))


def prepare_cell(loaded: LoadedSpec, seed: int, data_dir: str | None = None) -> PreparedCell:
    """Data, initial weights, batch plans and loss of one cell, each from its own
    random stream of the seed (rng_for), so adding one never shifts another."""
    spec = loaded.spec
    data = load_spec_data(spec, seed, data_dir)
    n_train = len(data.y_train)
    augment = augmentation(spec, data)
    plain = spec.data.augment is not None and spec.data.augment.nets == "teacher"
    student_augment = None if plain else augment
    dropout = rng_for(seed, "dropout").integers(0, 2**31 - 1, size=3)
    distill = spec.distill
    shapes = connector_shapes(
        distill.method, loaded.pairs, loaded.teacher_arch, loaded.student_arch
    )
    return PreparedCell(
        loaded=loaded,
        seed=seed,
        data=data,
        teacher_weights=init_weights(loaded.teacher_arch, rng_for(seed, "teacher-init")),
        student_weights=init_weights(loaded.student_arch, rng_for(seed, "student-init")),
        teacher_plan=planned(n_train, spec.teacher, seed, "teacher", augment),
        student_plan=planned(n_train, spec.student, seed, "student", student_augment),
        teacher_seed=int(dropout[0]),
        scratch_seed=int(dropout[1]),
        student_seed=int(dropout[2]),
        loss=loss_config(loaded),
        connectors=init_connectors(shapes, rng_for(seed, "connector-init")),
        extra_nets=extra_nets(loaded, seed, n_train, augment, student_augment),
        teacher_optimizer=spec.teacher.optimizer.resolved(),
        student_optimizer=spec.student.optimizer.resolved(),
        teacher_augment=augment,
        student_augment=student_augment,
    )


def loss_config(loaded: LoadedSpec) -> LossConfig:
    """The spec's distillation loss with every weight and tapped layer spelt out."""
    distill = loaded.spec.distill
    return LossConfig(
        method=distill.method,
        temperature=distill.temperature,
        alpha=distill.alpha,
        weights=tuple(distill.term_weights().items()),
        pairs=tuple((p.teacher, p.student) for p in loaded.pairs),
        at_p=distill.at_p,
        ensemble_weights=distill.ensemble_weights(),
    )


def extra_nets(
    loaded: LoadedSpec,
    seed: int,
    n_train: int,
    augment: Augment | None = None,
    student_augment: Augment | None = None,
) -> dict[str, NetStart]:
    """The method's other networks, each from streams of its own (the first
    teacher keeps the streams it always had, so it stays the cached one). The
    ensemble's teachers augment as the teacher does, the assistant (a
    distilled net) as the students do."""
    spec = loaded.spec
    nets: dict[str, tuple[Any, NetSpec, Augment | None]] = {}
    for k in range(1, spec.distill.teachers):
        nets[f"teacher{k}"] = (loaded.teacher_arch, spec.teacher, augment)
    if spec.assistant is not None and loaded.assistant_arch is not None:
        nets["assistant"] = (loaded.assistant_arch, spec.assistant, student_augment)
    out = {}
    for name, (arch, net, aug) in nets.items():
        out[name] = NetStart(
            weights=init_weights(arch, rng_for(seed, f"{name}-init")),
            plan=planned(n_train, net, seed, name, aug),
            seed=int(rng_for(seed, f"{name}-dropout").integers(0, 2**31 - 1)),
        )
    return out
