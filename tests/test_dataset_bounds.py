"""Untrusted dataset files cost memory in proportion to the bytes they hold (issue 9, case 18).

Every crafted file here is small on disk and declares (or inflates to) far
more than it holds. Each is loaded in a child process whose address space is
capped at 1 GiB with ``resource.setrlimit(RLIMIT_AS)``: the child must end
normally with the loader's one-line refusal, never with MemoryError, a
traceback or a kill, and it reports its peak RSS. A legitimate protocol-5
CIFAR pickle (numpy's out-of-band-capable ``_frombuffer`` form) must load
exactly like the protocol-2 one.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kdbench.datasets import cifar, idx
from kdbench.errors import KdbenchError

try:  # the name numpy itself pickles under: numpy._core (numpy 2) or numpy.core (numpy 1)
    from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[attr-defined,no-redef]

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="RLIMIT_AS and /proc/self/status are Linux behaviour"
)

LIMIT = 1 << 30  # the address-space cap of every child: 1 GiB
# What a refusal may cost: the interpreter with numpy is about 30 MiB.
REFUSAL_RSS_KIB = 160 * 1024

CHILD = r"""
import json, resource, sys
limit, dataset, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from kdbench.errors import KdbenchError
if dataset.startswith("cifar"):
    from kdbench.datasets.cifar import load_cifar_folder as load
else:
    from kdbench.datasets.idx import load_idx_folder as load
try:
    raw = load(dataset, folder)
    result = {"outcome": "accepted", "images": int(raw.x.shape[0])}
except KdbenchError as err:
    result = {"outcome": "refused", "message": str(err)}
# VmHWM is this process's own high-water mark; ru_maxrss would carry the peak
# of the parent it was forked from (a pytest worker holding three frameworks).
with open("/proc/self/status") as status:
    hwm = [line for line in status if line.startswith("VmHWM:")]
result["peak_rss_kib"] = int(hwm[0].split()[1])
print(json.dumps(result))
"""


def load_in_child(
    dataset: str, folder: Path, *, limit: int = LIMIT, timeout: float = 120
) -> dict[str, Any]:
    """Load ``folder`` in a fresh interpreter capped at ``limit`` bytes of address space."""
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # each BLAS thread reserves address space of its own
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(limit), dataset, str(folder)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"child exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.stderr == "", proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_refused(result: dict[str, Any], path: Path, *fragments: str) -> None:
    assert result["outcome"] == "refused", result
    message = result["message"]
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert result["peak_rss_kib"] < REFUSAL_RSS_KIB, result
    print(f"\n{path.name}: peak RSS {result['peak_rss_kib'] / 1024:.1f} MiB: {message}")


# --------------------------------------------------------------------------- CIFAR files


def cifar_batch(n: int, seed: int = 0) -> dict[bytes, Any]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def cifar10_folder(root: Path, first: bytes | None = None, *, protocol: int = 2) -> Path:
    """A cifar-10-batches-py folder of tiny batches; ``first`` replaces data_batch_1."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names):
        (folder / name).write_bytes(pickle.dumps(cifar_batch(4, seed), protocol=protocol))
    if first is not None:
        (folder / "data_batch_1").write_bytes(first)
    return folder / "data_batch_1"


class Reduce:
    """Pickles as ``func(*args)``, plus ``state`` for BUILD: any opcode stream numpy could."""

    def __init__(self, func: Any, args: tuple[Any, ...], state: Any = None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> tuple[Any, ...]:
        if self.state is None:
            return (self.func, self.args)
        return (self.func, self.args, self.state)


def huge_reconstruct_pickle() -> bytes:
    """~160 bytes: ``_reconstruct(ndarray, (300240, 3072), 'B')`` with no data behind it."""
    n = 300_240
    batch = {
        b"data": Reduce(_reconstruct, (np.ndarray, (n, 3072), b"B")),
        b"labels": Reduce(_reconstruct, (np.ndarray, (n,), b"B")),
    }
    return pickle.dumps(batch, protocol=2)


def ndarray_call_pickle() -> bytes:
    """The same allocation through a direct call of the admitted global numpy.ndarray."""
    n = 300_240
    batch = {
        b"data": Reduce(np.ndarray, ((n, 3072), "B")),
        b"labels": Reduce(np.ndarray, ((n,), "B")),
    }
    return pickle.dumps(batch, protocol=2)


def nested_labels_pickle() -> bytes:
    """~4 KB: one image and one 'label' that is 16**7 ints deep, by memo references."""
    labels: Any = [0] * 16
    for _ in range(6):
        labels = [labels] * 16
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [labels]}
    return pickle.dumps(batch, protocol=2)


