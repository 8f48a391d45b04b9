"""Small files in the formats of the real datasets, written by the tests."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np


def cifar_batch(
    n: int, rng: np.random.Generator, *, label_key: str = "labels", classes: int = 10
) -> dict[bytes, Any]:
    """A dict shaped like an official CIFAR batch (bytes keys, list labels)."""
    batch: dict[bytes, Any] = {
        b"batch_label": b"training batch 1 of 5",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key.encode(): [int(v) for v in np.arange(n) % classes],
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }
    if label_key == "fine_labels":
        batch[b"coarse_labels"] = [int(v) % 20 for v in rng.integers(0, 20, n)]
    return batch


def write_pickle(path: Path, obj: Any) -> Path:
    """A protocol-2 pickle as Python 3 writes it (bytes go through _codecs.encode)."""
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def fake_cifar10(root: Path, *, n: int = 12, seed: int = 0) -> dict[str, dict[bytes, Any]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": cifar_batch(n, rng) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(n, rng)
    for file, batch in batches.items():
        write_pickle(folder / file, batch)
    return batches


def fake_cifar100(root: Path, *, n: int = 40, seed: int = 0) -> dict[str, dict[bytes, Any]]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = {
        name: cifar_batch(n, rng, label_key="fine_labels", classes=100)
        for name in ("train", "test")
    }
    for file, batch in batches.items():
        write_pickle(folder / file, batch)
    return batches
