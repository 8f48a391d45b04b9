"""Trained teachers cached by what determines them, shared by cells and runs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from kdbench.backends.base import Settings, Weights
from kdbench.records.schema import Phase
from kdbench.spec import LoadedSpec


def teacher_key(loaded: LoadedSpec, backend: str, seed: int, settings: Settings) -> str:
    """What determines a trained teacher: its data, its network and training,
    the seed, the backend and the settings that change numerics (not threads)."""
    spec = loaded.spec
    content = {
        "data": spec.data.model_dump(mode="json"),
        "teacher": spec.teacher.model_dump(mode="json"),
        "warmup": spec.measure.warmup_steps,
        "backend": backend,
        "seed": seed,
        "settings": {k: v for k, v in settings.as_dict().items() if k != "threads"},
    }
    text = json.dumps(content, sort_keys=True)
    return f"{backend}-seed{seed}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def load_cached_teacher(cache: Path, key: str) -> tuple[Weights, Phase] | None:
    weights_file, stats_file = cache / f"{key}.npz", cache / f"{key}.json"
    if not (weights_file.is_file() and stats_file.is_file()):
        return None
    with np.load(weights_file) as data:
        weights = {name: data[name] for name in data.files}
    return weights, Phase.model_validate_json(stats_file.read_text())


def save_cached_teacher(cache: Path, key: str, weights: Weights, phase: Phase) -> None:
    """Weights first, stats last: a teacher counts as cached once both exist."""
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"{key}.tmp.npz"
    np.savez(tmp, **weights)
    os.replace(tmp, cache / f"{key}.npz")
    tmp_json = cache / f"{key}.json.tmp"
    tmp_json.write_text(phase.model_dump_json(exclude_none=True))
    os.replace(tmp_json, cache / f"{key}.json")
