"""CIFAR-10 and CIFAR-100 from the "python version" archives, unpickled safely.

The official files (www.cs.toronto.edu/~kriz/cifar.html) are Python 2
pickles of dicts holding a uint8 array ``data`` (N x 3072: the red, green and
blue 32x32 planes one after the other, rows first) and a list of labels.
Unpickling can run any callable named in the file, so a doctored download
could execute code; the unpickler here admits only the few globals these
files need (numpy's array reconstruction, and ``_codecs.encode``, which
protocol-2 pickles written from Python 3 use for bytes) and refuses the rest.
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdbench.datasets.split import RawData
from kdbench.errors import KdbenchError

try:  # numpy >= 2 moved the implementation to numpy._core
    from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[attr-defined,no-redef]

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

# (module, name) -> the object it may resolve to. Nothing else is importable.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}

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


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals CIFAR files are made of."""

    def __init__(self, file: Any, *, source: str, dataset: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source
        self._dataset = dataset

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise KdbenchError(
                f"dataset '{self._dataset}': the unpickler refuses to load global "
                f"{module}.{name} from {self._source}: CIFAR files hold only arrays, lists "
                f"and bytes; the file may have been tampered with, download it again from {URL}"
            ) from None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_pickle(path: Path, dataset: str) -> Any:
    """Unpickle one CIFAR file with RestrictedUnpickler; any failure names the file."""
    try:
        with path.open("rb") as f:
            return RestrictedUnpickler(f, source=str(path), dataset=dataset).load()
    except KdbenchError:
        raise
    except OSError as err:
        raise KdbenchError(f"dataset '{dataset}': cannot read {path}: {err.strerror}") from err
    except Exception as err:  # a damaged pickle can raise almost anything
        raise KdbenchError(
            f"dataset '{dataset}': {path} is not a readable CIFAR pickle "
            f"({type(err).__name__}: {_one_line(str(err))}); download it again from {URL}"
        ) from err


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
    if not isinstance(labels, (Sequence, np.ndarray)) or isinstance(labels, (str, bytes)):
        raise bad(f"has '{label_key}' of type {type(labels).__name__}, expected a list of ints")
    try:
        y = np.asarray(labels)
    except Exception as err:
        raise bad(f"has unreadable '{label_key}' ({_one_line(str(err))})") from err
    if y.ndim != 1 or y.shape[0] != data.shape[0] or (y.size and y.dtype.kind not in "iu"):
        raise bad(
            f"has {y.shape[0] if y.ndim else 'no'} '{label_key}' for {data.shape[0]} images, "
            "expected one integer label per image"
        )
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise bad(
            f"holds label {int(y.max() if y.max() >= classes else y.min())}, "
            f"expected 0..{classes - 1}"
        )
    x = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y


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
