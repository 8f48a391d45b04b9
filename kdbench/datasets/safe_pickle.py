"""Unpickling CIFAR's python-version archives without trusting them.

Unpickling can run any callable named in the file, so a doctored download
could execute code; the unpickler here admits only the few globals these
files need (numpy's array reconstruction, ``_codecs.encode`` with latin1,
which protocol-2 pickles written from Python 3 use for bytes, and numpy's
``_frombuffer``, which protocol-5 pickles use) and refuses the rest.

Admitted globals are wrapped, never the numpy callables themselves, so that a
small file cannot make them allocate much: an array's shape, dtype and size
are checked against the bytes the file actually supplies for it before numpy
builds it (``_reconstruct`` may only start an empty array, which only a
checked ``__setstate__`` fills; ``numpy.ndarray`` cannot be called), and all
arrays of one file together may not hold more bytes than the file has (a
memoized string reused by many arrays is refused).
"""

from __future__ import annotations

import codecs
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kdbench.errors import KdbenchError

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

# (module, name) -> what it resolves to (see RestrictedUnpickler.find_class).
# numpy 1 wrote numpy.core, numpy 2 writes numpy._core. Nothing else is importable.
_ALLOWED: dict[tuple[str, str], str] = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",
}
_LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1")
_MAX_NDIM = 4  # CIFAR arrays have 1 (labels) or 2 (data) dimensions


def _refusal(dataset: str, source: str, problem: str) -> KdbenchError:
    return KdbenchError(
        f"dataset '{dataset}': {source} {problem}; the file may have been tampered with, "
        f"download it again from {URL}"
    )


class _NdarrayToken:
    """What ``numpy.ndarray`` resolves to: the subtype argument of ``_reconstruct`` only.

    Calling the real class would allocate any shape the file names.
    """

    def __init__(self, refuse: Callable[[str], KdbenchError]) -> None:
        self._refuse = refuse

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse(
            "calls numpy.ndarray directly, which numpy's own pickles never do "
            "(arrays are built by _reconstruct or _frombuffer)"
        )


class _Guard:
    """The checks of one file: its name, and the array bytes it may still supply."""

    def __init__(self, dataset: str, source: str, size: int) -> None:
        self.dataset = dataset
        self.source = source
        self.size = size
        # What may still be made from the file's bytes: array data, and bytes made by
        # _codecs.encode (which protocol-2 arrays are then built from). A legitimate
        # file supplies each byte once, so neither ever exceeds the file's size; a
        # file that reuses one memoized string many times does.
        self.array_budget = size
        self.encode_budget = size

    def refuse(self, problem: str) -> KdbenchError:
        return _refusal(self.dataset, self.source, problem)

    def dtype(self, dtype: Any) -> np.dtype:
        """Plain integers only: uint8 pixels, integer labels; no fields, subarrays or objects."""
        ok = (
            isinstance(dtype, np.dtype)
            and dtype.kind in "iu"
            and dtype.fields is None
            and dtype.subdtype is None
            and dtype.itemsize in (1, 2, 4, 8)
        )
        if not ok:
            what = str(dtype) if isinstance(dtype, np.dtype) else _short(dtype)
            raise self.refuse(
                f"holds a {what} array, expected uint8 data or integer labels (dtype u1 or int)"
            )
        return dtype

    def shape(self, shape: Any) -> tuple[int, ...]:
        ok = (
            isinstance(shape, tuple)
            and 1 <= len(shape) <= _MAX_NDIM
            and all(type(d) is int and d >= 0 for d in shape)
        )
        if not ok:
            raise self.refuse(f"declares a numpy array of shape {_short(shape)}")
        return shape

    def charge(self, shape: tuple[int, ...], dtype: np.dtype, supplied: int) -> None:
        """The declared size must equal the bytes supplied, and fit in what is left."""
        declared = dtype.itemsize
        for d in shape:
            declared *= d
        if declared != supplied:
            raise self.refuse(
                f"declares a numpy array of shape {shape} {dtype} ({declared} bytes) "
                f"but supplies {supplied} bytes for it"
            )
        if declared > self.array_budget:
            raise self.refuse(
                f"builds more array data than the file holds ({self.size} bytes): its arrays "
                f"reuse the same bytes (refused at an array of shape {shape} {dtype})"
            )
        self.array_budget -= declared

    def encoded(self, size: int) -> None:
        if size > self.encode_budget:
            raise self.refuse(
                f"makes more bytes with _codecs.encode than the file holds ({self.size} bytes): "
                "it encodes the same string again and again"
            )
        self.encode_budget -= size


