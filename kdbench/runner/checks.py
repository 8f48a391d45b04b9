"""What a run checks before its first cell starts: data, batch sizes, warm-up, limits.

A mistake found here costs seconds and one line (exit 2); found inside a
cell it would cost a cell per seed and backend, or worse, give a "steady
state" of one step without a word.
"""

from __future__ import annotations

import json
import math
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.harness.prepare import load_spec_data
from kdbench.spec import LoadedSpec

MAX_SEEDS = 100  # the spec's own cap on measure.seeds


def check_seeds(seeds: int | None) -> None:
    if seeds is not None and not 1 <= seeds <= MAX_SEEDS:
        raise KdbenchError(f"--seeds must be at least 1 and at most {MAX_SEEDS} (got {seeds})")


def check_timeout(seconds: float | None, where: str = "--cell-timeout") -> None:
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise KdbenchError(f"{where} must be a positive number of seconds (got {seconds})")


def data_key(loaded: LoadedSpec, data_dir: str | None) -> str:
    """Specs with the same data section (and folder) share one check."""
    return json.dumps([loaded.spec.data.model_dump(mode="json"), data_dir], sort_keys=True)


def train_sizes(expanded: list[LoadedSpec], data_dir: str | None) -> dict[str, int]:
    """Load each distinct dataset once (seed 0) and return its training-split size.

    This reads every data file the run needs, so a missing folder or a bad
    file is one line before any cell (split sizes do not depend on the seed).
    """
    sizes: dict[str, int] = {}
    for loaded in expanded:
        key = data_key(loaded, data_dir)
        if key not in sizes:
            try:
                data = load_spec_data(loaded.spec, 0, data_dir)
            except KdbenchError as exc:
                raise KdbenchError(f"{loaded.path}: data: {exc}") from None
            sizes[key] = len(data.y_train)
    return sizes


def check_phases(loaded: LoadedSpec, n_train: int, where: str) -> None:
    """Every batch fits the training split, and every phase has steady steps after warm-up."""
    spec = loaded.spec
    warmup = spec.measure.warmup_steps
    for role in ("teacher", "student"):
        net: Any = getattr(spec, role)
        if net.batch_size > n_train:
            raise KdbenchError(
                f"{where}: {role}.batch_size {net.batch_size} is larger than the training "
                f"split ({n_train} samples); lower it or use more data"
            )
        steps = (n_train // net.batch_size) * net.epochs
        if warmup >= steps:
            raise KdbenchError(
                f"{where}: measure.warmup_steps {warmup} leaves no steady-state step in the "
                f"{role}'s {steps} steps ({net.epochs} epochs x {n_train // net.batch_size} "
                "batches); lower warmup_steps or train longer"
            )
