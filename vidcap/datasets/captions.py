"""Your own captions table: one row per (video, caption) in CSV, TSV, JSON or JSON Lines, and a folder of videos.

    video,caption,split                     # split is optional; several captions of a video are several rows
    cooking/pasta.mp4,a man boils pasta,train
    cooking/pasta.mp4,someone cooks noodles,train

JSON is either a list of such objects or `{"video": ["caption", ...]}`; in the list form and in JSON Lines a caption
may also be a list of captions. Video paths are relative to `--videos` (default: the table's folder) or absolute, and
may name a video inside a tar shard (`shards/00000.tar::000000012.mp4`). The column names are settable
(`--video-column`, `--caption-column`, `--split-column`). Without a split column the videos are split by a seeded
shuffle (`--split 0.9,0.05,0.05 --seed 0`, vidcap.datasets.splits.seeded_split): never one video in two splits.

Optional `start` and `end` columns (`--start-column`, `--end-column`; seconds, or `[HH:]MM:SS(.fff)`) make a row a
clip `[start, end)` of its video: each window of a video is a video of its own, with the id `ID_START_END`
(vidcap.video.windows.window_id) and `start`, `end` seconds in videos.csv, and its frames are sampled inside the
window (vidcap.video.windows). Rows with empty start and end take the whole video. The seeded split keeps the clips
of one video in one split.

A video's id is its path relative to `--videos` without the extension, '/' written as '__' (`cooking__pasta`); an
absolute path outside `--videos` gives its file stem. Rows with an empty caption, an unknown split name, a video that
does not exist, or a video already given another split are skipped and counted by reason, and so are windows that do
not parse, have a negative time, end before they start, hold no frame, or lie past the video's end (its header is
read for that).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from vidcap.datasets.options import fractions
from vidcap.datasets.splits import DEFAULT_FRACTIONS, seeded_split
from vidcap.datasets.tables import SPLITS, clean_caption, order_captions
from vidcap.errors import UsageError, VideoError
from vidcap.video.reader import open_video
from vidcap.video.tar_members import member_stem, open_shard, split_ref
from vidcap.video.windows import PastEnd, check_window, format_time, frame_range, parse_time, window_id

log = logging.getLogger(__name__)

NAME = "captions"
HELP = "your own table of video,caption[,split][,start,end] rows (CSV, TSV, JSON, JSON Lines) + a folder of videos"
EXAMPLE = """
  vidcap prepare captions --table captions.csv --videos videos/ --out data/mine
  vidcap prepare captions --table clips.jsonl --video-column path --caption-column text --split 0.8,0.1,0.1 --out data/mine
  vidcap prepare captions --table clips.csv --start-column from --end-column to --out data/clips   # clips of long videos
