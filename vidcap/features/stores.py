"""One interface over both feature-store layouts: `open_store(path)` reads meta.json and returns a `FileStore` (one
.npz per video, vidcap/features/store.py) or a `ShardedStore` (webdataset tar shards, vidcap/features/sharded.py).

Both give: `meta` (meta.json), `ids(split=None)` (sorted video ids with features; a sharded store reads the indexes
of that split's shards only), `load(video_id)` ({"global": (T, Dg), "local": (T, Dl), "mask": (T,) bool, "times":
(T,) float32}, exactly what the per-file store holds) and `verify()` (a line per bad video, naming the file or the
shard and sample).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vidcap.errors import UsageError
from vidcap.features import sharded
from vidcap.features import store as fs


class FeatureStore(Protocol):
    path: Path
    meta: dict[str, Any]

    def ids(self, split: str | None = None) -> list[str]: ...

    def load(self, video_id: str) -> dict[str, np.ndarray]: ...

    def verify(self) -> list[str]: ...


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
        bad = []
        for video_id in self.ids():
            try:
                self.load(video_id)
            except UsageError as exc:
                bad.append(str(exc))
        return bad


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
        return [str(problem) for problem in sharded.verify(self.path)]


def open_store(path: str | os.PathLike) -> FileStore | ShardedStore:
    """The store at `path`, of the layout its meta.json names (UsageError: not a store, or another format)."""
    meta = fs.read_meta(path)
    return ShardedStore(path, meta) if sharded.is_sharded(meta) else FileStore(path, meta)
