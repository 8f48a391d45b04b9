"""Where a method's distillation target comes from, beyond the one teacher.

soft, hard, dkd, fitnet and at distill from the trained teacher itself. The
others need more first: 'offline' the teacher's logits over the training
split (one timed pass, phase 'teacher_pass'), 'ensemble' more teachers (the
[teacher] net from other initial weights and batch orders, each trained once
per backend and seed through the teacher cache, phases 'teacher1'...), and
'assistant' the chain's middle net, distilled from the teacher with the
spec's loss (phase 'assistant') before the student distils from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kdbench.flops import forward_flops, train_flops
from kdbench.harness.phases import Cell, train_phase
from kdbench.methods import METHODS
from kdbench.records.schema import Phase

TrainTeacher = Callable[[int], tuple[Any, Phase, bool]]  # member -> (model, phase, cached)


@dataclass
class Target:
    """What the distilled student learns from, and what it took to get it."""

    teacher: Any  # what init_train is given: a model, a list of models, a table
    distill_flops_per_step: int | None = None  # None: the usual teacher + student count
    phases: dict[str, Phase] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)  # more nets to evaluate


def distillation_target(
    cell: Cell, train: Any, teacher: Any, train_teacher: TrainTeacher
) -> Target:
    p, backend = cell.prepared, cell.backend
    spec, loaded = p.spec, p.loaded
    kind = METHODS[spec.distill.method].teacher
    batch = spec.student.batch_size
    student_train = train_flops(loaded.student_arch) * batch
    if kind == "table":
        cell.emit({"phase": "teacher_pass"})
        t0 = time.perf_counter()
        table = backend.teacher_table(teacher, train, spec.measure.eval_batch_size)
        backend.sync(table)
        wall = time.perf_counter() - t0
        n = len(p.data.y_train)
        return Target(
            teacher=table,
            distill_flops_per_step=student_train,
            phases={
                "teacher_pass": Phase(
                    wall_s=wall,
                    samples=n,
                    batch_size=spec.measure.eval_batch_size,
                    flops_per_step=forward_flops(loaded.teacher_arch) * n,
                )
            },
        )
    if kind == "ensemble":
        members, phases, models = [teacher], {}, {}
        for k in range(1, spec.distill.teachers):
            model, phase, _ = train_teacher(k)
            members.append(model)
            phases[f"teacher{k}"] = phase
            models[f"teacher{k}"] = model
        per_step = len(members) * forward_flops(loaded.teacher_arch) * batch + student_train
        return Target(members, per_step, phases, models)
    if kind == "chain":
        start, arch = p.extra_nets["assistant"], loaded.assistant_arch
        assert spec.assistant is not None and arch is not None
        assistant = backend.build(arch, start.weights, seed=start.seed)
        state = backend.init_train(
            assistant,
            spec.assistant.optimizer.resolved(),
            p.loss,
            teacher,
            augment=p.student_augment,
        )
        link_flops = (
            forward_flops(loaded.teacher_arch) + train_flops(arch)
        ) * spec.assistant.batch_size
        state, phase = train_phase(
            cell,
            "assistant",
            spec.assistant,
            state,
            train,
            start.plan,
            spec.distill.warmup_epochs,
            link_flops,
        )
        assistant = backend.trained_model(state)
        per_step = forward_flops(arch) * batch + student_train
        return Target(assistant, per_step, {"assistant": phase}, {"assistant": assistant})
    return Target(teacher)
