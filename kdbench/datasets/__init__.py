"""Datasets for kdbench: loaded, split and normalised once by the harness, in numpy.

Every backend receives the same float32 NHWC arrays, so a difference between
frameworks can never come from the data. ``dataset_info`` answers shape and
class count without touching any file (spec validation needs it);
``load_dataset`` reads, splits by seed and normalises with training-split
statistics.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from kdbench.datasets.split import Dataset, RawData, make_dataset
from kdbench.errors import KdbenchError

__all__ = [
    "DATASETS",
    "FILE_DATASETS",
    "Dataset",
    "DatasetInfo",
    "dataset_info",
    "load_dataset",
]

DATASETS: tuple[str, ...] = (
    "mnist5k",
    "digits",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "cifar100",
    "synthetic",
)
# Datasets read from a folder the user provides (spec field data.path or --data-dir).
FILE_DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "cifar100")

_STATIC: dict[str, tuple[tuple[int, int, int], int]] = {
    "mnist5k": ((28, 28, 1), 10),
    "digits": ((8, 8, 1), 10),
    "mnist": ((28, 28, 1), 10),
    "fashion-mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
}

_FILES_HINT = {
    "mnist": "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (plain or .gz)",
    "cifar10": "cifar-10-batches-py/ from cifar-10-python.tar.gz",
    "cifar100": "cifar-100-python/ from cifar-100-python.tar.gz",
}
_FILES_HINT["fashion-mnist"] = _FILES_HINT["mnist"]


@dataclass(frozen=True)
class DatasetInfo:
    """What spec validation needs to know about a dataset, without loading it."""

    name: str
    shape: tuple[int, int, int]
    classes: int


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise KdbenchError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _synthetic_params(shape: Any, classes: Any) -> tuple[tuple[int, int, int], int]:
    try:
        dims = tuple(shape)
    except TypeError:
        dims = ()
    if len(dims) != 3 or not all(_is_int(d) and d > 0 for d in dims):
        raise KdbenchError(
            f"synthetic_shape must be three positive integers (height, width, channels), "
            f"got {shape!r}"
        )
    if not _is_int(classes) or classes < 2:
        raise KdbenchError(f"synthetic_classes must be an integer >= 2, got {classes!r}")
    return (int(dims[0]), int(dims[1]), int(dims[2])), int(classes)


def dataset_info(
    name: str,
    *,
    synthetic_shape: tuple[int, int, int] = (28, 28, 1),
    synthetic_classes: int = 10,
) -> DatasetInfo:
    """Input shape (H, W, C) and class count of ``name``; reads no file."""
    _check_name(name)
    if name == "synthetic":
        shape, classes = _synthetic_params(synthetic_shape, synthetic_classes)
    else:
        shape, classes = _STATIC[name]
    return DatasetInfo(name=name, shape=shape, classes=classes)


def _check_args(
    seed: Any,
    val_fraction: Any,
    test_fraction: Any,
    train_limit: Any,
    official_test: bool,
) -> None:
    if not _is_int(seed) or seed < 0:
        raise KdbenchError(f"seed must be a non-negative integer, got {seed!r}")
    for label, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not 0 <= value < 1:
            raise KdbenchError(f"{label} must be a number in [0, 1), got {value!r}")
    if not official_test:
        if test_fraction <= 0:
            raise KdbenchError(
                f"test_fraction must be above 0 for a dataset without an official test split, "
                f"got {test_fraction!r}"
            )
        if val_fraction + test_fraction >= 1:
            raise KdbenchError(
                f"val_fraction + test_fraction must be below 1 so that some data is left to "
                f"train on, got {val_fraction!r} + {test_fraction!r}"
            )
    if train_limit is not None and (not _is_int(train_limit) or train_limit < 1):
        raise KdbenchError(f"train_limit must be a positive integer or unset, got {train_limit!r}")


def _raw(
    name: str,
    *,
    seed: int,
    path: str | None,
    synthetic_samples: int,
    synthetic_shape: tuple[int, int, int],
    synthetic_classes: int,
) -> RawData:
    """Read the source of ``name``; imports only the reader that dataset needs."""
    if name in FILE_DATASETS:
        if path is None:
            raise KdbenchError(
                f"dataset '{name}' is read from a folder: set data.path in the spec or pass "
                f"--data-dir, naming the folder that holds {_FILES_HINT[name]}"
            )
        if name in ("cifar10", "cifar100"):
            from kdbench.datasets.cifar import load_cifar_folder

            return load_cifar_folder(name, path)
        from kdbench.datasets.idx import load_idx_folder

        return load_idx_folder(name, path)
    if name == "mnist5k":
        from kdbench.datasets.builtin import load_mnist5k

        return load_mnist5k()
    if name == "digits":
        from kdbench.datasets.builtin import load_digits

        return load_digits()
    from kdbench.datasets.synthetic import make_synthetic

    return make_synthetic(
        seed=seed, samples=synthetic_samples, shape=synthetic_shape, classes=synthetic_classes
    )


def load_dataset(
    name: str,
    *,
    seed: int,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    train_limit: int | None = None,
    synthetic_samples: int = 2048,
    synthetic_shape: tuple[int, int, int] = (28, 28, 1),
    synthetic_classes: int = 10,
) -> Dataset:
    """Load, split and normalise ``name``; the same seed always gives the same arrays.

    ``path`` is the folder of a file dataset (FILE_DATASETS) and is ignored by
    the others, so one --data-dir can serve a whole matrix. Datasets with an
    official test split keep it as the test set and hold out ``val_fraction``
    of the train split; the others are split stratified into
    ``test_fraction`` / ``val_fraction`` / the rest. ``train_limit`` then caps
    the training set (a seeded random subset). The ``synthetic_*`` arguments
    only concern ``synthetic``.
    """
    info = dataset_info(name, synthetic_shape=synthetic_shape, synthetic_classes=synthetic_classes)
    _check_args(seed, val_fraction, test_fraction, train_limit, name in FILE_DATASETS)
    if name == "synthetic" and (not _is_int(synthetic_samples) or synthetic_samples < 1):
        raise KdbenchError(
            f"synthetic_samples must be a positive integer, got {synthetic_samples!r}"
        )
    raw = _raw(
        name,
        seed=int(seed),
        path=None if path is None else str(path),
        synthetic_samples=int(synthetic_samples),
        synthetic_shape=info.shape,
        synthetic_classes=info.classes,
    )
    return make_dataset(
        name,
        info.classes,
        raw,
        seed=int(seed),
        val_fraction=float(val_fraction),
        test_fraction=float(test_fraction),
        train_limit=None if train_limit is None else int(train_limit),
    )
