"""Integrity of a feature store: a checksum per feature file, the full check (`vidcap verify`) and the quick one that
training and evaluation run before their first step.

- `save_features` (vidcap.features.store) records each file's SHA-256 in `FEATS/checksums/<video_id>.sha256`, in
  `sha256sum`'s format (`cd FEATS/features && cat ../checksums/*.sha256 | sha256sum -c` checks them too). The record is
  written before the file it describes: a kill in between leaves no feature file, so the video is extracted again
  and its record rewritten.
- `check_file(..., full=True)`: the file's SHA-256 against its record (a file written before checksums were recorded
  gets the quick check instead). `verify_store` runs it over a store on a thread pool (hashing releases the GIL) and
  lists the bad files and the missing ones (a checksum or manifest "ok" row without its file).
- `check_file(..., full=False)`, the quick check: the zip directory and each array's .npy header (names, shapes,
  dtypes) against meta.json, reading a few hundred bytes per file; `quick_check` runs it over the files a training
  or evaluation run will read.

The functions take the store's folder and a video id: another store layout provides the same few functions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidcap import atomic

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


def checksum_path(store: str | os.PathLike, video_id: str) -> Path:
    return Path(store) / "checksums" / f"{video_id}.sha256"



def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_checksum(store: str | os.PathLike, video_id: str, digest: str) -> None:
    """checksums/<video_id>.sha256: `<hex>  <video_id>.npz`, as sha256sum writes it."""
    path = checksum_path(store, video_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, f"{digest}  {video_id}.npz\n")


def recorded_checksum(store: str | os.PathLike, video_id: str) -> str | None:
    """The SHA-256 recorded for a video's feature file (None: none recorded, or an unreadable record)."""
    try:
        text = checksum_path(store, video_id).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    digest = text.split(maxsplit=1)[0] if text.strip() else ""
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None


def recorded_ids(store: str | os.PathLike) -> list[str]:
    """Video ids with a checksum record."""
    folder = Path(store) / "checksums"
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".sha256")] for p in folder.iterdir()
                  if p.name.endswith(".sha256") and not p.name.startswith("."))


# --------------------------------------------------------------------------------------------------------------------
# The checks


def expected_arrays(meta: Mapping[str, Any]) -> dict[str, tuple[int | None, str | None]]:
    """{array name: (width, dtype)} a feature file of this store holds (width None: a (T,) array)."""
    dtype = meta.get("dtype")
    arrays: dict[str, tuple[int | None, str | None]] = {}
    for kind in ("global", "local"):
        desc = meta.get(kind)
        if isinstance(desc, dict):
            arrays[kind] = (int(desc["dim"]) if desc.get("dim") is not None else None, dtype)
    return {**arrays, "mask": (None, "bool"), "times": (None, None)}


def _npy_header(archive: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    with archive.open(name) as member:
        version = np.lib.format.read_magic(member)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = reader(member)
    return shape, dtype


def header_problem(path: Path, meta: Mapping[str, Any]) -> str | None:
    """The quick check of one .npz: None when its arrays are those of meta.json with consistent shapes."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with zipfile.ZipFile(path) as archive:
            names = {info.filename[: -len(".npy")]: info for info in archive.infolist() if info.filename.endswith(".npy")}
            expected = expected_arrays(meta)
            missing = [name for name in expected if name not in names and name != "times"]
            if missing:
                return f"no array {', '.join(missing)} (has {', '.join(sorted(names)) or 'none'})"
            frames = None
            for name, (width, dtype) in expected.items():
                if name not in names:
                    continue
                shape, found = _npy_header(archive, names[name].filename)
                rows = shape[0] if shape else None
                if frames is None:
                    frames = rows
                elif rows != frames:
                    return f"{name} has {rows} frames, not {frames}"
                if width is not None and (len(shape) != 2 or shape[1] != width):
                    return f"{name} is {'x'.join(map(str, shape))}, meta.json says width {width}"
                if width is None and len(shape) != 1:
                    return f"{name} is {'x'.join(map(str, shape))}, not one value a frame"
                if dtype is not None and found != np.dtype(dtype):
                    return f"{name} is {found}, meta.json says {dtype}"
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        return f"unreadable ({' '.join(str(error).split())[:120]})"
    return None


def check_file(store: str | os.PathLike, video_id: str, meta: Mapping[str, Any], full: bool) -> str | None:
    """None when the feature file of `video_id` is good; else the reason. full: compare its SHA-256 with the record
    (files without a record get the quick check); otherwise the quick check only."""
    from vidcap.features.store import feature_path

    path = feature_path(store, video_id)
    if not path.is_file():
        return "missing"
    if full:
        expected = recorded_checksum(store, video_id)
        if expected is not None:
            try:
                found = sha256_file(path)
            except OSError as error:
                return f"unreadable ({error.strerror})"
            return None if found == expected else "checksum mismatch (corrupt or changed since it was written)"
    return header_problem(path, meta)


@dataclass
class VerifyReport:
    """What a check of a store found. checked: files checked; bad: {video_id: reason}; missing: video ids with a
    checksum or an "ok" manifest row but no file; unrecorded: files without a checksum (quick-checked only)."""

    checked: int
    bad: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unrecorded: int = 0

    @property
    def ok(self) -> bool:
        return not self.bad and not self.missing


def _parallel(check: Callable[[str], str | None], ids: Sequence[str], workers: int | None,
              progress: Callable[[int], None] | None) -> dict[str, str]:
    bad: dict[str, str] = {}
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for video_id, problem in zip(ids, pool.map(check, ids), strict=True):
            if problem is not None:
                bad[video_id] = problem
            if progress is not None:
                progress(1)
    return bad


def verify_store(store: str | os.PathLike, *, full: bool = True, workers: int | None = None,
                 progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check every feature file of a store (see the module docstring); `progress(n)` is called as files are done."""
    from vidcap.features.store import feature_path, list_features, manifest_ok_ids, read_meta

    meta = read_meta(store)
    present = list_features(store)
    expected = set(recorded_ids(store)) | set(manifest_ok_ids(store))
    missing = sorted(vid for vid in expected if not feature_path(store, vid).exists())
    bad = _parallel(lambda vid: check_file(store, vid, meta, full), present, workers, progress)
    recorded = set(recorded_ids(store))
    return VerifyReport(len(present), bad, missing, sum(1 for vid in present if vid not in recorded))


def quick_check(store: str | os.PathLike, ids: Iterable[str], meta: Mapping[str, Any],
                workers: int | None = None) -> dict[str, str]:
    """{video_id: reason} of the files among `ids` that fail the quick check (headers against meta.json)."""
    ids = list(ids)
    return _parallel(lambda vid: check_file(store, vid, meta, full=False), ids, workers, None)


def failing_files(store: str | os.PathLike, ids: Iterable[str], meta: Mapping[str, Any],
                  workers: int | None = None) -> dict[str, str]:
    """{video_id: reason} of the files among `ids` that fail the full check (their SHA-256, or the quick check for
    files without a record): what `vidcap extract` extracts again."""
    return _parallel(lambda vid: check_file(store, vid, meta, full=True), list(ids), workers, None)


__all__ = [
    "VerifyReport",
    "check_file",
    "checksum_path",
    "failing_files",
    "header_problem",
    "quick_check",
    "record_checksum",
    "recorded_checksum",
    "sha256_file",
    "verify_store",
]
