"""MNIST and Fashion-MNIST from their IDX files, checked before they are trusted.

The IDX format (yann.lecun.com/exdb/mnist) is a big-endian header followed by
raw bytes: two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, one uint32 per dimension, then the data. A truncated download or
a file of the wrong kind must fail here with a message that names the file,
not later as a reshape error deep inside a backend.

The files are untrusted input, so what a header declares is checked against
what the file can hold before anything is allocated: a plain file's size must
equal header plus payload exactly; a gzip file is decompressed as a stream,
the header first, and never past the declared payload plus one byte (which
tells an over-long stream), after checking that its compressed size could
hold the declared payload at all (deflate expands by at most 1032x). The
payload of a gzip file is read in chunks, so a header that promises more
than the stream delivers costs only what the stream delivers. The four
headers are read and compared (image side, image and label counts) before
any payload is read.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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

# Deflate's largest expansion: a 258-byte match costs at least 2 bits, so one
# compressed byte never yields more than 1032 bytes (zlib's own bound).
DEFLATE_MAX_RATIO = 1032
_CHUNK = 1 << 20  # gzip payloads are read this much at a time
_GZIP_ERRORS = (OSError, EOFError, zlib.error)


def _expected(name: str) -> str:
    files = ", ".join(FILES.values())
    return f"dataset '{name}' needs the four IDX files {files} (each plain or .gz)"


@dataclass(frozen=True)
class IdxHeader:
    """What an IDX file declares, checked against what the file can hold."""

    path: Path
    magic: int
    dims: tuple[int, ...]
    gz: bool  # gzip by content, whatever the file's name
    file_size: int  # bytes on disk (compressed, for gzip)

    @property
    def kind(self) -> str:
        return "images" if self.magic == IMAGES_MAGIC else "labels"

    @property
    def header_size(self) -> int:
        return 4 + 4 * len(self.dims)

    @property
    def payload(self) -> int:
        """The data bytes the header declares (Python int: no overflow)."""
        total = 1
        for d in self.dims:
            total *= d
        return total

    @property
    def shape(self) -> str:
        return "x".join(str(d) for d in self.dims)

    def declares(self) -> str:
        return f"its header ({self.kind} {self.shape}) implies {self.header_size + self.payload}"


@contextlib.contextmanager
def _open(path: Path, name: str) -> Iterator[tuple[BinaryIO, bool, int]]:
    """(stream of the IDX bytes, gzip?, size on disk); gzip is recognised by content."""
    try:
        raw = path.open("rb")
    except OSError as err:
        raise KdbenchError(f"dataset '{name}': cannot read {path}: {err.strerror}") from err
    with raw:
        try:
            size = os.fstat(raw.fileno()).st_size
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
        except OSError as err:
            raise KdbenchError(f"dataset '{name}': cannot read {path}: {err.strerror}") from err
        if not gz:
            yield raw, False, size
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            yield stream, True, size


def _damaged(path: Path, name: str, err: BaseException) -> KdbenchError:
    return KdbenchError(
        f"dataset '{name}': {path} is a damaged gzip file ({' '.join(str(err).split())}); "
        "download it again or replace it with the uncompressed file"
    )


def _read_up_to(stream: BinaryIO, count: int, path: Path, name: str, gz: bool) -> bytes:
    """Up to ``count`` bytes (fewer only at the end of the file)."""
    try:
        return stream.read(count)
    except _GZIP_ERRORS as err:
        if gz:
            raise _damaged(path, name, err) from err
        raise KdbenchError(f"dataset '{name}': cannot read {path}: {err}") from err


def _parse_header(
    stream: BinaryIO, path: Path, magic: int, name: str, gz: bool, size: int
) -> IdxHeader:
    ndim = magic & 0xFF
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    holds = "decompresses to" if gz else "is"
    head = _read_up_to(stream, 4, path, name, gz)
    if len(head) < 4:
        raise KdbenchError(
            f"dataset '{name}': {path} {holds} {len(head)} bytes, too short for an IDX header; "
            "download it again"
        )
    (found,) = struct.unpack(">I", head)
    if found != magic:
        raise KdbenchError(
            f"dataset '{name}': {path} has magic number 0x{found:08X}, expected 0x{magic:08X} "
            f"(IDX {kind}: unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''}); "
            "is it the right file, and fully downloaded?"
        )
    rest = _read_up_to(stream, 4 * ndim, path, name, gz)
    if len(rest) < 4 * ndim:
        raise KdbenchError(
            f"dataset '{name}': {path} is truncated inside its header "
            f"({4 + len(rest)} bytes, the header alone is {4 + 4 * ndim}); download it again"
        )
    header = IdxHeader(path, magic, struct.unpack(f">{ndim}I", rest), gz, size)
    total = header.header_size + header.payload
    if not gz and size != total:
        problem = "truncated" if size < total else "longer than its header says"
        raise KdbenchError(
            f"dataset '{name}': {path} holds {size} bytes but {header.declares()}: "
            f"the file is {problem}; download it again"
        )
    if gz and total > DEFLATE_MAX_RATIO * size:
        raise KdbenchError(
            f"dataset '{name}': {path} is {size} bytes of gzip, which cannot hold the {total} "
            f"bytes that its header ({kind} {header.shape}) declares (deflate expands at most "
            f"{DEFLATE_MAX_RATIO}x): the header is wrong; download it again"
        )
    return header


def read_header(path: Path, magic: int, *, name: str = "idx") -> IdxHeader:
    """The header of one IDX file, checked against the file's size; reads no payload."""
    with _open(path, name) as (stream, gz, size):
        return _parse_header(stream, path, magic, name, gz, size)


