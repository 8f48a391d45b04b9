"""Where a cell's teacher comes from: trained here (through the teacher cache),
trained by another backend (teacher.shared_from), or a checkpoint file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdbench.backends.base import LossConfig, Settings
from kdbench.errors import KdbenchError
from kdbench.flops import train_flops
from kdbench.harness.phases import Cell, train_phase
from kdbench.harness.prepare import NetStart
from kdbench.harness.teacher_cache import (
    load_cached_teacher,
    save_cached_teacher,
    teacher_key,
    teacher_lock,
)
from kdbench.records.schema import Phase


def train_teacher(
    cell: Cell, train: Any, settings: Settings, cache: Path | None, member: int = 0
) -> tuple[Any, Phase, bool]:
    """The trained teacher, its phase, and whether it came from the cache.

    With a cache, the teacher is trained once per key even when cells that
    share it run at once on several workers (Ray, Slurm): the first takes the
    key's lock and trains; the others wait for it, then load its teacher.
    member k > 0 is an ensemble's k-th extra teacher."""
    p = cell.prepared
    net = p.spec.teacher
    if p.loaded.teacher_checkpoint is not None:
        return _checkpoint_teacher(cell)
    trainer = net.shared_from or cell.backend.name
    key = teacher_key(p.loaded, trainer, p.seed, settings, member)
    if trainer != cell.backend.name:
        return _shared_teacher(cell, cache, key, trainer, member)
    if cache is None:
        return _train_teacher(cell, train, None, key, member)
    with teacher_lock(cache, key):
        return _train_teacher(cell, train, cache, key, member)


def _checkpoint_teacher(cell: Cell) -> tuple[Any, Phase, bool]:
    """The teacher of teacher.checkpoint: loaded, not trained (no phase timings)."""
    from kdbench.checkpoint import load_teacher

    p = cell.prepared
    assert p.loaded.teacher_checkpoint is not None
    path = p.loaded.teacher_checkpoint
    weights, meta = load_teacher(path, p.loaded.teacher_arch)
    if meta.get("seed") not in (None, str(p.seed)):
        cell.emit({"warning": checkpoint_seed_warning(path.name, meta["seed"], p.seed)})
    cell.emit({"phase": "teacher", "cached": True})
    teacher = cell.backend.build(p.loaded.teacher_arch, weights, seed=p.teacher_seed)
    return teacher, Phase(from_cache=True), True


def _shared_teacher(
    cell: Cell, cache: Path | None, key: str, trainer: str, member: int
) -> tuple[Any, Phase, bool]:
    """The teacher another backend trained for this seed (teacher.shared_from),
    from the teacher cache: the run puts that backend's cell first."""
    p = cell.prepared
    name = f"teacher{member}" if member else "teacher"
    cached = None
    if cache is not None:
        with teacher_lock(cache, key):
            cached = load_cached_teacher(cache, key, lambda m: cell.emit({"warning": m}))
    if cached is None:
        raise KdbenchError(
            f"teacher.shared_from = {trainer!r}: the {trainer} teacher of seed {p.seed} is not in "
            f"the teacher cache {cache}; run the {trainer} cell of this seed first (kdbench run "
            "orders it so) or load a file with teacher.checkpoint (kdbench export-teacher)"
        )
    cell.emit({"phase": name, "cached": True})
    start_seed = p.extra_nets[name].seed if member else p.teacher_seed
    teacher = cell.backend.build(p.loaded.teacher_arch, cached[0], seed=start_seed)
    return teacher, cached[1].model_copy(update={"from_cache": True}), True


def _train_teacher(
    cell: Cell, train: Any, cache: Path | None, key: str, member: int
) -> tuple[Any, Phase, bool]:
    p, backend = cell.prepared, cell.backend
    name = f"teacher{member}" if member else "teacher"
    start = (
        p.extra_nets[name]
        if member
        else NetStart(p.teacher_weights, p.teacher_plan, p.teacher_seed)
    )
    cached = load_cached_teacher(cache, key, lambda m: cell.emit({"warning": m})) if cache else None
    if cached is not None:
        # Trained by an earlier cell with the same teacher; its phase record
        # (timings included) is that cell's, marked as such.
        cell.emit({"phase": name, "cached": True})
        teacher = backend.build(p.loaded.teacher_arch, cached[0], seed=start.seed)
        return teacher, cached[1].model_copy(update={"from_cache": True}), True
    teacher = backend.build(p.loaded.teacher_arch, start.weights, seed=start.seed)
    state = backend.init_train(
        teacher, p.teacher_optimizer, LossConfig("none"), augment=p.teacher_augment
    )
    flops = train_flops(p.loaded.teacher_arch) * start.plan.batch_size
    state, phase = train_phase(cell, name, p.spec.teacher, state, train, start.plan, 0, flops)
    teacher = backend.trained_model(state)
    if cache is not None:
        save_cached_teacher(cache, key, backend.get_weights(teacher), phase)
    return teacher, phase.model_copy(update={"from_cache": False}), False


def checkpoint_seed_warning(name: str, trained: str, seed: int) -> str:
    """A teacher from another seed trained on that seed's split, which may hold
    this cell's validation and test images."""
    return (
        f"teacher.checkpoint {name} was trained at seed {trained}, on that seed's split; seed "
        f"{seed} splits the data differently, so the teacher may have seen this cell's "
        "validation or test images and its accuracies are optimistic (export one checkpoint "
        "per seed, or use teacher.shared_from)"
    )