def _short(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


class _GuardedArray(np.ndarray):
    """An array the unpickler made: ``__setstate__`` (the BUILD opcode) checks first.

    Only an array fresh from ``_reconstruct`` may be filled, once; every
    other BUILD on an array is refused. Callers view the results as plain
    ndarrays (``np.asarray``).
    """

    def __setstate__(self, state: Any) -> None:
        guard = self.__dict__["_guard"]  # set by the unpickler's wrappers, the only makers
        if not self.__dict__.pop("_fillable", False):
            raise guard.refuse("sets the state of a numpy array that was already built")
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise guard.refuse(f"holds a numpy array state {_short(state)}")
        shape, dtype, _fortran, raw = state[-4:]
        shape, dtype = guard.shape(shape), guard.dtype(dtype)
        if not isinstance(raw, bytes):
            raise guard.refuse(
                f"holds a numpy array of shape {shape} whose data is a "
                f"{type(raw).__name__}, not bytes"
            )
        guard.charge(shape, dtype, len(raw))
        super().__setstate__(state)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals CIFAR files are made of, each checked."""

    def __init__(self, file: Any, *, source: str, dataset: str, size: int) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source
        self._dataset = dataset
        self._guard = _Guard(dataset, source, size)
        guard = self._guard

        def reconstruct(subtype: Any, shape: Any, _dtype: Any) -> _GuardedArray:
            if not isinstance(subtype, _NdarrayToken):
                raise guard.refuse(f"reconstructs an array of type {_short(subtype)}")
            dims = guard.shape(shape)
            if 0 not in dims:
                raise guard.refuse(
                    f"declares a numpy array of shape {dims} without the data for it "
                    "(numpy's pickles start every array empty and then fill it)"
                )
            array = np.ndarray.__new__(_GuardedArray, (0,), np.uint8)
            array.__dict__.update(_guard=guard, _fillable=True)
            return array

        def frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
            if not isinstance(buffer, (bytes, bytearray)):
                raise guard.refuse(
                    f"holds a protocol-5 array whose data is a {type(buffer).__name__}, not bytes"
                )
            dims, kind = guard.shape(shape), guard.dtype(dtype)
            if order not in ("C", "F"):
                raise guard.refuse(f"holds a protocol-5 array of order {_short(order)}")
            guard.charge(dims, kind, len(buffer))
            array = np.frombuffer(buffer, dtype=kind).reshape(dims, order=order)
            guarded = array.view(_GuardedArray)
            guarded.__dict__["_guard"] = guard  # not fillable: a later BUILD is refused
            return guarded

        def encode(text: Any, encoding: Any = "utf-8", *_: Any) -> bytes:
            if not (isinstance(text, str) and encoding in _LATIN1):
                raise guard.refuse(
                    f"calls _codecs.encode with {_short(encoding)}; Python 3 pickles "
                    "use it only with latin1 for bytes"
                )
            guard.encoded(len(text))
            return codecs.encode(text, "latin1")

        self._resolved: dict[str, Any] = {
            "reconstruct": reconstruct,
            "frombuffer": frombuffer,
            "ndarray": _NdarrayToken(guard.refuse),
            "dtype": np.dtype,
            "encode": encode,
        }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._resolved[_ALLOWED[(module, name)]]
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
            size = os.fstat(f.fileno()).st_size
            return RestrictedUnpickler(f, source=str(path), dataset=dataset, size=size).load()
    except KdbenchError:
        raise
    except OSError as err:
        raise KdbenchError(f"dataset '{dataset}': cannot read {path}: {err.strerror}") from err
    except MemoryError:
        raise KdbenchError(
            f"dataset '{dataset}': {path} needs more memory to unpickle than this process can "
            "allocate"
        ) from None
    except Exception as err:  # a damaged pickle can raise almost anything
        raise KdbenchError(
            f"dataset '{dataset}': {path} is not a readable CIFAR pickle "
            f"({type(err).__name__}: {_one_line(str(err))}); download it again from {URL}"
        ) from err