"""
PAPER_DATASET = None

FORMATS = ("auto", "csv", "tsv", "json", "jsonl")
_BY_EXTENSION = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Split names a table may use, and the split each one means.
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "validate": "val", "dev": "val", "test": "test", "testing": "test"}
REASONS = ("empty_caption", "unknown_split", "video_not_found", "video_in_two_splits")
WINDOW_REASONS = ("window_unparsable", "window_negative", "window_reversed", "window_without_frames",
                  "window_past_end")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", required=True, metavar="FILE", help="the captions table (.csv, .tsv, .json, .jsonl)")
    parser.add_argument("--videos", metavar="DIR", default=None,
                        help="folder the table's video paths are relative to (default: the table's folder)")
    parser.add_argument("--format", dest="table_format", choices=FORMATS, default="auto", help="table format (default: from the extension)")
    parser.add_argument("--video-column", default="video", metavar="NAME", help="column of the video paths (video)")
    parser.add_argument("--caption-column", default="caption", metavar="NAME", help="column of the captions (caption)")
    parser.add_argument("--split-column", default="split", metavar="NAME",
                        help="column of the split names, used when the table has it (split)")
    parser.add_argument("--start-column", default="start", metavar="NAME",
                        help="column of clip start times, used with --end-column when the table has them: seconds "
                             "or HH:MM:SS.fff (start)")
    parser.add_argument("--end-column", default="end", metavar="NAME", help="column of clip end times (end)")
    parser.add_argument("--split", type=fractions, default=DEFAULT_FRACTIONS, metavar="TRAIN,VAL,TEST",
                        help="without a split column: the fractions of videos per split (default 0.9,0.05,0.05)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of that split (default 0)")


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    found = _BY_EXTENSION.get(path.suffix.lower())
    if found is None:
        raise UsageError(f"{path}: cannot tell the table's format from its extension (use --format "
                         f"{'/'.join(FORMATS[1:])})")
    return found


def _json_rows(data: Any, video_column: str, caption_column: str) -> list[dict[str, Any]]:
    if isinstance(data, dict):  # {video: [captions]} or {video: caption}
        return [{video_column: video, caption_column: caption} for video, caption in data.items()]
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return data
    raise ValueError('expected a list of objects or an object {"video": ["caption", ...]}')


def read_table(path: str | Path, fmt: str = "auto", video_column: str = "video",
               caption_column: str = "caption") -> pd.DataFrame:
    """The table as strings, one row per (video, caption): lists of captions become several rows. UsageError for a
    file that is missing or does not parse as its format."""
    path = Path(path)
    fmt = _format_of(path, fmt)
    if not path.is_file():
        raise UsageError(f"{path}: captions table not found")
    try:
        if fmt in ("csv", "tsv"):
            table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                                sep="," if fmt == "csv" else "\t",
                                quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE)
        else:
            text = path.read_text(encoding="utf-8-sig")
            if fmt == "json":
                rows = _json_rows(json.loads(text), video_column, caption_column)
            else:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
                if not all(isinstance(row, dict) for row in rows):
                    raise ValueError("every line must be a JSON object")
            table = pd.DataFrame(rows)
            if caption_column in table.columns:
                table = table.explode(caption_column, ignore_index=True)
            table = table.map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as error:
        raise UsageError(f"{path}: cannot read it as {fmt.upper()}: {' '.join(str(error).split())}") from None
    return table


def _video_id(video: str, base: Path) -> str:
    parts = split_ref(video)
    if parts is not None:
        return member_stem(video)
    path = Path(video)
    try:
        relative = path.relative_to(base) if path.is_absolute() else path
    except ValueError:
        return path.stem
    return str(relative.with_suffix("")).replace(os.sep, "__").replace("/", "__")


def _exists(path: str) -> bool:
    parts = split_ref(path)
    if parts is None:
        return os.path.isfile(path)
    try:
        return parts[1] in open_shard(parts[0]).members
    except VideoError:
        return False


Window = tuple[float, float]


def _window(start: str, end: str) -> tuple[Window | None, str | None]:
    """(window, None) of a row's start and end cells, (None, None) when both are empty, (None, reason) when bad."""
    start, end = start.strip(), end.strip()
    if not start and not end:
        return None, None
    try:
        # To the millisecond, as ids and videos.csv write them: windows equal there are one clip.
        window = (round(parse_time(start), 3), round(parse_time(end), 3))
    except ValueError:
        return None, "window_unparsable"
    try:
        check_window(*window)
    except ValueError:
        return None, "window_negative" if min(window) < 0 else "window_reversed"
    return window, None


def _frames_and_rate(path: str, cache: dict[str, tuple[int, float] | None]) -> tuple[int, float] | None:
    """(frames, fps) from the video's header, None when it does not open (extraction then names the file)."""
    if path not in cache:
        try:
            with open_video(path, backend="pyav") as reader:
                cache[path] = (reader.num_frames, reader.fps)
        except VideoError:
            cache[path] = None
    return cache[path]


