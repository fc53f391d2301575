"""One interface over both feature-store layouts: `open_store(path)` reads meta.json and returns a `FileStore` (one
.npz per video, vidcap/features/store.py) or a `ShardedStore` (webdataset tar shards, vidcap/features/sharded.py).

Both give: `meta` (meta.json), `ids(split=None)` (sorted video ids with features; a sharded store reads the indexes
of that split's shards only), `load(video_id)` ({"global": (T, Dg), "local": (T, Dl), "mask": (T,) bool, "times":
(T,) float32}, exactly what the per-file store holds), `check(full, ...)` (what `vidcap verify` prints: the full
check of every checksum, or the quick one that fit and evaluate run before their first step) and `verify()` (the
full check's problems, a line each, naming the file or the shard and sample).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vidcap.errors import UsageError
from vidcap.features import sharded
from vidcap.features import store as fs


@dataclass
class StoreCheck:
    """What `check` found. checked: items checked (unit: "files" or "samples", scope: e.g. " in 12 shards"), by
    method ("SHA-256", "headers", "sizes"); bad: "PLACE: reason" lines (a file, or a shard and sample); missing: the
    places recorded as written that are gone; note: more to say, or ""."""

    checked: int
    unit: str
    method: str
    bad: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    scope: str = ""
    note: str = ""

    def summary(self, store: str | os.PathLike) -> str:
        return (f"{store}: {self.checked} {self.unit}{self.scope} checked ({self.method}), {len(self.bad)} bad, "
                f"{len(self.missing)} missing{self.note}")

    @property
    def ok(self) -> bool:
        return not self.bad and not self.missing

    def lines(self) -> list[str]:
        """A line per problem: "PLACE: reason", then "PLACE: missing"."""
        return [*self.bad, *(f"{place}: missing" for place in self.missing)]


Progress = Callable[[int], None]


class FeatureStore(Protocol):
    path: Path
    meta: dict[str, Any]

    def ids(self, split: str | None = None) -> list[str]: ...

    def load(self, video_id: str) -> dict[str, np.ndarray]: ...

    def verify(self) -> list[str]: ...

    def size(self) -> int: ...

    def check(self, full: bool = True, workers: int | None = None, progress: Progress | None = None) -> StoreCheck: ...


class FileStore:
    """The per-file store, through the functions of vidcap.features.store."""

    layout = "files"

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any]):
        self.path, self.meta = Path(path), meta

    def ids(self, split: str | None = None) -> list[str]:
        # One folder holds every split: the split is the captions table's business here.
        return fs.list_features(self.path)

    def load(self, video_id: str) -> dict[str, np.ndarray]:
        return fs.load_features(self.path, video_id)

    def verify(self) -> list[str]:
        return self.check().lines()

    def size(self) -> int:
        return len(fs.list_features(self.path))

    def check(self, full: bool = True, workers: int | None = None, progress: Progress | None = None) -> StoreCheck:
        """Every feature file against its recorded SHA-256 (full) or its headers against meta.json
        (vidcap.features.integrity); missing: files with a checksum record or an "ok" manifest row but gone."""
        from vidcap.features.integrity import verify_store

        report = verify_store(self.path, full=full, workers=workers, progress=progress)
        unrecorded = (f", {report.unrecorded} without a recorded checksum (headers checked)"
                      if report.unrecorded and full else "")
        return StoreCheck(report.checked, "files", "SHA-256" if full else "headers",
                          [f"{fs.feature_path(self.path, vid)}: {reason}" for vid, reason in sorted(report.bad.items())],
                          [str(fs.feature_path(self.path, vid)) for vid in report.missing], note=unrecorded)


class ShardedStore:
    """The sharded store. `load` looks the video up in the indexes, read once (all shards') on the first call."""

    layout = sharded.LAYOUT

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any]):
        self.path, self.meta = Path(path), meta
        self._where: dict[str, tuple[str, sharded.Entry]] | None = None

    def shards(self, split: str | None = None) -> dict[str, int]:
        """{shard name: samples} from shards.json, only `split`'s shards when given."""
        summary = sharded.read_summary(self.path)
        return {name: n for name, n in summary.items() if split is None or name.rsplit("-", 1)[0] == split}

    def ids(self, split: str | None = None) -> list[str]:
        names = [name for name in sharded.index_names(self.path) if split is None or name.rsplit("-", 1)[0] == split]
        return sorted(sharded.locate(self.path, names))

    def load(self, video_id: str) -> dict[str, np.ndarray]:
        if self._where is None:
            self._where = sharded.locate(self.path)
        if video_id not in self._where:
            raise UsageError(f"{self.path}: no features for video {video_id!r} in any shard (run `vidcap extract`)")
        name, entry = self._where[video_id]
        return sharded.read_sample(self.path, name, entry)

    def verify(self) -> list[str]:
        return self.check().lines()

    def size(self) -> int:
        return sum(len(sharded.read_index(self.path, name)) for name in sharded.index_names(self.path))

    def preflight(self, split: str) -> tuple[set[str], list[sharded.Problem]]:
        """The check before a first step on `split`'s shards, reading no sample (sharded.quick_check): (the videos
        of the shards that pass it, less any sample it names; the problems, naming shard and sample)."""
        names = [name for name in sharded.index_names(self.path) if name.rsplit("-", 1)[0] == split]
        problems = sharded.quick_check(self.path, names)
        bad_shards = {p.shard for p in problems if p.video_id is None}
        bad_samples = {p.video_id for p in problems if p.video_id is not None}
        return set(sharded.locate(self.path, [n for n in names if n not in bad_shards])) - bad_samples, problems

    def check(self, full: bool = True, workers: int | None = None, progress: Progress | None = None) -> StoreCheck:
        """Every sample of every shard against the sha256 its index recorded (full), or the quick check (each index
        readable, each tar there with its recorded size); missing: shards that shards.json or an index lists but
        that are gone."""
        names = sharded.index_names(self.path)
        problems = sharded.verify(self.path, names, workers, progress) if full else sharded.quick_check(self.path, names)
        folder = sharded.shards_dir(self.path)
        gone = {p.shard for p in problems if p.video_id is None and p.reason == sharded.MISSING}
        gone |= set(sharded.missing_shards(self.path))
        bad = [f"{folder / str(p)}" for p in problems if p.shard not in gone]
        checked = self.size()
        return StoreCheck(checked, "samples", "SHA-256" if full else "sizes", bad,
                          [str(sharded.shard_path(self.path, name)) for name in sorted(gone)],
                          scope=f" in {len(names)} shards")


def open_store(path: str | os.PathLike) -> FileStore | ShardedStore:
    """The store at `path`, of the layout its meta.json names (UsageError: not a store, or another format)."""
    meta = fs.read_meta(path)
    return ShardedStore(path, meta) if sharded.is_sharded(meta) else FileStore(path, meta)
