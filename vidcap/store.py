"""The feature store `vidcap extract` writes and training, evaluation and captioning read (docs/formats.md).

Layout: `FEATS/meta.json` (how the features were made), `FEATS/features/<video_id>.npz` with `global` (T, Dg),
`local` (T, Dl), `mask` (T,) bool and `times` (T,) float32 seconds, `FEATS/failed/<video_id>.txt` (one small file per
video that could not be decoded) and `FEATS/manifest.csv` (rebuilt from both folders). Every file is written through
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
from vidcap.video import SAMPLING_RULE

logger = logging.getLogger(__name__)

FORMAT = 1
KINDS = ("global", "local")


def features_dir(store: str | os.PathLike) -> Path:
    return Path(store) / "features"


def feature_path(store: str | os.PathLike, video_id: str) -> Path:
    return features_dir(store) / f"{video_id}.npz"


def failed_path(store: str | os.PathLike, video_id: str) -> Path:
    return Path(store) / "failed" / f"{video_id}.txt"


def check_video_id(video_id: str) -> None:
    """Video ids become file names: refuse ones that would escape the folder or hide as temp files."""
    if not video_id or "/" in video_id or "\\" in video_id or "\0" in video_id or video_id.startswith("."):
        raise UsageError(f"video id {video_id!r} cannot be a file name (no '/', '\\', leading '.', or empty)")


# --------------------------------------------------------------------------------------------------------------------
# Feature files


def save_features(store: str | os.PathLike, video_id: str, arrays: Mapping[str, np.ndarray], dtype="float16") -> Path:
    """Write one video's arrays atomically; feature arrays are cast to `dtype`, mask stays bool, times float32."""
    cast = {
        key: (np.asarray(value, dtype=dtype) if key in KINDS else np.asarray(value))
        for key, value in arrays.items()
    }
    return atomic.write_with(feature_path(store, video_id), lambda handle: np.savez(handle, **cast))


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
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable meta.json ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else "?"
        raise UsageError(f"{path}: feature store format {found} is not {FORMAT}")
    return meta


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
    for folder in (store, features_dir(store), store / "failed"):
        folder.mkdir(parents=True, exist_ok=True)
    meta_path = store / "meta.json"
    if not meta_path.exists():
        write_meta(store, meta)
        return
    old = read_meta(store)
    diffs = _meta_differences(comparable_meta(old), comparable_meta(meta))
    if diffs:
        raise UsageError(
            f"{meta_path}: this store holds other features ({'; '.join(diffs[:3])}); use another --out folder "
            "or the same settings (features must not be mixed)"
        )
    if old.get("versions") != meta.get("versions"):
        logger.warning("%s: library versions differ from the run that created this store", meta_path)


# --------------------------------------------------------------------------------------------------------------------
# Failures, the manifest, temp files


def record_failure(store: str | os.PathLike, video_id: str, path: str, reason: str) -> None:
    atomic.write_text(failed_path(store, video_id), f"{reason}\n{path}\n")


def read_failures(store: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """{video_id: (reason, path)} from failed/*.txt."""
    out = {}
    folder = Path(store) / "failed"
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.endswith(".txt") and not p.name.startswith("."):
                lines = p.read_text(encoding="utf-8", errors="replace").splitlines() + ["", ""]
                out[p.name[: -len(".txt")]] = (lines[0], lines[1])
    return out


def write_manifest(store: str | os.PathLike) -> tuple[int, int]:
    """Rebuild manifest.csv (video_id,status,error) from features/ and failed/; returns (ok, failed) counts."""
    ok = list_features(store)
    ok_set = set(ok)
    failures = {vid: reason for vid, (reason, _) in read_failures(store).items() if vid not in ok_set}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["video_id", "status", "error"])
    rows = [(vid, "ok", "") for vid in ok] + [(vid, "failed", reason) for vid, reason in failures.items()]
    writer.writerows(sorted(rows))
    atomic.write_text(Path(store) / "manifest.csv", buffer.getvalue())
    return len(ok), len(failures)


def clean_temp_files(store: str | os.PathLike) -> int:
    """Delete the temp files killed writers left in the store (vidcap.atomic.remove_stale); returns how many."""
    store = Path(store)
    removed = sum(atomic.remove_stale(folder) for folder in (store, features_dir(store), store / "failed"))
    if removed:
        logger.info("%s: removed %d temp file(s) left by interrupted runs", store, removed)
    return removed
