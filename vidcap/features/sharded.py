"""The sharded feature store: many videos per webdataset tar shard, for stores too big for one file per video
(docs/sharded.md).

Layout:
- `FEATS/meta.json`: the per-file store's (vidcap/features/store.py) plus `"layout": "shards"`; a store of one
  layout is refused by the other's writer, as one of other features is.
- `FEATS/shards/<split>-<n:06d>.tar`: a webdataset shard. Sample i of shard n has the key `<n:06d><i:05d>` (numeric,
  as video2dataset writes: webdataset cuts keys at the first dot, and video ids have dots) and two members,
  `KEY.json` ({"video_id", "sha256"}) and `KEY.npz`, the very bytes a per-file store's `<video_id>.npz` holds (the
  same arrays and dtypes). `webdataset.WebDataset(path)` reads it as it is.
- `FEATS/shards/<split>-<n:06d>.idx.json`: the shard's index: its writer ("host:rank"), the tar's size in bytes
  and, per sample, the video id, the key, the offset and size of the `.npz` member inside the tar, and its sha256. Written after the tar: a tar
  without its index is an unfinished shard, whose videos the next run extracts again (resume at shard granularity).
- `FEATS/shards.json`: {shard name: samples}, rebuilt from the indexes at the end of every run. A streaming reader
  reads this file and nothing per sample (vidcap/training/streaming.py).
- `FEATS/failed/<video_id>.txt`, `FEATS/manifest.csv`: as in the per-file store.
Every file goes through vidcap.atomic (temp name, fsync, rename): a killed writer leaves complete shards only.
Shards are never changed once written; `forget` rewrites an index without the samples that failed `verify`, so that
the next `vidcap extract` extracts exactly those again (into a new shard).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vidcap import atomic
from vidcap.errors import UsageError
from vidcap.features import store as fs

logger = logging.getLogger(__name__)

LAYOUT = "shards"
SHARD_SIZE = 1000  # videos per shard: ~1-5 MB of float16 features at K = 26, 1280-d; 70k shards for 70M clips
MISSING = "missing (its index lists it)"
_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<number>\d{6,})$")


class Entry(NamedTuple):
    """One sample of a shard's index: where its .npz member lies in the tar, and its sha256."""

    video_id: str
    key: str
    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class Problem:
    """A sample (or a whole shard, video_id None) that failed verify."""

    shard: str
    video_id: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.shard}.tar" + (f" sample {self.video_id}" if self.video_id else "")
        return f"{where}: {self.reason}"


def shards_dir(store: str | os.PathLike) -> Path:
    return Path(store) / "shards"


def shard_path(store: str | os.PathLike, name: str) -> Path:
    return shards_dir(store) / f"{name}.tar"


def index_path(store: str | os.PathLike, name: str) -> Path:
    return shards_dir(store) / f"{name}.idx.json"


def shard_name(split: str, number: int) -> str:
    split = re.sub(r"[^A-Za-z0-9_]", "_", split) or "all"
    return f"{split}-{number:06d}"


def is_sharded(meta: Mapping[str, Any]) -> bool:
    return meta.get("layout") == LAYOUT


# --------------------------------------------------------------------------------------------------------------------
# Writing


def encode_sample(arrays: Mapping[str, np.ndarray], dtype: str = "float16") -> bytes:
    """One video's .npz bytes, cast as save_features casts them (features to dtype, mask bool, times float32)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{key: (np.asarray(value, dtype=dtype) if key in fs.KINDS else np.asarray(value))
                        for key, value in arrays.items()})
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append a member; returns the offset of its data in the tar file."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: the same features make the same bytes
    tar.addfile(info, io.BytesIO(data))
    return tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE  # the data is padded to whole blocks


def write_shard(store: str | os.PathLike, name: str, samples: Iterable[tuple[str, bytes]], writer: str = "") -> int:
    """Write shard `name` from (video_id, npz bytes) pairs, then its index, both atomically; returns the samples
    written. A shard of that name is replaced (a rerun after an unfinished one)."""
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f"shard name {name!r} is not SPLIT-NNNNNN")
    number = int(match["number"])
    entries: list[Entry] = []
    with atomic.atomic_path(shard_path(store, name)) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (video_id, data) in enumerate(samples):
            key = f"{number:06d}{i:05d}"
            digest = hashlib.sha256(data).hexdigest()
            _add(tar, f"{key}.json", json.dumps({"video_id": video_id, "sha256": digest}).encode())
            entries.append(Entry(video_id, key, _add(tar, f"{key}.npz", data), len(data), digest))
    _write_index(store, name, entries, writer, shard_path(store, name).stat().st_size)
    return len(entries)


def _write_index(store: str | os.PathLike, name: str, entries: list[Entry], writer: str, size: int | None) -> None:
    """The index; size: the tar's bytes (what the quick check compares), None when unknown."""
    record = {"shard": name, "writer": writer, "bytes": size, "samples": [list(e) for e in entries]}
    atomic.write_json(index_path(store, name), record, indent=None)