def shared_buffer_pickle() -> bytes:
    """~0.5 MB: 12,000 big-endian arrays built from one memoized 100 KB string.

    numpy copies the bytes of a byte-swapped array, so unpickling would hold
    12,000 copies (1.2 GB) of data the file holds once.
    """
    shared = bytes(100_000)
    dtype = np.dtype(">u2")
    arrays = [
        Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (50_000,), dtype, False, shared))
        for _ in range(12_000)
    ]
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"extra": arrays}
    return pickle.dumps(batch, protocol=2)


def repeated_encode_pickle() -> bytes:
    """~0.2 MB: 12,000 calls of _codecs.encode on one memoized 100 KB string (1.2 GB)."""
    import codecs

    shared = "\0" * 100_000
    batch = {
        b"data": np.zeros((1, 3072), np.uint8),
        b"labels": [0],
        b"extra": [Reduce(codecs.encode, (shared, "latin1")) for _ in range(12_000)],
    }
    return pickle.dumps(batch, protocol=2)


CIFAR_ATTACKS: dict[str, tuple[Callable[[], bytes], tuple[str, ...]]] = {
    "huge-reconstruct": (huge_reconstruct_pickle, ("declares", "(300240, 3072)")),
    "ndarray-call": (ndarray_call_pickle, ("numpy.ndarray",)),
    "nested-labels": (nested_labels_pickle, ("a list among its 'labels'", "flat list of integers")),
    "shared-buffer": (shared_buffer_pickle, ("more array data than the file holds",)),
    "repeated-encode": (repeated_encode_pickle, ("_codecs.encode than the file holds",)),
}


@pytest.mark.parametrize("attack", list(CIFAR_ATTACKS))
def test_crafted_cifar_pickle_is_refused_in_bounded_memory(tmp_path: Path, attack: str) -> None:
    build, fragments = CIFAR_ATTACKS[attack]
    path = cifar10_folder(tmp_path, build())
    assert path.stat().st_size < 1_000_000
    assert_refused(load_in_child("cifar10", tmp_path), path, *fragments)


def test_the_huge_reconstruct_pickle_is_as_small_as_the_reported_one() -> None:
    assert len(huge_reconstruct_pickle()) < 200
    assert len(nested_labels_pickle()) < 5_000


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_legitimate_pickles_of_every_protocol_load_identically(
    tmp_path: Path, protocol: int
) -> None:
    """Protocol 5 stores arrays as numpy._core.numeric._frombuffer of a bytearray."""
    reference = cifar10_folder(tmp_path / "reference", protocol=2).parent
    other = cifar10_folder(tmp_path / f"p{protocol}", protocol=protocol).parent
    if protocol == 5:
        data = (other / "test_batch").read_bytes()
        assert b"_frombuffer" in data and b"_reconstruct" not in data
    expected = cifar.load_cifar_folder("cifar10", reference)
    got = cifar.load_cifar_folder("cifar10", other)
    for field in ("x", "y", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(got, field), getattr(expected, field))
        assert getattr(got, field).dtype == getattr(expected, field).dtype
    assert type(got.x) is np.ndarray and got.x.shape == (20, 32, 32, 3)


def test_a_protocol5_pickle_of_read_only_arrays_loads(tmp_path: Path) -> None:
    """A read-only array pickles its buffer as bytes, not bytearray."""
    batch = cifar_batch(4)
    batch[b"data"].flags.writeable = False
    labels = np.array(batch[b"labels"], dtype=np.int64)
    labels.flags.writeable = False
    batch[b"labels"] = labels
    path = cifar10_folder(tmp_path, pickle.dumps(batch, protocol=5))
    raw = cifar.load_cifar_folder("cifar10", path.parent)
    np.testing.assert_array_equal(raw.y[:4], labels)
    np.testing.assert_array_equal(
        raw.x[:4], batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    )


