"""CIFAR-10 and CIFAR-100 from the "python version" archives.

The official files (www.cs.toronto.edu/~kriz/cifar.html) are Python 2
pickles of dicts holding a uint8 array ``data`` (N x 3072: the red, green and
blue 32x32 planes one after the other, rows first) and a list of labels.
They are read through kdbench.datasets.safe_pickle (nothing but these
arrays and lists can come out of them). Label lists must be flat lists of
small ints of the right length, checked before any array is made from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdbench.datasets.safe_pickle import URL, load_pickle
from kdbench.datasets.split import RawData
from kdbench.errors import KdbenchError

_LAYOUT = {
    # name: (folder, [(split, file)], label key, classes, archive)
    "cifar10": (
        "cifar-10-batches-py",
        [("train", f"data_batch_{i}") for i in range(1, 6)] + [("test", "test_batch")],
        "labels",
        10,
        "cifar-10-python.tar.gz",
    ),
    "cifar100": (
        "cifar-100-python",
        [("train", "train"), ("test", "test")],
        "fine_labels",
        100,
        "cifar-100-python.tar.gz",
    ),
}

_SIDE = 32
_PIXELS = 3 * _SIDE * _SIDE


def _field(batch: dict[Any, Any], key: str) -> Any:
    """``batch[b"key"]`` (the official files), or ``batch["key"]`` if re-pickled from Python 3."""
    if key.encode() in batch:
        return batch[key.encode()]
    return batch.get(key)


def _parse_batch(
    batch: Any, path: Path, dataset: str, label_key: str, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Check one unpickled batch and return (images NHWC uint8, labels int64)."""

    def bad(problem: str) -> KdbenchError:
        return KdbenchError(
            f"dataset '{dataset}': {path} {problem}; expected a CIFAR python-version batch, "
            f"download it again from {URL}"
        )

    if not isinstance(batch, dict):
        return_type = type(batch).__name__
        raise bad(f"holds a {return_type}, not a dict")
    data = _field(batch, "data")
    labels = _field(batch, label_key)
    if data is None or labels is None:
        raise bad(f"lacks the key 'data' or '{label_key}'")
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == _PIXELS
    ):
        desc = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else "no array"
        raise bad(f"has 'data' = {desc}, expected a uint8 array N x {_PIXELS}")
    y = _labels(labels, data.shape[0], label_key, classes, bad)
    x = np.asarray(data).reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y


def _labels(
    labels: Any, count: int, key: str, classes: int, bad: Callable[[str], KdbenchError]
) -> np.ndarray:
    """One label per image, each an int in 0..classes-1, as int64.

    A list is checked element by element (length first, then types, then
    range) before any array is made from it, so a nested or huge structure
    costs nothing but its own length to refuse.
    """
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise bad(f"has '{key}' = {labels.dtype} array {labels.shape}, expected a list of ints")
        values: Sequence[int] | np.ndarray = np.asarray(labels)
    elif isinstance(labels, (list, tuple)):
        values = labels
    else:
        raise bad(f"has '{key}' of type {type(labels).__name__}, expected a list of ints")
    if len(values) != count:
        raise bad(
            f"has {len(values)} '{key}' for {count} images, expected one integer label per image"
        )
    if isinstance(values, np.ndarray):
        low, high = (int(values.min()), int(values.max())) if count else (0, 0)
    else:
        if not all(type(v) is int for v in values):
            first = next(v for v in values if type(v) is not int)
            raise bad(
                f"has a {type(first).__name__} among its '{key}', which must be a flat list "
                "of integers, one per image"
            )
        low, high = (min(values), max(values)) if count else (0, 0)
    if low < 0 or high >= classes:
        raise bad(f"holds label {high if high >= classes else low}, expected 0..{classes - 1}")
    return np.array(values, dtype=np.int64)


def _resolve_folder(dataset: str, root: Path) -> Path:
    """``root`` if it is the extracted folder, else that folder inside ``root``."""
    folder_name, files, _, _, archive = _LAYOUT[dataset]
    inner = root / folder_name
    if inner.is_dir():
        return inner
    if root.name == folder_name or any((root / f).is_file() for _, f in files):
        return root
    hint = f"download {archive} from {URL} and extract it there"
    if (root / archive).is_file():
        hint = f"extract the archive first: tar -xzf {root / archive} -C {root}"
    raise KdbenchError(
        f"dataset '{dataset}' needs the folder {folder_name} (data.path or --data-dir may name "
        f"it or the folder holding it), but {root} neither is nor contains it; {hint}"
    )


def load_cifar_folder(dataset: str, path: str | Path) -> RawData:
    """CIFAR-10 (``cifar10``) or CIFAR-100 fine labels (``cifar100``) from ``path``."""
    folder_name, files, label_key, classes, _ = _LAYOUT[dataset]
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise KdbenchError(
            f"dataset '{dataset}' needs the folder {folder_name} (data.path or --data-dir may "
            f"name it or the folder holding it), but {root} {what}"
        )
    folder = _resolve_folder(dataset, root)
    missing = [str(folder / f) for _, f in files if not (folder / f).is_file()]
    if missing:
        expected = ", ".join(f for _, f in files)
        raise KdbenchError(
            f"dataset '{dataset}': missing {', '.join(missing)} (the folder {folder_name} must "
            f"hold {expected}); download the python version again from {URL}"
        )
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
        "train": ([], []),
        "test": ([], []),
    }
    for split, file in files:
        x, y = _parse_batch(
            load_pickle(folder / file, dataset), folder / file, dataset, label_key, classes
        )
        parts[split][0].append(x)
        parts[split][1].append(y)
    return RawData(
        x=np.concatenate(parts["train"][0]),
        y=np.concatenate(parts["train"][1]),
        x_test=np.concatenate(parts["test"][0]),
        y_test=np.concatenate(parts["test"][1]),
        scale=255.0,
        source=str(folder),
    )
