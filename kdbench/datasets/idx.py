"""MNIST and Fashion-MNIST from their IDX files, checked before they are trusted.

The IDX format (yann.lecun.com/exdb/mnist) is a big-endian header followed by
raw bytes: two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, one uint32 per dimension, then the data. A truncated download or
a file of the wrong kind must fail here with a message that names the file,
not later as a reshape error deep inside a backend.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from kdbench.datasets.split import RawData
from kdbench.errors import KdbenchError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, cols)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)
UBYTE = 0x08

# role -> file name, in the order a reader expects to be told about them.
FILES = {
    "train images": "train-images-idx3-ubyte",
    "train labels": "train-labels-idx1-ubyte",
    "test images": "t10k-images-idx3-ubyte",
    "test labels": "t10k-labels-idx1-ubyte",
}

# Where torchvision keeps the same files below its root folder; accepted too so
# that an existing torchvision download can be used as it is.
_TORCHVISION_DIR = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

_IMAGE_SIDE = 28
_CLASSES = 10


def _expected(name: str) -> str:
    files = ", ".join(FILES.values())
    return f"dataset '{name}' needs the four IDX files {files} (each plain or .gz)"


def _read_bytes(path: Path, name: str) -> bytes:
    """The file's bytes, gunzipped when it is gzip (by content, whatever its name)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise KdbenchError(f"dataset '{name}': cannot read {path}: {err.strerror}") from err
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise KdbenchError(
                f"dataset '{name}': {path} is a damaged gzip file ({err}); "
                "download it again or replace it with the uncompressed file"
            ) from err
    return data


def read_idx(path: Path, magic: int, *, name: str = "idx") -> np.ndarray:
    """Read one IDX file of unsigned bytes, checking magic number and size.

    ``magic`` is IMAGES_MAGIC or LABELS_MAGIC; the returned array has the
    header's dimensions (read-only, it views the file's bytes).
    """
    data = _read_bytes(path, name)
    ndim = magic & 0xFF
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    if len(data) < 4:
        raise KdbenchError(
            f"dataset '{name}': {path} is {len(data)} bytes, too short for an IDX header; "
            "download it again"
        )
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise KdbenchError(
            f"dataset '{name}': {path} has magic number 0x{found:08X}, expected 0x{magic:08X} "
            f"(IDX {kind}: unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''}); "
            "is it the right file, and fully downloaded?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise KdbenchError(
            f"dataset '{name}': {path} is truncated inside its header "
            f"({len(data)} bytes, the header alone is {header}); download it again"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    size = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != size:
        shape = "x".join(str(d) for d in dims)
        problem = "truncated" if len(data) < size else "longer than its header says"
        raise KdbenchError(
            f"dataset '{name}': {path} holds {len(data)} bytes but its header ({kind} {shape}) "
            f"implies {size}: the file is {problem}; download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _resolve_folder(name: str, path: Path) -> Path:
    """The folder holding the files: ``path`` itself, or torchvision's raw/ below it."""
    candidates = [path, path / "raw", path / _TORCHVISION_DIR[name] / "raw"]
    for folder in candidates:
        if any(_find(folder, stem) for stem in FILES.values()):
            return folder
    return path


def load_idx_folder(name: str, path: str | Path) -> RawData:
    """MNIST-format train and test splits from the folder ``path``.

    Accepts the folder holding the four files, or a torchvision root
    (``<path>/raw`` or ``<path>/MNIST/raw``, ``FashionMNIST/raw``).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise KdbenchError(
            f"{_expected(name)} in the folder given as data.path or --data-dir, but {root} {what}"
        )
    folder = _resolve_folder(name, root)
    found = {role: _find(folder, stem) for role, stem in FILES.items()}
    missing = [stem for role, stem in FILES.items() if found[role] is None]
    if missing:
        names = "; ".join(f"{folder / s} (or {folder / s}.gz)" for s in missing)
        raise KdbenchError(
            f"dataset '{name}': missing {names}; the folder given as data.path or --data-dir "
            f"must hold {', '.join(FILES.values())}, each plain or .gz"
        )
    paths = {role: p for role, p in found.items() if p is not None}
    arrays = {}
    for role, file in paths.items():
        magic = IMAGES_MAGIC if role.endswith("images") else LABELS_MAGIC
        arrays[role] = read_idx(file, magic, name=name)
    for split in ("train", "test"):
        images, labels = arrays[f"{split} images"], arrays[f"{split} labels"]
        img_path, lbl_path = paths[f"{split} images"], paths[f"{split} labels"]
        if images.shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
            rows, cols = images.shape[1:]
            raise KdbenchError(
                f"dataset '{name}': {img_path} holds {rows}x{cols} images, expected "
                f"{_IMAGE_SIDE}x{_IMAGE_SIDE}; is it an MNIST-format file?"
            )
        if images.shape[0] != labels.shape[0]:
            raise KdbenchError(
                f"dataset '{name}': {img_path} holds {images.shape[0]} images but {lbl_path} "
                f"holds {labels.shape[0]} labels; the two files must come from the same download"
            )
        if labels.size and int(labels.max()) >= _CLASSES:
            raise KdbenchError(
                f"dataset '{name}': {lbl_path} holds label {int(labels.max())}, expected 0..9; "
                "is it a labels file of this dataset?"
            )
    return RawData(
        x=arrays["train images"][..., None],
        y=arrays["train labels"],
        x_test=arrays["test images"][..., None],
        y_test=arrays["test labels"],
        scale=255.0,
        source=str(folder),
    )