def test_out_of_band_buffers_are_named_not_crashed(tmp_path: Path) -> None:
    batch = cifar_batch(4)
    data = pickle.dumps(batch, protocol=5, buffer_callback=lambda _: False)
    path = cifar10_folder(tmp_path, data)
    with pytest.raises(KdbenchError) as excinfo:
        cifar.load_cifar_folder("cifar10", path.parent)
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message and "out-of-band" in message


def cifar_error(tmp_path: Path, content: bytes) -> str:
    path = cifar10_folder(tmp_path, content)
    with pytest.raises(KdbenchError) as excinfo:
        cifar.load_cifar_folder("cifar10", path.parent)
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message, message
    return message


def frombuffer_pickle(buffer: Any, dtype: Any, shape: tuple[int, ...], order: str = "C") -> bytes:
    from numpy._core.numeric import _frombuffer  # type: ignore[attr-defined]

    batch = {b"data": Reduce(_frombuffer, (buffer, dtype, shape, order)), b"labels": [0]}
    return pickle.dumps(batch, protocol=5)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        # a shape larger than the bytes behind it
        (lambda: frombuffer_pickle(bytearray(3072), np.dtype("u1"), (300240, 3072)), "declares"),
        # a subarray dtype whose items are each 10**8 bytes
        (
            lambda: frombuffer_pickle(bytearray(16), np.dtype(("u1", (10**4, 10**4))), (1,)),
            "dtype",
        ),
        # object arrays are never data
        (lambda: frombuffer_pickle(bytearray(8), np.dtype("O"), (1,)), "dtype"),
        # setstate whose shape disagrees with its bytes
        (
            lambda: pickle.dumps(
                {
                    b"data": Reduce(
                        _reconstruct,
                        (np.ndarray, (0,), b"b"),
                        (1, (300240, 3072), np.dtype("u1"), False, b"\0" * 3072),
                    ),
                    b"labels": [0],
                },
                protocol=2,
            ),
            "declares",
        ),
        # float data is refused before it is built
        (
            lambda: pickle.dumps(
                {b"data": np.zeros((1, 3072), np.float64), b"labels": [0]}, protocol=2
            ),
            "dtype",
        ),
    ],
)
def test_array_shapes_and_dtypes_are_checked_before_reconstruction(
    tmp_path: Path, make: Callable[[], bytes], fragment: str
) -> None:
    assert fragment in cifar_error(tmp_path, make())


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        ([[0]], "flat list of integers"),
        ([True], "flat list of integers"),
        ([0.0], "flat list of integers"),
        ([b"0"], "flat list of integers"),
        ([2**70], "holds label"),
        ([-1], "holds label -1"),
        ([0, 1], "2 'labels' for 1 images"),
        ({0: 0}, "expected a list of ints"),
        (np.zeros((1, 1), np.int64), "expected a list of ints"),
    ],
)
def test_label_lists_must_be_flat_small_ints_of_the_right_length(
    tmp_path: Path, labels: Any, fragment: str
) -> None:
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": labels}
    assert fragment in cifar_error(tmp_path, pickle.dumps(batch, protocol=2))


def test_codecs_encode_admits_only_latin1(tmp_path: Path) -> None:
    import codecs

    batch = {b"data": Reduce(codecs.encode, ("x" * 10, "hex")), b"labels": [0]}
    data = pickle.dumps(batch, protocol=2)
    assert b"_codecs" in data
    assert "latin1" in cifar_error(tmp_path, data)


# --------------------------------------------------------------------------- IDX files


def idx_header(magic: int, dims: tuple[int, ...]) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)


