"""Trained teachers cached by what determines them, shared by cells and runs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from filelock import FileLock

from kdbench.backends.base import Settings, Weights
from kdbench.records.schema import Phase
from kdbench.records.store import write_atomic
from kdbench.spec import LoadedSpec
from kdbench.spec_nets import drop_later_net_defaults


def teacher_key(
    loaded: LoadedSpec, backend: str, seed: int, settings: Settings, member: int = 0
) -> str:
    """What determines a trained teacher: its data, its network and training,
    the seed, the backend and the settings that change numerics (not threads);
    member k > 0 is an ensemble's k-th extra teacher (other weights and batches)."""
    spec = loaded.spec
    data = spec.data.model_dump(mode="json")
    if data.get("augment") is None:  # a later field: keys made before it still match
        data.pop("augment", None)
    else:  # whether the students augment too does not change the teacher
        data["augment"].pop("nets", None)
    teacher = spec.teacher.model_dump(mode="json")
    drop_later_net_defaults(teacher)
    content = {
        "data": data,
        "teacher": teacher,
        "warmup": spec.measure.warmup_steps,
        "backend": backend,
        "seed": seed,
        "settings": {k: v for k, v in settings.as_dict().items() if k != "threads"},
    }
    if member:
        content["member"] = member
    text = json.dumps(content, sort_keys=True)
    return f"{backend}-seed{seed}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@contextlib.contextmanager
def teacher_lock(cache: Path, key: str) -> Iterator[None]:
    """Held while one cell loads or trains the teacher of key (flock: the
    kernel drops it if that cell dies, and the next waiter trains it). A cache
    that cannot hold a lock file (read-only) is read without one."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(cache / f".{key}.lock"))
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def load_cached_teacher(
    cache: Path, key: str, warn: Callable[[str], None] = lambda message: None
) -> tuple[Weights, Phase] | None:
    """The cached teacher, or None when there is none or it cannot be read
    (warn names the damaged file; the caller trains the teacher again)."""
    weights_file, stats_file = cache / f"{key}.npz", cache / f"{key}.json"
    if not (weights_file.is_file() and stats_file.is_file()):
        return None
    try:
        with np.load(weights_file, allow_pickle=False) as data:
            weights = {name: data[name] for name in data.files}
        return weights, Phase.model_validate_json(stats_file.read_text())
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        warn(
            f"the cached teacher {weights_file} cannot be read ({type(exc).__name__}: {exc}); "
            "training it again"
        )
        return None


def save_cached_teacher(cache: Path, key: str, weights: Weights, phase: Phase) -> None:
    """Weights first, stats last: a teacher counts as cached once both exist.

    Each file is written to a temp name and renamed; a temp file never
    outlives a failure."""
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{key}.{os.getpid()}.tmp.npz"
    try:
        np.savez(tmp, **weights)
        os.replace(tmp, cache / f"{key}.npz")
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    write_atomic(cache / f"{key}.json", phase.model_dump_json(exclude_none=True))
