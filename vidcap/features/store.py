"""The feature store `vidcap extract` writes and training, evaluation and captioning read (docs/formats.md).

Layout: `FEATS/meta.json` (how the features were made), `FEATS/features/<video_id>.npz` with `global` (T, Dg),
`local` (T, Dl), `mask` (T,) bool and `times` (T,) float32 seconds, `FEATS/writers/<video_id>.txt` (which process
wrote it, "host:rank"), `FEATS/failed/<video_id>.txt` (one small file per video that could not be decoded) and
`FEATS/manifest.csv` (rebuilt from these folders), `FEATS/checksums/<video_id>.sha256` (each feature file's SHA-256,
recorded as it is written: vidcap.features.integrity). Every file is written through
vidcap.atomic, so a reader, or a writer killed at any moment, never leaves half a file under a final name; several
processes or machines can share one store because nothing is ever appended to.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vidcap import atomic
from vidcap.errors import UsageError
from vidcap.features import integrity
from vidcap.video.reader import SAMPLING_RULE

logger = logging.getLogger(__name__)

FORMAT = 1
KINDS = ("global", "local")


def features_dir(store: str | os.PathLike) -> Path:
    return Path(store) / "features"


def feature_path(store: str | os.PathLike, video_id: str) -> Path:
    return features_dir(store) / f"{video_id}.npz"


def failed_path(store: str | os.PathLike, video_id: str) -> Path:
    return Path(store) / "failed" / f"{video_id}.txt"


def writer_path(store: str | os.PathLike, video_id: str) -> Path:
    return Path(store) / "writers" / f"{video_id}.txt"


def check_video_id(video_id: str) -> None:
    """Video ids become file names: refuse ones that would escape the folder or hide as temp files."""
    if not video_id or "/" in video_id or "\\" in video_id or "\0" in video_id or video_id.startswith("."):
        raise UsageError(f"video id {video_id!r} cannot be a file name (no '/', '\\', leading '.', or empty)")


# --------------------------------------------------------------------------------------------------------------------
# Feature files


def save_features(store: str | os.PathLike, video_id: str, arrays: Mapping[str, np.ndarray], dtype="float16",
                  writer: str | None = None) -> Path:
    """Write one video's arrays atomically; feature arrays are cast to `dtype`, mask stays bool, times float32.
    writer: the process writing it ("host:rank"), recorded in writers/ for manifest.csv."""
    cast = {
        key: (np.asarray(value, dtype=dtype) if key in KINDS else np.asarray(value))
        for key, value in arrays.items()
    }
    # The records before the features: a kill in between leaves no features, so the video is extracted again and
    # its records rewritten; a feature file never outlives the record of another writer, or another file's checksum.
    if writer is not None:
        atomic.write_text(writer_path(store, video_id), f"{writer}\n")
    path = feature_path(store, video_id)
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **cast)
        integrity.record_checksum(store, video_id, integrity.sha256_file(tmp))  # read back from the page cache
    return path


def load_features(store: str | os.PathLike, video_id: str) -> dict[str, np.ndarray]:
    """{"global": (T, Dg), "local": (T, Dl) (those extracted), "mask": (T,) bool, "times": (T,) float32}."""
    path = feature_path(store, video_id)
    if not path.is_file():
        raise UsageError(f"{path}: no features for video {video_id!r} (run `vidcap extract`)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{path}: corrupt feature file ({' '.join(str(exc).split())})") from exc


def list_features(store: str | os.PathLike) -> list[str]:
    """Sorted video ids that have a feature file in the store."""
    folder = features_dir(store)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".npz")] for p in folder.iterdir() if p.name.endswith(".npz") and p.name[0] != ".")


# --------------------------------------------------------------------------------------------------------------------
# meta.json


def read_meta(store: str | os.PathLike) -> dict[str, Any]:
    """The store's meta.json as a dict (UsageError if missing, unreadable or of another format)."""
    path = Path(store) / "meta.json"
    if not path.is_file():
        raise UsageError(f"{path}: not a feature store (no meta.json; run `vidcap extract`)")
    try:
        meta = json.loads(path.read_bytes())  # UTF-8 with or without a BOM, UTF-16/32
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise UsageError(f"{path}: unreadable meta.json ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else "?"
        raise UsageError(f"{path}: feature store format {found!r} is not {FORMAT}")
    problem = _meta_problem(meta)
    if problem:
        raise UsageError(f"{path}: malformed meta.json: {problem}")
    return meta


def _meta_problem(meta: Mapping[str, Any]) -> str | None:
    """What makes a format-1 meta.json unusable by the readers (None: nothing)."""
    def positive_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    if not positive_int(meta.get("num_frames")):
        return f"num_frames {meta.get('num_frames')!r} is not a positive integer"
    if meta.get("dtype") is not None and meta["dtype"] not in ("float16", "float32"):
        return f"dtype {meta['dtype']!r} is not float16 or float32"
    for kind in KINDS:
        desc = meta.get(kind)
        if desc is None:
            continue
        if not isinstance(desc, dict) or not positive_int(desc.get("dim")):
            return f"{kind} must be null or an object with a positive integer dim, got {desc!r:.80}"
    for key in ("sampling", "compute", "versions"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"{key} must be an object, got {meta[key]!r:.80}"
    return None


def write_meta(store: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    atomic.write_text(Path(store) / "meta.json", json.dumps(meta, indent=2) + "\n")


def sampling_of(meta: Mapping[str, Any]) -> dict[str, Any]:
    """meta["sampling"]: {"rule", "num_frames"}. Stores written before it was recorded used SAMPLING_RULE."""
    return dict(meta.get("sampling") or {"rule": SAMPLING_RULE, "num_frames": meta.get("num_frames")})


def comparable_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The part of meta.json that must match to add features to a store: everything but library versions; a weights
    file counts by its sha256, not its path (machines sharing a store may mount it elsewhere)."""
    out = copy.deepcopy({k: v for k, v in meta.items() if k != "versions"})
    out["sampling"] = sampling_of(meta)
    compute = out.pop("compute", None)
    if isinstance(compute, dict):
        # Precision and TF32 change features by 1e-3 to 1e-2 relative: one store must not mix them. The device alone
        # (float32 on the CPU or on CUDA without TF32) changes them by float rounding only: check_meta warns.
        out["compute"] = {key: compute.get(key) for key in ("precision", "tf32")}
    for kind in KINDS:
        desc = out.get(kind)
        if isinstance(desc, dict) and desc.get("weights") not in ("pretrained", "random") and desc.get("weights_sha256"):
            desc.pop("weights", None)
            desc.pop("weights_source", None)
    return out


def _meta_differences(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _meta_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key} {a!r} != {b!r}")
    return diffs


def prepare_store(store: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Create the folders; write meta.json, or check that an existing one describes the same features."""
    store = Path(store)
    for folder in (store, features_dir(store), store / "failed", store / "writers", store / "checksums"):
        folder.mkdir(parents=True, exist_ok=True)
    if not (store / "meta.json").exists():
        write_meta(store, meta)
        return
    check_meta(store, meta)


def check_meta(store: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """UsageError unless the store's meta.json describes the same features as `meta` (comparable_meta); a warning
    when they are computed on another kind of device, or the store does not record how (issue 17)."""
    meta_path = Path(store) / "meta.json"
    old = read_meta(store)
    before, now = comparable_meta(old), comparable_meta(meta)
    if ("compute" in before) != ("compute" in now):
        before.pop("compute", None)
        now.pop("compute", None)
        logger.warning("%s: does not record the device and precision of its features (an older vidcap wrote it); "
                       "cannot check that new features are computed alike", meta_path)
    diffs = _meta_differences(before, now)
    if diffs:
        raise UsageError(
            f"{meta_path}: this store holds other features ({'; '.join(diffs[:3])}); use another --out folder "
            "or the same settings (features must not be mixed)"
        )
    if old.get("versions") != meta.get("versions"):
        logger.warning("%s: library versions differ from the run that created this store", meta_path)
    devices = [(m.get("compute") or {}).get("device") for m in (old, meta)]
    if None not in devices and devices[0] != devices[1]:
        logger.warning("%s: its features were computed on %s, these on %s, in %s: they differ by float rounding "
                       "(~1e-6 relative)", meta_path, devices[0], devices[1], meta["compute"]["precision"])


# --------------------------------------------------------------------------------------------------------------------
# Failures, the manifest, temp files


def record_failure(store: str | os.PathLike, video_id: str, path: str, reason: str, writer: str = "") -> None:
    """failed/<video_id>.txt: the reason, the video's path and the process that met it ("host:rank"), one a line."""
    atomic.write_text(failed_path(store, video_id), f"{reason}\n{path}\n{writer}\n")


def _text_files(folder: Path) -> dict[str, list[str]]:
    """{name without .txt: its lines} of the .txt files in `folder` ({} when there is no such folder)."""
    if not folder.is_dir():
        return {}
    return {
        p.name[: -len(".txt")]: p.read_text(encoding="utf-8", errors="replace").splitlines()
        for p in folder.iterdir()
        if p.name.endswith(".txt") and not p.name.startswith(".")
    }


def read_failures(store: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """{video_id: (reason, path)} from failed/*.txt."""
    padded = {vid: lines + ["", ""] for vid, lines in _text_files(Path(store) / "failed").items()}
    return {vid: (lines[0], lines[1]) for vid, lines in padded.items()}


def write_manifest(store: str | os.PathLike) -> tuple[int, int]:
    """Rebuild manifest.csv (video_id,status,error,writer) from features/, writers/ and failed/; returns (ok,
    failed) counts. writer: the process that wrote the features or met the failure ("host:rank"; empty for stores
    written before it was recorded)."""
    ok = list_features(store)
    ok_set = set(ok)
    writers = {vid: lines[0] for vid, lines in _text_files(Path(store) / "writers").items() if vid in ok_set and lines}
    failed = {vid: lines + ["", "", ""] for vid, lines in _text_files(Path(store) / "failed").items()
              if vid not in ok_set}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["video_id", "status", "error", "writer"])
    rows = [(vid, "ok", "", writers.get(vid, "")) for vid in ok]
    rows += [(vid, "failed", lines[0], lines[2]) for vid, lines in failed.items()]
    writer.writerows(sorted(rows))
    atomic.write_text(Path(store) / "manifest.csv", buffer.getvalue())
    return len(ok), len(failed)


def manifest_ok_ids(store: str | os.PathLike) -> list[str]:
    """The video ids manifest.csv lists as extracted ("ok"); [] without a readable manifest."""
    path = Path(store) / "manifest.csv"
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return [row["video_id"] for row in csv.DictReader(handle) if row.get("status") == "ok" and row.get("video_id")]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError):
        return []


def clean_temp_files(store: str | os.PathLike) -> int:
    """Delete the temp files killed writers left in the store (vidcap.atomic.remove_stale); returns how many."""
    store = Path(store)
    folders = (store, features_dir(store), store / "failed", store / "writers", store / "checksums")
    removed = sum(atomic.remove_stale(folder) for folder in folders)
    if removed:
        logger.info("%s: removed %d temp file(s) left by interrupted runs", store, removed)
    return removed