def load(out: Path, *, table: str | Path, videos: str | Path | None = None, table_format: str = "auto",
         video_column: str = "video", caption_column: str = "caption", split_column: str = "split",
         start_column: str = "start", end_column: str = "end",
         split: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = 0,
         ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The dataset protocol (vidcap.datasets.catalog): captions [video_id, split, caption], videos [video_id, split,
    path (+ start, end when the table has windows)], report (rows read, skipped by reason, the split rule). See the
    module docstring."""
    path = Path(table)
    base = Path(videos) if videos is not None else path.parent
    if videos is not None and not base.is_dir():
        raise UsageError(f"{base}: --videos is not a folder")
    base = base.resolve()
    rows = read_table(path, table_format, video_column, caption_column)
    expected = [video_column, caption_column]
    missing = [c for c in expected if c not in rows.columns]
    if missing:
        raise UsageError(f"{path}: columns found: {', '.join(map(str, rows.columns)) or 'none'}; expected: "
                         f"{', '.join(expected)} (name them with --video-column and --caption-column)")
    has_split = split_column in rows.columns
    windowed = [c for c in (start_column, end_column) if c in rows.columns]
    if len(windowed) == 1:
        raise UsageError(f"{path}: column {windowed[0]!r} found without "
                         f"{({start_column, end_column} - set(windowed)).pop()!r}: a clip window needs both "
                         f"(name them with --start-column and --end-column)")
    has_window = bool(windowed)
    no_cells = [""] * len(rows)
    headers: dict[str, tuple[int, float] | None] = {}
    window_of: dict[str, Window | None] = {}
    source_of: dict[str, str] = {}  # video id -> id of the whole video it is a clip of (itself without a window)
    skipped: Counter[str] = Counter()
    resolved: dict[str, str | None] = {}  # table value -> absolute path, None when it does not exist
    split_of: dict[str, str] = {}
    path_of: dict[str, str] = {}
    kept: list[tuple[str, str, str]] = []  # video id, caption, split from the table ("" without a split column)
    for video, caption, named, start, end in zip(
            rows[video_column], rows[caption_column], rows[split_column] if has_split else no_cells,
            rows[start_column] if has_window else no_cells, rows[end_column] if has_window else no_cells, strict=True):
        caption = clean_caption(caption)
        if not caption:
            skipped["empty_caption"] += 1
            continue
        split_name = SPLIT_NAMES.get(named.strip().lower()) if has_split else ""
        if split_name is None:
            skipped["unknown_split"] += 1
            continue
        window, bad = _window(start, end)
        if bad is not None:
            skipped[bad] += 1
            continue
        video = video.strip()
        if video not in resolved:
            full = video if os.path.isabs(video) else str(base / video)
            resolved[video] = full if video and _exists(full) else None
        full = resolved[video]
        if full is None:
            skipped["video_not_found"] += 1
            continue
        whole_id = video_id = _video_id(full, base)
        if window is not None:
            header = _frames_and_rate(full, headers)
            try:
                if header is not None:
                    frame_range(*window, header[1], header[0])
            except PastEnd:
                skipped["window_past_end"] += 1
                continue
            except ValueError:
                skipped["window_without_frames"] += 1
                continue
            video_id = window_id(whole_id, *window)
        if (path_of.setdefault(video_id, full), window_of.setdefault(video_id, window)) != (full, window):
            raise UsageError(f"{path}: {video} and {path_of[video_id]} would both be video {video_id!r}; rename one")
        source_of[video_id] = whole_id
        if has_split and split_of.setdefault(video_id, split_name) != split_name:
            skipped["video_in_two_splits"] += 1
            continue
        kept.append((video_id, caption, split_name))
    if not kept:
        raise UsageError(f"{path}: no usable row ({', '.join(f'{k} {v}' for k, v in skipped.items()) or 'empty'})")
    if not has_split:
        # By whole video: the clips of one video never straddle splits (without windows, source_of is the identity).
        by_source = seeded_split(set(source_of.values()), split, seed)
        split_of = {v: by_source[source_of[v]] for v in path_of}
        rule = f"seeded shuffle of the videos: {split[0]:g}/{split[1]:g}/{split[2]:g}, seed {seed}"
    else:
        rule = f"the table's {split_column!r} column"
    order = {name: i for i, name in enumerate(SPLITS)}
    clips = sorted(path_of, key=lambda v: (order[split_of[v]], v.encode("utf-8")))
    captions = pd.DataFrame([(v, split_of[v], c) for v, c, _ in kept], columns=["video_id", "split", "caption"])
    captions = order_captions(captions, clips)
    video_table = pd.DataFrame({"video_id": clips, "split": [split_of[v] for v in clips],
                                "path": [path_of[v] for v in clips]})
    if has_window:  # seconds as the ids write them, so that the reader samples the window the id names
        windows = [window_of[v] for v in clips]
        video_table["start"] = ["" if w is None else format_time(w[0]) for w in windows]
        video_table["end"] = ["" if w is None else format_time(w[1]) for w in windows]
    report = {
        "table": str(path.resolve()),
        "videos": str(base),
        "format": _format_of(path, table_format),
        "rows_read": len(rows),
        "skipped_rows": {reason: skipped.get(reason, 0) for reason in REASONS + (WINDOW_REASONS if has_window else ())},
        "split_rule": rule,
    }
    log.info("%s: %d captions of %d videos kept from %s", NAME, len(captions), len(clips), path)
    return captions, video_table, report
