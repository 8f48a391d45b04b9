"""The result record: one per cell, typed and versioned, in this one module.

Every writer builds a ``Record`` and every reader (show, report, compare, the
plots, the GPU check) gets ``Record`` objects from ``upgrade``, which reads
every older schema version in one place. A field that a cell did not measure
is None (absent from the stored JSON).

Version history:
- 1: the first records. The inference of older version-1 records was one
  ``eval`` phase timed per batch (``batch_time_median_s``, ``batch_times_s``,
  ``batches``); newer version-1 records time ``eval_teacher`` and
  ``eval_student`` in steps like the training phases.
- 2: the same figures, validated against this schema on write and on read;
  every phase names its times ``step_*`` (``upgrade`` renames version 1's
  ``batch_*``).
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from kdbench.errors import KdbenchError
from kdbench.settings import Settings

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
Status = Literal["ok", "failed", "timeout", "oom", "killed"]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpecRef(_Part):
    name: str
    hash: str | None = None  # the validated content's hash (kdbench.spec.spec_hash)
    path: str | None = None


class _SpecSettings(_Part):
    """The spec values that decide whether two cells may be compared."""

    teacher_batch_size: int | None = None
    student_batch_size: int | None = None
    eval_batch_size: int | None = None
    warmup_steps: int | None = None
    method: str | None = None
    temperature: float | None = None
    alpha: float | None = None  # the weight of the distillation term, where the spec gives it so
    loss_terms: str | None = None  # the method's weighted terms: "0.1*ce + 0.9*kd"
    # "per-backend", "shared:<backend>" (one backend's teacher loaded by all) or
    # "file:<name>@<digest>" (teacher.checkpoint); None in older records.
    teacher_source: str | None = None
    compile_mode: str | None = None  # the framework's name for the compile mode in force


# settings.* of a record: every runtime setting (kdbench.settings, resolved),
# derived from its one declaration, plus the spec values above. Version-1
# records may lack any of them.
RecordSettings = create_model(  # type: ignore[call-overload]
    "RecordSettings",
    __base__=_SpecSettings,
    **{
        name: (Optional[field.annotation], None)  # noqa: UP045 - a runtime type expression
        for name, field in Settings.model_fields.items()
    },
)


class Host(_Part):
    kdbench_version: str | None = None
    hostname: str | None = None  # the machine that ran the cell (None: unknown)
    executor: str | None = None  # what dispatched it: local, ray or slurm (None: older records)
    os: str | None = None
    cpu: str | None = None
    cpu_isa: list[str] | None = None  # its vector/matrix extensions (kdbench.host.KERNEL_ISA)
    cpu_count: int | None = None
    python: str | None = None
    python_implementation: str | None = None
    executable: str | None = None  # the interpreter that ran the cell (its environment)
    cpu_affinity: list[int] | None = None  # the CPUs it could use (a duet's share)
    loadavg_start: list[float] | None = None
    loadavg_end: list[float] | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None


class Phase(_Part):
    """One timed phase: a training phase (teacher, scratch, distill) or an
    inference phase (eval_teacher, eval_student; eval in older records)."""

    steps: int | None = None
    samples: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    wall_s: float | None = None
    loss_step0: float | None = None  # training phases: the loss before any update
    loss_epochs: list[float | None] | None = None
    warmup_steps: int | None = None
    warmup_s: float | None = None
    first_step_s: float | None = None
    steady_steps: int | None = None
    step_time_median_s: float | None = None
    step_time_iqr_s: float | None = None
    step_time_p90_s: float | None = None
    step_time_mean_s: float | None = None
    throughput_samples_per_s: float | None = None
    step_times_s: list[float] | None = None  # every step, warm-up included
    # How the steady steps were timed: "synced" (wait for each step's work),
    # or "in_flight" (the next step dispatched before waiting for this one:
    # a step's time runs from the previous completion to its own).
    step_timing: str | None = None
    flops_per_step: int | None = None
    achieved_flops_per_s: float | None = None
    fraction_of_peak: float | None = None
    device_peak_bytes: int | None = None
    host_peak_rss_bytes: int | None = None
    from_cache: bool | None = None  # teacher: loaded from the teacher cache
    epoch_eval_s: float | None = None  # measure.best_epoch: evaluating after each epoch
    val_acc_epochs: list[float] | None = None  # measure.best_epoch: after each epoch
    test_acc_epochs: list[float] | None = None

    def steady_times(self) -> list[float] | None:
        """The raw steady-state times, as the harness split them; None if not recorded."""
        if not self.step_times_s:
            return None
        warmup = self.warmup_steps or 0
        times = self.step_times_s
        return times[warmup:] if len(times) > warmup else times[-1:]


class Metrics(_Part):
    teacher_acc: float | None = None  # test split, after the last epoch
    scratch_acc: float | None = None
    distilled_acc: float | None = None
    gain: float | None = None  # distilled_acc - scratch_acc
    agreement: float | None = None  # teacher vs distilled student, test split
    agreement_scratch: float | None = None
    teacher_val_acc: float | None = None
    scratch_val_acc: float | None = None
    distilled_val_acc: float | None = None
    teacher_from_cache: bool | None = None
    teacher_params: int | None = None
    student_params: int | None = None
    connector_params: int | None = None  # the method's connectors (FitNet), apart from the student
    # ensemble: every member's test accuracy (teacher_acc is the ensemble's:
    # the argmax of the weighted mean of the members' softmax outputs)
    teacher_members_acc: list[float] | None = None
    assistant_acc: float | None = None  # assistant: the chain's middle link, test split
    # measure.best_epoch: each student's epoch (from 1) of best validation
    # accuracy, its test accuracy then, and the gain between the two then.
    scratch_best_epoch: int | None = None
    scratch_acc_best_val: float | None = None
    distilled_best_epoch: int | None = None
    distilled_acc_best_val: float | None = None
    gain_best_val: float | None = None
    assistant_val_acc: float | None = None


class Timings(_Part):
    setup_s: float | None = None
    data_load_s: float | None = None
    put_dataset_s: float | None = None


class Probe(_Part):
    """The matrix-multiply rate this framework reached at the start of the cell."""

    n: int | None = None
    repeats: int | None = None
    flops_per_s: dict[str, float] = {}
    wall_s: float | None = None


class DataInfo(_Part):
    dataset: str | None = None
    train: int | None = None
    val: int | None = None
    test: int | None = None
    shape: list[int] | None = None
    classes: int | None = None


class Memory(_Part):
    host_rss_start_bytes: int | None = None
    host_rss_after_framework_bytes: int | None = None
    framework_import_bytes: int | None = None
    host_peak_rss_bytes: int | None = None


class Record(_Part):
    """One cell: what ran, where, how it ended, and what it measured."""

    schema_version: int = SCHEMA_VERSION
    run_id: str | None = None
    cell_id: str
    attempt_id: str | None = None  # one per try of the cell; a retry appends a newer one
    spec: SpecRef
    backend: str
    seed: int
    label: str = ""  # the matrix's settings label ("" outside a matrix)
    env: str = ""  # the labelled environment of an A/B run (--env LABEL=PYTHON), else ""
    round: int | None = None  # the repetition, in a run with --rounds
    overrides: dict[str, Any] = {}
    settings: RecordSettings = RecordSettings()  # type: ignore[valid-type]
    host: Host = Host()
    started_at: str | None = None
    status: Status = "failed"
    error: str | None = None
    traceback: str | None = None
    duration_s: float | None = None
    framework: str | None = None
    framework_version: str | None = None
    device: str | None = None
    environment: dict[str, Any] = {}  # Environment.record_block(): framework-specific facts
    metrics: Metrics | None = None
    phases: dict[str, Phase] = {}
    timings: Timings | None = None
    probe: Probe | None = None
    data: DataInfo | None = None
    memory: Memory | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        """The stored form: JSON types, unmeasured fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


