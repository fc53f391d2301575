"""DVS / M-VAD as distributed by LSMDC: LSMDC16_annos_{training,val,test,blindtest}.csv + <MOVIE>/<CLIP_ID>.avi.

Each annotation file is tab-separated without a header: `CLIP_ID, START_ALIGNED, END_ALIGNED, START_EXTRACTED,
END_EXTRACTED, SENTENCE`, times `hh.mm.ss.mmm`, e.g. `3001_21_JUMP_STREET_00.02.55.644-00.02.56.718`. The movie
is the clip id up to its `_start-end` suffix; the video is `VIDEOS/<MOVIE>/<CLIP_ID>.avi`. A clip id may repeat
(several sentences). Ids starting with 3 are M-VAD, 0 and 1 MPII-MD. The blind test file has no sentences: its
clips only go to videos.csv. Sentences hold quotes, so the lines are split on tabs by hand (no CSV quoting).
Malformed rows are skipped and counted by reason; nothing here raises on a bad row.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from vidcap.datasets import VIDEO_SPLITS, clean_caption, list_videos, order_captions
from vidcap.datasets.encoding import decode_text
from vidcap.errors import UsageError

log = logging.getLogger(__name__)

NAME = "lsmdc"
HELP = "DVS / M-VAD from LSMDC: LSMDC16_annos_{training,val,test,blindtest}.csv + VIDEOS/<MOVIE>/<CLIP_ID>.avi"
EXAMPLE = """
  vidcap prepare lsmdc --annotations LSMDC16_annotations --videos MVAD --out data/mvad --source mvad
"""
PAPER_DATASET = "lsmdc"

# annotation file part -> split name
FILES = {"training": "train", "val": "val", "test": "test", "blindtest": "blindtest"}
FILE_PATTERN = "LSMDC16_annos_{}.csv"
SOURCES = ("all", "mvad", "mpii")
_TIME = r"\d{1,2}\.\d{2}\.\d{2}\.\d{1,3}"
TIME = re.compile(_TIME)
CLIP_ID = re.compile(rf"(?P<movie>[^\s/\\]+?)_(?P<start>{_TIME})-(?P<end>{_TIME})")
REASONS = ("wrong_column_count", "bad_clip_id", "bad_timestamp", "empty_sentence", "clip_in_two_splits")


def source_of(clip_id: str) -> str:
    """"mvad" for ids starting with 3, "mpii" for 0 or 1, "other" otherwise."""
    return "mvad" if clip_id.startswith("3") else "mpii" if clip_id[:1] in ("0", "1") else "other"


def movie_of(clip_id: str) -> str | None:
    """The movie folder of a clip id (the id without its `_start-end` suffix), None for a malformed id."""
    match = CLIP_ID.fullmatch(clip_id)
    return match.group("movie") if match else None


def _read_lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"{path}: cannot read it: {error.strerror}") from None
    # errors="replace": a stray non-UTF-8 byte spoils one sentence, not the whole file.
    return decode_text(path, data, errors="replace")[0].splitlines()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", required=True, metavar="DIR",
                        help="folder holding LSMDC16_annos_{training,val,test,blindtest}.csv")
    parser.add_argument("--videos", required=True, metavar="DIR", help="folder of <MOVIE>/<CLIP_ID>.avi")
    parser.add_argument("--source", choices=SOURCES, default="all",
                        help="keep only M-VAD clips (ids starting with 3), only MPII-MD (0/1), or all (default)")


def load(out: Path, *, annotations: str | Path, videos: str | Path, source: str = "all"
         ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The dataset protocol (vidcap.datasets.catalog): `read_tables(annotations, videos, source=source)`."""
    return read_tables(annotations, videos, source=source)


