"""Read untrusted pickles (the authors' Python-2 data files) without running any code they contain.

`pickle.load` calls whatever callable a file names, so a crafted file runs `os.system` as easily as it rebuilds a
list. `load_pickle` resolves every global through an allow-list instead: plain containers, strings and numbers, and
the few numpy callables that rebuild arrays, dtypes and scalars. Any other global is refused before it is looked up,
so nothing the file names is ever called.

Python-2 pickles (cPickle) store `str` as 8-bit byte strings: they are read with `encoding="latin1"`, which maps
every byte to one character, so numpy gets its raw array bytes back unchanged; `py2_text` turns such a string back
into the text it was (UTF-8 in the original files, latin-1 when it is not valid UTF-8).
"""

from __future__ import annotations

import builtins
import codecs
import collections
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from vidcap.errors import UsageError

try:  # numpy >= 2 moved numpy.core to numpy._core; files written by either (or by Python 2) name either
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

_BUILTINS = {name: getattr(builtins, name) for name in (
    "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "complex", "bool",
)}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stands in for `_codecs.encode`, which Python 3 uses to pickle bytes at protocols 0-2: only latin-1."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} (only latin-1 rebuilds bytes)")
    return text.encode("latin-1")


_NUMPY = {"_reconstruct": _multiarray._reconstruct, "scalar": _multiarray.scalar}
ALLOWED: dict[tuple[str, str], Any] = {
    **{(module, name): obj for module in ("builtins", "__builtin__") for name, obj in _BUILTINS.items()},
    **{(f"numpy.{core}.multiarray", name): obj for core in ("core", "_core") for name, obj in _NUMPY.items()},
    # numpy's protocol-5 form of an array: frombuffer(data, dtype).reshape(shape)
    **{(f"numpy.{core}.numeric", "_frombuffer"): _numeric._frombuffer for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
}


class _Refused(Exception):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose globals come from ALLOWED only; anything else raises before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not supported")


def load_pickle(path: str | os.PathLike) -> Any:
    """The object in the pickle at `path`, built from containers, strings, numbers and numpy arrays only.

    Raises UsageError (one line naming the file) for a missing or unreadable file, a truncated or corrupt pickle,
    and a pickle that names any other global (e.g. `os.system`): then nothing it names has been called.
    """
    path = Path(path)
    try:
        # Read from the file, not from its bytes in memory: the feature pickle alone holds gigabytes.
        with path.open("rb") as handle:
            return RestrictedUnpickler(handle, encoding="latin1").load()
    except FileNotFoundError:
        raise UsageError(f"{path}: not found") from None
    except _Refused as refused:
        raise UsageError(
            f"refused: {path} wants to load {refused}; only containers, strings, numbers and numpy arrays are allowed"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, struct.error, UnicodeError, MemoryError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise UsageError(f"{path}: truncated or corrupt pickle ({reason})") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot read it: {error.strerror or error}") from None


def py2_text(value: str) -> str:
    """A Python-2 byte string read as latin-1 -> its text: UTF-8 if its bytes are valid UTF-8, else as read."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:  # not 8-bit (a Python-2 unicode object) or not UTF-8: keep it as it is
        return value