_V1_PHASE_NAMES = {
    "batch_time_median_s": "step_time_median_s",
    "batch_times_s": "step_times_s",
    "batches": "steps",
}


def _upgrade_v1(raw: dict[str, Any]) -> dict[str, Any]:
    phases = {}
    for name, phase in (raw.get("phases") or {}).items():
        phases[name] = {_V1_PHASE_NAMES.get(k, k): v for k, v in (phase or {}).items()}
    return {**raw, "phases": phases, "schema_version": 2}


def upgrade(raw: Mapping[str, Any] | Record, where: str = "record") -> Record:
    """A record of any readable schema version as the current ``Record``.

    where names the record in errors (the file and line).
    """
    if isinstance(raw, Record):
        return raw
    data = dict(raw)
    version = data.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise KdbenchError(
            f"{where}: record {data.get('cell_id', '?')} has schema_version {version}; this "
            f"kdbench reads versions {', '.join(map(str, READABLE_VERSIONS))} "
            "(a newer kdbench wrote it?)"
        )
    if version == 1:
        data = _upgrade_v1(data)
    try:
        return Record.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise KdbenchError(
            f"{where}: record {data.get('cell_id', '?')} is not a valid kdbench record: "
            f"{loc}: {err['msg']}"
        ) from None


def as_records(items: Iterable[Mapping[str, Any] | Record]) -> list[Record]:
    """Records from stored dicts or records (for the pure functions that take both)."""
    return [upgrade(item) for item in items]


def column(dotted: str) -> str:
    """A flat column name of the records' table ("metrics.teacher_acc",
    "phases.distill.step_time_median_s"), checked against this schema: a
    module that names a column this way fails at import if the field is gone."""
    node: Any = Record
    parts = iter(dotted.split("."))
    for part in parts:
        if node is Any:  # free-form below (environment.*, overrides.*)
            return dotted
        fields = getattr(node, "model_fields", None)
        if fields is None or part not in fields:
            raise KeyError(f"{dotted}: {part!r} is not a field of the record schema")
        node, keyed = _inner(fields[part].annotation)
        if keyed and next(parts, None) is None:  # a dict's key (a phase name) comes next
            return dotted
    return dotted


def phase_column(phase: str, field: str) -> str:
    """The column of one phase's field ("phases.distill.step_time_median_s"), checked."""
    return column(f"phases.{phase}.{field}")


def _inner(annotation: Any) -> tuple[Any, bool]:
    """(what a field holds, whether it is keyed by name) for a field annotation:
    a model, Any (free-form) or a scalar type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is dict:
        value = args[1] if len(args) == 2 else Any
        return (value if isinstance(value, type) and issubclass(value, BaseModel) else Any), True
    for arg in args:  # X | None
        if arg is not type(None):
            return _inner(arg)
    return annotation, False
