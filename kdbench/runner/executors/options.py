"""Where the cells of a run execute: ``--executor`` and a matrix file's ``[executor]`` table.

``local`` runs the cells one after another on this machine (the default, and
the only way whose timings never share the machine with another cell). ``ray``
hands each cell to a Ray cluster as a task, ``slurm`` to Slurm as a job
through submitit. Wherever a cell runs it runs in a fresh process of its own,
and only the driver (``kdbench run``) appends to the run's results.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ExecutorKind = Literal["local", "ray", "slurm"]
EXECUTOR_KINDS: tuple[str, ...] = ("local", "ray", "slurm")


class ExecutorOptions(BaseModel):
    """The ``[executor]`` table; each executor reads the options it knows."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kind: ExecutorKind = Field("local", description="local, ray or slurm")
    cpus_per_cell: int | None = Field(
        None, ge=1, le=1024, description="CPUs each cell asks for (default: its threads setting)"
    )
    gpus_per_cell: int | None = Field(
        None,
        ge=0,
        le=64,
        description="GPUs each cell asks for (default: 1 if device = gpu, or device = auto on a "
        "Ray cluster with GPUs)",
    )
    # Ray
    address: str | None = Field(
        None,
        description="ray: the cluster to join ('auto', 'ray://head:10001'); "
        "default: start a local one on this machine",
    )
    workers: int | None = Field(
        None, ge=1, le=4096, description="ray: CPUs of the local cluster it starts (default: all)"
    )
    # Slurm (submitit)
    cluster: Literal["slurm", "local"] = Field(
        "slurm",
        description="slurm: 'slurm', or 'local' for submitit's local executor (same job path, "
        "this machine)",
    )
    partition: str | None = Field(None, description="slurm: the partition")
    mem_gb: float | None = Field(None, gt=0, description="slurm: memory per cell")
    max_parallel: int | None = Field(
        None, ge=1, description="slurm: at most this many cells running at once"
    )
    slurm_options: dict[str, str] = Field(
        default_factory=dict,
        description="slurm: more sbatch options, e.g. { account = 'me', qos = 'short' }",
    )
    poll_s: float = Field(
        2.0, gt=0, le=600, allow_inf_nan=False, description="slurm: seconds between checks"
    )

    def cpus_for(self, threads: int) -> int:
        return self.cpus_per_cell or max(1, threads)

    def gpus_for(self, device: str, gpus_there: bool = False) -> int:
        """A cell that may use a GPU asks for one (Ray hides GPUs from tasks that
        ask for none); gpus_there: the cluster has GPUs, for device = auto."""
        if self.gpus_per_cell is not None:
            return self.gpus_per_cell
        return 1 if device == "gpu" or (device == "auto" and gpus_there) else 0
