"""video2dataset output (WebVid, Panda-70M, any list of URLs with captions) read in place: webdataset tar shards.

Each sample of a shard is a run of members with one key: `<key>.mp4`, `<key>.txt` (the caption), `<key>.json` (url,
key, status, caption and the input table's other columns), optionally `<key>.m4a`; video2dataset also writes
`<shard>.parquet` and `<shard>_stats.json` beside each shard, which this loader does not need. Keys are 9 digits
(5 of the shard, 4 of the sample); clipping writes `<key>_<n>` samples, each a video of its own.

`--shards` takes brace patterns (`data/{00000..00099}.tar`) and/or lists of paths. The shards are local files:
extraction reads each video by seeking to its member (vidcap.video.tar_members), which a stream cannot do. The
webdataset library's `pipe:` and object-store URLs (`pipe:aws s3 cp s3://bucket/00000.tar -`) stream a shard from
start to end; copy or mount such shards locally first.

A video is recorded in videos.csv as its shard and member (columns `shard`, `member`; `path` is `SHARD::MEMBER`),
never unpacked. The caption is the `.txt` member, or the `--caption-field` of the `.json`. Samples whose json
`status` is not "success", that lack a video or a caption, or whose key was already read from an earlier shard are
skipped and counted by reason. A shard that is not a tar or is truncated contributes its complete samples before
the damage and is named in report["damaged_shards"] (`vidcap prepare` then exits 1). The split is by a seeded hash of
the key (`--split`, `--seed`: a sample keeps its split when shards are added) or by whole shards (`--split-shards`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from vidcap.datasets.options import fractions
from vidcap.datasets.splits import DEFAULT_FRACTIONS, hashed_split, shard_split
from vidcap.datasets.tables import SPLITS, clean_caption
from vidcap.errors import UsageError
from vidcap.video.tar_members import iter_member_data, member_ref, scan_shard

log = logging.getLogger(__name__)

NAME = "webdataset"
HELP = "video2dataset / webdataset tar shards (WebVid, Panda-70M, ...), read in place without unpacking"
EXAMPLE = """
  vidcap prepare webdataset --shards "webvid/{00000..00099}.tar" --out data/webvid
  vidcap prepare webdataset --shards panda/*.tar --caption-field caption --split-shards --out data/panda
"""
PAPER_DATASET = None

REASONS = ("failed_download", "no_video", "empty_caption", "bad_json", "duplicate_key")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, nargs="+", metavar="PATTERN",
                        help='tar shards: brace patterns ("data/{00000..00099}.tar") and/or paths')
    parser.add_argument("--caption-field", default=None, metavar="FIELD",
                        help="take the caption from this field of each sample's .json (default: the .txt member)")
    parser.add_argument("--video-ext", default="mp4", metavar="EXT", help="extension of the video members (mp4)")
    parser.add_argument("--split", type=fractions, default=DEFAULT_FRACTIONS, metavar="TRAIN,VAL,TEST",
                        help="fractions of samples (or with --split-shards, of shards) per split (default "
                             "0.9,0.05,0.05)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the key hash (default 0)")
    parser.add_argument("--split-shards", action="store_true",
                        help="split whole shards in the order given (first train, then val, then test) instead of "
                             "hashing keys")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def expand_shards(patterns: Sequence[str | os.PathLike]) -> list[str]:
    """The shard paths of brace patterns and paths, in the order given, each once. UsageError when a pattern names
    no file."""
    from braceexpand import braceexpand

    shards: list[str] = []
    for pattern in patterns:
        for path in braceexpand(os.fspath(pattern)):
            if not os.path.exists(path):
                raise UsageError(f"{path}: shard not found (from --shards {pattern})")
            if path not in shards:
                shards.append(path)
    if not shards:
        raise UsageError("--shards: no shard given")
    return shards


def _key_and_ext(name: str) -> tuple[str, str]:
    """webdataset's grouping: the key is the member name up to the first '.' of its base name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def _caption(fields: dict[str, bytes], caption_field: str | None) -> tuple[str | None, str]:
    """(the caption or None, why not). The json's status decides first."""
    meta: dict[str, Any] = {}
    if "json" in fields:
        try:
            meta = json.loads(fields["json"].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None, "bad_json"
        if not isinstance(meta, dict):
            return None, "bad_json"
        if meta.get("status", "success") != "success":
            return None, "failed_download"
    if caption_field is not None:
        value = meta.get(caption_field)
        text = value if isinstance(value, str) else ""
    else:
        text = fields.get("txt", b"").decode("utf-8", errors="replace")
    text = clean_caption(text)
    return (text, "") if text else (None, "empty_caption")


def load(out: Path, *, shards: Sequence[str | os.PathLike], caption_field: str | None = None, video_ext: str = "mp4",
         split: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = 0, split_shards: bool = False,
         no_progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The dataset protocol (vidcap.datasets.catalog): captions [video_id, split, caption], videos [video_id, split,
    path = SHARD::MEMBER, shard, member], report (samples read and skipped by reason, damaged shards). See the module
    docstring."""
    paths = [str(Path(p).resolve()) for p in expand_shards(shards)]
    split_of_shard = shard_split(paths, split) if split_shards else {}
    skipped: Counter[str] = Counter()
    damaged: dict[str, str] = {}
    seen: set[str] = set()
    rows: list[tuple[str, str, str, str, str]] = []  # key, split, caption, shard, member
    samples = 0
    for shard in tqdm(paths, desc="reading shards", unit="shard", disable=no_progress or None):
        scan = scan_shard(shard)
        if scan.error is not None:
            damaged[shard] = scan.error
            log.info("%s: %s", shard, scan.error)
        # Group the members by key in file order; only the small text members are read.
        groups: dict[str, dict[str, str]] = {}
        for member in scan.members:
            key, ext = _key_and_ext(member.name)
            groups.setdefault(key, {})[ext] = member.name
        wanted = {name for group in groups.values() for ext, name in group.items() if ext in ("txt", "json")}
        texts = {member.name: data for member, data in iter_member_data(scan, wanted)}
        for key, group in groups.items():
            samples += 1
            fields = {ext: texts[name] for ext, name in group.items() if name in texts}
            caption, why = _caption(fields, caption_field)
            if caption is None:
                skipped[why] += 1
                continue
            if video_ext not in group:
                skipped["no_video"] += 1
                continue
            video_id = key.replace("/", "__")
            if video_id in seen:
                skipped["duplicate_key"] += 1
                continue
            seen.add(video_id)
            chosen = split_of_shard[shard] if split_shards else hashed_split(video_id, split, seed)
            rows.append((video_id, chosen, caption, shard, group[video_ext]))
    if not rows:
        raise UsageError(f"{', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}: no usable sample "
                         f"({', '.join(f'{k} {v}' for k, v in skipped.items()) or 'no members'})")
    order = {name: i for i, name in enumerate(SPLITS)}
    rows.sort(key=lambda row: order[row[1]])  # stable: file order within each split
    videos = pd.DataFrame({"video_id": [r[0] for r in rows], "split": [r[1] for r in rows],
                           "path": [member_ref(r[3], r[4]) for r in rows], "shard": [r[3] for r in rows],
                           "member": [r[4] for r in rows]})
    captions = pd.DataFrame({"video_id": videos["video_id"], "split": videos["split"],
                             "caption": [r[2] for r in rows]})
    report = {
        "shards": len(paths),
        "samples_read": samples,
        "skipped_samples": {reason: skipped.get(reason, 0) for reason in REASONS},
        "damaged_shards": damaged,
        "caption_source": f"json field {caption_field!r}" if caption_field else ".txt",
        "split_rule": (f"whole shards in order, {split[0]:g}/{split[1]:g}/{split[2]:g}" if split_shards
                       else f"seeded key hash (blake2b), {split[0]:g}/{split[1]:g}/{split[2]:g}, seed {seed}"),
    }
    log.info("%s: %d samples kept of %d in %d shards", NAME, len(rows), samples, len(paths))
    return captions, videos, report