def read_tables(
    annotations_dir: str | Path, videos_dir: str | Path, source: str = "all"
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """LSMDC -> (captions, videos, report); see the module docstring.

    source: "all", "mvad" (ids starting with 3) or "mpii" (0/1). captions: DataFrame[video_id, split, caption,
    source], videos: DataFrame[video_id, split, path] (absolute), report: files found and missing, rows read per
    file, rows skipped per reason, clips without a video, clips and captions per split.
    """
    annotations_dir, videos_dir = Path(annotations_dir), Path(videos_dir)
    if source not in SOURCES:
        raise UsageError(f"unknown source {source!r} (choose from {', '.join(SOURCES)})")
    if not annotations_dir.is_dir():
        raise UsageError(f"{annotations_dir}: annotation folder not found")
    if not videos_dir.is_dir():
        raise UsageError(f"{videos_dir}: video folder not found")
    found = {part: annotations_dir / FILE_PATTERN.format(part) for part in FILES}
    missing = [path.name for path in found.values() if not path.is_file()]
    found = {part: path for part, path in found.items() if path.is_file()}
    if not found:
        names = ", ".join(FILE_PATTERN.format(part) for part in FILES)
        raise UsageError(f"{annotations_dir}: none of the LSMDC annotation files is here ({names})")
    for name in missing:
        log.warning("%s: %s is missing; its split stays empty", annotations_dir, name)

    skipped: Counter[str] = Counter()
    rows_read: dict[str, int] = {}
    source_counts: Counter[str] = Counter()
    split_of: dict[str, str] = {}  # clip -> split, first file wins
    caption_rows: list[tuple[str, str, str]] = []  # clip, split, caption
    for part, path in found.items():
        split = FILES[part]
        rows_read[path.name] = 0
        for line in _read_lines(path):
            if not line.strip():
                continue
            rows_read[path.name] += 1
            fields = line.split("\t")
            # The blind test has no sentence column (or an empty one); every other file has exactly six.
            if len(fields) != 6 and not (split == "blindtest" and len(fields) == 5):
                skipped["wrong_column_count"] += 1
                continue
            clip = fields[0].strip()
            if not CLIP_ID.fullmatch(clip) or clip.startswith(".") or "\0" in clip:  # NUL: never a file name
                skipped["bad_clip_id"] += 1
                continue
            if not all(TIME.fullmatch(f.strip()) for f in fields[1:5]):
                skipped["bad_timestamp"] += 1
                continue
            caption = clean_caption(fields[5]) if len(fields) == 6 else ""
            if split != "blindtest" and not caption:
                skipped["empty_sentence"] += 1
                continue
            kind = source_of(clip)
            if source != "all" and kind != source:
                skipped[f"not_{source}"] += 1
                continue
            if split_of.setdefault(clip, split) != split:
                skipped["clip_in_two_splits"] += 1
                continue
            source_counts[kind] += 1
            if split != "blindtest":
                caption_rows.append((clip, split, caption))

    # One listing per movie folder: LSMDC has >100k clips.
    listings: dict[str, dict[str, str]] = {}
    paths: dict[str, str] = {}
    base = videos_dir.resolve()
    for clip in split_of:
        movie = movie_of(clip)
        if movie not in listings:
            listings[movie] = list_videos(base / movie)
        name = listings[movie].get(clip)
        if name is not None:
            paths[clip] = str(base / movie / name)
    without_video = [clip for clip in split_of if clip not in paths]
    if not paths:
        example = next(iter(split_of), "MOVIE_00.00.00.000-00.00.01.000")
        raise UsageError(
            f"{videos_dir}: none of the {len(split_of)} clips has a video here "
            f"(expected files like {movie_of(example) or 'MOVIE'}/{example}.avi)"
        )

    order = {split: i for i, split in enumerate(VIDEO_SPLITS)}
    clips = sorted(paths, key=lambda c: (order[split_of[c]], c.encode("utf-8")))
    videos = pd.DataFrame({"video_id": clips, "split": [split_of[c] for c in clips], "path": [paths[c] for c in clips]})
    captions = pd.DataFrame(caption_rows, columns=["video_id", "split", "caption"])
    captions = captions[captions["video_id"].isin(paths)]
    captions = captions.assign(source=captions["video_id"].map(source_of))
    captions = order_captions(captions, clips)
    if captions.empty:
        raise UsageError(f"{annotations_dir}: no captioned clip with a video was kept")

    report = {
        "annotations": str(annotations_dir.resolve()),
        "videos": str(base),
        "source": source,
        "files_read": sorted(path.name for path in found.values()),
        "files_missing": missing,
        "rows_read": rows_read,
        "skipped_rows": {k: skipped.get(k, 0) for k in (*REASONS, *([f"not_{source}"] if source != "all" else []))},
        "rows_per_source": {k: source_counts.get(k, 0) for k in ("mvad", "mpii", "other")},
        "clips_in_annotations": len(split_of),
        "clips_without_video": len(without_video),
        "missing_videos": {s: sum(1 for c in without_video if split_of[c] == s) for s in VIDEO_SPLITS},
        "clips_kept": len(clips),
        "captions_kept": len(captions),
    }
    if without_video:
        log.info("lsmdc: %d clips have no video, e.g. %s", len(without_video), without_video[0])
    return captions, videos, report
