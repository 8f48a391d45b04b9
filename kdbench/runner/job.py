"""One cell to run: what the runner hands the cell's process."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdbench.settings import Settings


@dataclass(frozen=True)
class CellJob:
    """In run.json paths are relative to the run folder (Run.resolved makes
    them absolute for the cell's process)."""

    spec_path: str
    spec_hash: str  # the content hash the cell was planned with
    backend: str
    seed: int
    settings: Settings  # resolved
    run_id: str
    record_file: str = ""
    data_dir: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    teacher_cache: str | None = None
    attempt_id: str = ""  # set for each try of the cell
    env: str = ""  # the labelled environment (--env LABEL=PYTHON) the cell runs in
    python: str = ""  # that environment's interpreter ("": the runner's own)
    round: int | None = None  # with --rounds: which repetition of the cell this is

    @property
    def cell_id(self) -> str:
        """Unique within a run: what --resume matches finished cells by."""
        parts = [Path(self.spec_path).stem, self.backend, f"seed{self.seed}"]
        parts += [self.label] if self.label else []
        parts += [f"env={self.env}"] if self.env else []
        parts += [f"round{self.round}"] if self.round is not None else []
        return "/".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "settings": self.settings.as_dict()}

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CellJob:
        return cls(**{**raw, "settings": Settings(**raw["settings"])})

    @classmethod
    def from_json(cls, text: str) -> CellJob:
        return cls.from_dict(json.loads(text))