def _out_of_memory(header: IdxHeader, name: str) -> KdbenchError:
    return KdbenchError(
        f"dataset '{name}': {header.path} holds {header.kind} {header.shape} "
        f"({header.payload} bytes), more memory than this process can allocate"
    )


def _read_gzip_payload(stream: BinaryIO, header: IdxHeader, name: str) -> np.ndarray:
    """Exactly the declared payload, read in chunks; never more than one byte past it."""
    want = header.payload + 1
    data = bytearray()
    while len(data) < want:
        chunk = _read_up_to(stream, min(_CHUNK, want - len(data)), header.path, name, True)
        if not chunk:
            break
        data += chunk
    if len(data) != header.payload:
        total = header.header_size + header.payload
        if len(data) < header.payload:
            got = header.header_size + len(data)
            raise KdbenchError(
                f"dataset '{name}': {header.path} decompresses to {got} bytes but "
                f"{header.declares()}: the file is truncated; download it again"
            )
        raise KdbenchError(
            f"dataset '{name}': {header.path} decompresses to more than the {total} bytes "
            f"that its header ({header.kind} {header.shape}) implies: the file is longer "
            "than its header says; download it again"
        )
    return np.frombuffer(data, dtype=np.uint8)


def _read_plain_payload(stream: BinaryIO, header: IdxHeader, name: str) -> np.ndarray:
    """The payload into one array of the size the header declares (checked against the file)."""
    array = np.empty(header.payload, dtype=np.uint8)
    view = memoryview(array)
    done = 0
    while done < header.payload:
        try:
            n = stream.readinto(view[done:])  # type: ignore[attr-defined]
        except OSError as err:
            raise KdbenchError(f"dataset '{name}': cannot read {header.path}: {err}") from err
        if not n:
            raise KdbenchError(
                f"dataset '{name}': {header.path} ended after {header.header_size + done} bytes "
                f"but {header.declares()}: the file is truncated (did it change while read?)"
            )
        done += n
    if stream.read(1):
        raise KdbenchError(
            f"dataset '{name}': {header.path} grew while it was read: it is longer than "
            "its header says; download it again"
        )
    return array


def read_idx(path: Path, magic: int, *, name: str = "idx") -> np.ndarray:
    """Read one IDX file of unsigned bytes, checking magic number and size.

    ``magic`` is IMAGES_MAGIC or LABELS_MAGIC; the returned uint8 array has the
    header's dimensions. The header is checked (read_header) before the
    payload is allocated, and the payload is never read past its declared size.
    """
    with _open(path, name) as (stream, gz, size):
        header = _parse_header(stream, path, magic, name, gz, size)
        try:
            if gz:
                flat = _read_gzip_payload(stream, header, name)
            else:
                flat = _read_plain_payload(stream, header, name)
        except MemoryError:
            raise _out_of_memory(header, name) from None
    return flat.reshape(header.dims)


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


def _check_headers(name: str, headers: dict[str, IdxHeader]) -> None:
    """Image side and image/label counts, from the headers alone (nothing is read yet)."""
    for split in ("train", "test"):
        images, labels = headers[f"{split} images"], headers[f"{split} labels"]
        if images.dims[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
            rows, cols = images.dims[1:]
            raise KdbenchError(
                f"dataset '{name}': {images.path} holds {rows}x{cols} images, expected "
                f"{_IMAGE_SIDE}x{_IMAGE_SIDE}; is it an MNIST-format file?"
            )
        if images.dims[0] != labels.dims[0]:
            raise KdbenchError(
                f"dataset '{name}': {images.path} holds {images.dims[0]} images but "
                f"{labels.path} holds {labels.dims[0]} labels; the two files must come from "
                "the same download"
            )


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
    magics = {role: IMAGES_MAGIC if role.endswith("images") else LABELS_MAGIC for role in paths}
    headers = {role: read_header(file, magics[role], name=name) for role, file in paths.items()}
    _check_headers(name, headers)
    arrays = {role: read_idx(file, magics[role], name=name) for role, file in paths.items()}
    for role, array in arrays.items():
        if array.shape != headers[role].dims:  # the file changed between the two reads
            raise KdbenchError(
                f"dataset '{name}': {paths[role]} changed while it was read; try again"
            )
    for split in ("train", "test"):
        labels, lbl_path = arrays[f"{split} labels"], paths[f"{split} labels"]
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