def mnist_folder(folder: Path, n_train: int = 60, n_test: int = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (folder / f"{stem}-images-idx3-ubyte").write_bytes(
            idx_header(idx.IMAGES_MAGIC, images.shape) + images.tobytes()
        )
        (folder / f"{stem}-labels-idx1-ubyte").write_bytes(
            idx_header(idx.LABELS_MAGIC, labels.shape) + labels.tobytes()
        )


def gzip_members(first: bytes, zeros: int, members: int) -> bytes:
    """``first`` then ``zeros * members`` zero bytes, as repeated gzip members (small on disk)."""
    block = gzip.compress(bytes(zeros), compresslevel=9)
    return gzip.compress(first, compresslevel=9) + block * members


def replace_with_gz(folder: Path, stem: str, content: bytes) -> Path:
    (folder / stem).unlink()
    path = folder / f"{stem}.gz"
    path.write_bytes(content)
    return path


def test_gzip_that_inflates_far_beyond_its_header_is_refused(tmp_path: Path) -> None:
    """1.2 MB on disk, 60 labels declared, 1.2 GB inflated: read stops at 61 bytes."""
    mnist_folder(tmp_path)
    labels = (np.arange(60) % 10).astype(np.uint8)
    content = gzip_members(idx_header(idx.LABELS_MAGIC, (60,)) + labels.tobytes(), 12 << 20, 100)
    path = replace_with_gz(tmp_path, "train-labels-idx1-ubyte", content)
    assert path.stat().st_size < 1_500_000
    assert_refused(load_in_child("mnist", tmp_path), path, "longer than its header says")


def test_gzip_declaring_more_than_deflate_can_hold_is_refused_unread(tmp_path: Path) -> None:
    mnist_folder(tmp_path)
    content = gzip.compress(idx_header(idx.IMAGES_MAGIC, (2**32 - 1, 28, 28)) + bytes(784))
    path = replace_with_gz(tmp_path, "train-images-idx3-ubyte", content)
    assert_refused(load_in_child("mnist", tmp_path), path, "4294967295x28x28", "cannot hold")


def test_gzip_declaring_more_than_it_inflates_to_is_refused(tmp_path: Path) -> None:
    """A header within deflate's ratio whose stream ends early: nothing is preallocated."""
    mnist_folder(tmp_path)
    header = idx_header(idx.IMAGES_MAGIC, (1_000_000, 28, 28))  # 784 MB declared
    content = gzip_members(header + bytes(784 * 60), 1 << 20, 1) + bytes(800_000)  # zero padding
    path = replace_with_gz(tmp_path, "train-images-idx3-ubyte", content)
    labels_path = tmp_path / "train-labels-idx1-ubyte"
    labels_path.write_bytes(idx_header(idx.LABELS_MAGIC, (1_000_000,)) + bytes(1_000_000))
    assert_refused(load_in_child("mnist", tmp_path), path, "truncated")


def test_plain_idx_declaring_a_huge_size_is_refused_unread(tmp_path: Path) -> None:
    mnist_folder(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_header(idx.IMAGES_MAGIC, (2**32 - 1, 28, 28)) + bytes(784))
    assert_refused(load_in_child("mnist", tmp_path), path, "truncated")


def test_image_and_label_counts_are_compared_before_reading(tmp_path: Path) -> None:
    """Both headers honest about their own size, but the two files disagree: nothing is read."""
    mnist_folder(tmp_path)
    images = replace_with_gz(
        tmp_path,
        "train-images-idx3-ubyte",
        gzip_members(idx_header(idx.IMAGES_MAGIC, (1_000_000, 28, 28)), 784 << 10, 1000),
    )
    labels = tmp_path / "train-labels-idx1-ubyte"
    result = load_in_child("mnist", tmp_path)
    assert_refused(result, images, "holds 1000000 images", str(labels), "holds 60 labels")


def test_an_honest_file_larger_than_memory_is_a_one_line_error(tmp_path: Path) -> None:
    """Declared and inflated sizes agree, but the cap is lower: no MemoryError traceback."""
    mnist_folder(tmp_path)
    n = 400_000  # 314 MB of images under a 256 MiB cap
    header = idx_header(idx.IMAGES_MAGIC, (n, 28, 28))
    path = replace_with_gz(
        tmp_path,
        "train-images-idx3-ubyte",
        gzip_members(header, 784 * 1000, n // 1000),
    )
    labels = (np.arange(n) % 10).astype(np.uint8)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(
        idx_header(idx.LABELS_MAGIC, (n,)) + labels.tobytes()
    )
    result = load_in_child("mnist", tmp_path, limit=256 << 20)
    assert result["outcome"] == "refused", result
    assert str(path) in result["message"] and "memory" in result["message"]
    assert "\n" not in result["message"]


def test_gzip_idx_still_loads_exactly(tmp_path: Path) -> None:
    mnist_folder(tmp_path)
    plain = idx.load_idx_folder("mnist", tmp_path)
    for file in list(tmp_path.iterdir()):
        replace_with_gz(tmp_path, file.name, gzip.compress(file.read_bytes()))
    packed = idx.load_idx_folder("mnist", tmp_path)
    for field in ("x", "y", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(packed, field), getattr(plain, field))