def write_summary(store: str | os.PathLike) -> dict[str, int]:
    """Rebuild shards.json ({shard: samples}, sorted) from the indexes; returns it."""
    summary = {name: len(read_index(store, name)) for name in index_names(store)}
    atomic.write_json(Path(store) / "shards.json", summary)
    return summary


def prepare_sharded_store(store: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Create the folders; write meta.json (with the layout), or check that an existing one matches."""
    store = Path(store)
    for folder in (store, shards_dir(store), store / "failed"):
        folder.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "layout": LAYOUT}
    if (store / "meta.json").exists():
        fs.check_meta(store, meta)
    else:
        fs.write_meta(store, meta)


def clean_temp_files(store: str | os.PathLike) -> int:
    store = Path(store)
    return sum(atomic.remove_stale(folder) for folder in (store, shards_dir(store), store / "failed"))


# --------------------------------------------------------------------------------------------------------------------
# Reading


def index_names(store: str | os.PathLike) -> list[str]:
    """Sorted names of the finished shards (those with an index), from one listing of shards/."""
    folder = shards_dir(store)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".idx.json")] for p in folder.iterdir()
                  if p.name.endswith(".idx.json") and not p.name.startswith("."))


def read_summary(store: str | os.PathLike) -> dict[str, int]:
    """shards.json: {shard name: samples}; UsageError when there is none (no run finished)."""
    path = Path(store) / "shards.json"
    try:
        return {str(k): int(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
    except FileNotFoundError:
        raise UsageError(f"{path}: not found (no `vidcap extract --store shards` run has finished here)") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise UsageError(f"{path}: unreadable ({exc}); rerun `vidcap extract` to rebuild it") from exc


def read_index(store: str | os.PathLike, name: str) -> list[Entry]:
    return _read_index_record(store, name)[1]


def _read_index_record(store: str | os.PathLike, name: str) -> tuple[dict[str, Any], list[Entry]]:
    """(the index's JSON, its entries); UsageError naming the index when it cannot be read."""
    path = index_path(store, name)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return record, [Entry(*row) for row in record["samples"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: unreadable shard index ({' '.join(str(exc).split())})") from exc


def read_sample(store: str | os.PathLike, name: str, entry: Entry, handle: io.BufferedReader | None = None
                ) -> dict[str, np.ndarray]:
    """One sample's arrays, its checksum checked; UsageError naming the shard and the sample when it is bad."""
    path = shard_path(store, name)
    try:
        if handle is None:
            with open(path, "rb") as f:
                data = os.pread(f.fileno(), entry.size, entry.offset)
        else:
            data = os.pread(handle.fileno(), entry.size, entry.offset)
    except OSError as exc:
        raise UsageError(f"{path} sample {entry.video_id}: unreadable ({exc}); run `vidcap verify {store}`") from exc
    if len(data) != entry.size:
        raise UsageError(f"{path} sample {entry.video_id}: truncated shard ({len(data)} of {entry.size} bytes); "
                         f"run `vidcap verify {store}`")
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise UsageError(f"{path} sample {entry.video_id}: checksum mismatch (corrupt shard); run `vidcap verify {store}`")
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def iter_shard(store: str | os.PathLike, name: str, entries: list[Entry] | None = None
               ) -> Iterator[tuple[Entry, dict[str, np.ndarray]]]:
    """(entry, arrays) of every sample of a shard (or of `entries` of it), in order, through one open file."""
    entries = read_index(store, name) if entries is None else entries
    with open(shard_path(store, name), "rb") as handle:
        for entry in entries:
            yield entry, read_sample(store, name, entry, handle)


# --------------------------------------------------------------------------------------------------------------------
# Verify, forget, manifest


def verify(store: str | os.PathLike, names: Iterable[str] | None = None, workers: int | None = None,
           progress: Callable[[int], None] | None = None) -> list[Problem]:
    """Check every sample of every finished shard (or of `names`): its bytes are there and their sha256 is the one
    its index recorded (the bytes the writer wrote, so an .npz that loads). The problems found, naming shard and
    sample, in shard order; shards are read on `workers` threads (hashing releases the GIL), and `progress(n)` is
    called with each shard's samples as it is done."""
    names = index_names(store) if names is None else list(names)
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = []
        for problems, samples in pool.map(lambda name: _verify_shard(store, name), names):
            found += problems
            if progress is not None:
                progress(samples)
    return found


def _verify_shard(store: str | os.PathLike, name: str) -> tuple[list[Problem], int]:
    try:
        entries = read_index(store, name)
    except UsageError as exc:
        return [Problem(name, None, " ".join(str(exc).split()))], 0
    try:
        data = shard_path(store, name).read_bytes()  # one read per shard: ~1-200 MB
    except FileNotFoundError:
        return [Problem(name, None, MISSING)], len(entries)
    except OSError as exc:
        return [Problem(name, None, f"unreadable ({exc.strerror})")], len(entries)
    problems = []
    for entry in entries:
        end = entry.offset + entry.size
        if end > len(data):
            problems.append(Problem(name, entry.video_id, f"truncated shard ({len(data)} bytes, the sample ends at "
                                                          f"{end})"))
        elif hashlib.sha256(data[entry.offset : end]).hexdigest() != entry.sha256:
            problems.append(Problem(name, entry.video_id, "checksum mismatch (corrupt shard)"))
    return problems, len(entries)


def quick_check(store: str | os.PathLike, names: Iterable[str] | None = None) -> list[Problem]:
    """The check before a first step, reading no sample: each shard's index is readable, its tar is there and has
    the size its index recorded (stores written before the size was recorded: at least up to its last sample).
    A sample past the end of a truncated tar is named; any other size mismatch names the shard."""
    problems: list[Problem] = []
    for name in index_names(store) if names is None else names:
        try:
            record, entries = _read_index_record(store, name)
            size = shard_path(store, name).stat().st_size
        except UsageError as exc:
            problems.append(Problem(name, None, " ".join(str(exc).split())))
            continue
        except FileNotFoundError:
            problems.append(Problem(name, None, MISSING))
            continue
        except OSError as exc:
            problems.append(Problem(name, None, f"unreadable ({exc.strerror})"))
            continue
        cut = [Problem(name, e.video_id, f"truncated shard ({size} bytes, the sample ends at {e.offset + e.size})")
               for e in entries if e.offset + e.size > size]
        recorded = record.get("bytes")
        if cut:
            problems += cut
        elif recorded is not None and recorded != size:
            problems.append(Problem(name, None, f"{size} bytes, its index says {recorded}"))
    return problems


def forget(store: str | os.PathLike, problems: Iterable[Problem], writer: str = "") -> int:
    """Take the bad samples out of their shards' indexes (a whole bad shard: its index), recording each as failed,
    so that the next `vidcap extract` extracts exactly those again; returns how many samples were forgotten."""
    by_shard: dict[str, dict[str | None, str]] = {}
    for problem in problems:
        by_shard.setdefault(problem.shard, {})[problem.video_id] = problem.reason
    forgotten = 0
    for name, bad in by_shard.items():
        if None in bad:  # the index itself is unreadable: its videos are unknown, the shard is gone
            index_path(store, name).unlink(missing_ok=True)
            continue
        record, entries = _read_index_record(store, name)
        for entry in entries:
            if entry.video_id in bad:
                fs.record_failure(store, entry.video_id, f"{shard_path(store, name)}",
                                  f"corrupt in shard {name}: {bad[entry.video_id]}", writer)
        keep = [e for e in entries if e.video_id not in bad]
        forgotten += len(entries) - len(keep)
        try:  # a truncated tar keeps its good samples: its size now is the one to check against
            size = shard_path(store, name).stat().st_size
        except OSError:
            size = record.get("bytes")
        _write_index(store, name, keep, writer, size)
    write_summary(store)
    return forgotten


def missing_shards(store: str | os.PathLike) -> list[str]:
    """The shards shards.json lists that have no index any more (none when there is no shards.json)."""
    try:
        listed = read_summary(store)
    except UsageError:
        return []
    return sorted(set(listed) - set(index_names(store)))


def locate(store: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, tuple[str, Entry]]:
    """{video_id: (shard, entry)} over the indexes of `names` (default: every shard). Reads one index per shard:
    for random access (evaluation, reports, resume), never for streaming."""
    out: dict[str, tuple[str, Entry]] = {}
    for name in index_names(store) if names is None else names:
        for entry in read_index(store, name):
            out.setdefault(entry.video_id, (name, entry))
    return out


def write_manifest(store: str | os.PathLike) -> tuple[int, int]:
    """manifest.csv (video_id,status,error,writer) from the indexes and failed/; returns (ok, failed) counts."""
    ok: dict[str, str] = {}
    for name in index_names(store):
        writer = json.loads(index_path(store, name).read_text(encoding="utf-8")).get("writer", "")
        for entry in read_index(store, name):
            ok.setdefault(entry.video_id, writer)
    failed = {vid: lines for vid, lines in fs._text_files(Path(store) / "failed").items() if vid not in ok}
    rows = [(vid, "ok", "", writer) for vid, writer in ok.items()]
    rows += [(vid, "failed", (lines + [""])[0], (lines + ["", "", ""])[2]) for vid, lines in failed.items()]
    buffer = io.StringIO()
    table = csv.writer(buffer, lineterminator="\n")
    table.writerow(["video_id", "status", "error", "writer"])
    table.writerows(sorted(rows))
    atomic.write_text(Path(store) / "manifest.csv", buffer.getvalue())
    return len(ok), len(failed)
