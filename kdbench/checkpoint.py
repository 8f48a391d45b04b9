"""Portable teacher checkpoints: neutral weights in a safetensors file.

A file holds every weight of the architecture in kdbench's neutral layouts
(NHWC, HWIO conv kernels, (in, out) dense kernels), batch norm's running
statistics included, and metadata saying what it is: the architecture (name,
input shape, classes), the hash of the teacher's training content (its data
and [teacher] sections), and where it came from (backend, seed, spec).
safetensors holds raw arrays only, so loading a file never runs code (unlike
a pickle). Any backend loads any backend's teacher.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from kdbench.architectures import Architecture
from kdbench.errors import KdbenchError

FORMAT = "kdbench-teacher/1"


def teacher_content_hash(data: dict[str, Any], teacher: dict[str, Any]) -> str:
    """What determines a trained teacher apart from backend and seed."""
    text = json.dumps({"data": data, "teacher": teacher}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_teacher(
    path: Path, weights: dict[str, np.ndarray], arch: Architecture, origin: dict[str, Any]
) -> None:
    """Write a checkpoint; origin: backend, seed, spec, teacher_hash and the like."""
    from safetensors.numpy import save_file

    missing = set(arch.weight_shapes()) - set(weights)
    if missing:
        raise KdbenchError(f"the teacher's weights lack {sorted(missing)[0]}: not a {arch.name}")
    meta = {
        "format": FORMAT,
        "arch": arch.name,
        "input_shape": json.dumps(list(arch.input_shape)),
        "classes": str(arch.classes),
        **{k: str(v) for k, v in origin.items()},
    }
    arrays = {
        name: np.ascontiguousarray(weights[name], np.float32) for name in arch.weight_shapes()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(arrays, str(tmp), metadata=meta)
    tmp.replace(path)


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except FileNotFoundError:
        raise KdbenchError(f"{path}: no such teacher checkpoint") from None
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise KdbenchError(f"{path}: not a safetensors teacher checkpoint ({exc})") from None


def load_teacher(path: Path, arch: Architecture) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The weights of a checkpoint made for arch, and its metadata.

    Refuses, in one line naming the file, another architecture, input shape
    or class count, and any missing, extra or misshapen array."""
    from safetensors.numpy import load_file

    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise KdbenchError(
            f"{path}: not a kdbench teacher checkpoint (format {meta.get('format')!r})"
        )
    found = (meta.get("arch"), meta.get("input_shape"), meta.get("classes"))
    wanted = (arch.name, json.dumps(list(arch.input_shape)), str(arch.classes))
    if found != wanted:
        raise KdbenchError(
            f"{path}: holds a {found[0]} for input {found[1]} and {found[2]} classes, but the "
            f"spec's teacher is a {wanted[0]} for input {wanted[1]} and {wanted[2]} classes"
        )
    weights = load_file(str(path))
    shapes = arch.weight_shapes()
    if set(weights) != set(shapes):
        odd = sorted(set(weights) ^ set(shapes))[0]
        raise KdbenchError(f"{path}: weight {odd} does not belong to a {arch.name}")
    for name, shape in shapes.items():
        if tuple(weights[name].shape) != tuple(shape):
            raise KdbenchError(f"{path}: {name} has shape {weights[name].shape}, expected {shape}")
    return {name: weights[name] for name in shapes}, meta


def file_digest(path: Path) -> str:
    """A short content digest that records name which file a teacher came from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]
