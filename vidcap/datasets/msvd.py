"""Youtube2Text (MSVD): "MSR Video Description Corpus.csv" or AllVideoDescriptions.txt + YouTubeClips/*.avi.

The CSV (header `VideoID,Start,End,WorkerID,Source,AnnotationTime,Language,Description`) holds descriptions in
many languages, some empty, some with commas, quotes or line breaks inside quoted fields: it is parsed with a real
CSV reader, English rows only are kept. AllVideoDescriptions.txt has `#` header lines, then `<clip_id> <sentence>`
lines (English only). Clip id = `{VideoID}_{Start}_{End}`, the video `DIR/<clip_id>.avi`. About 2,089 clips are
described but only 1970 videos survive: clips without a video are skipped and counted, and the clips with videos
are split with the standard rule (`vidcap.datasets.standard_split`).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from vidcap.datasets import (
    MSVD_NUM_CLIPS,
    byte_order,
    clean_caption,
    list_videos,
    order_captions,
    standard_split,
)
from vidcap.datasets.encoding import decode_text
from vidcap.errors import UsageError

log = logging.getLogger(__name__)

NAME = "msvd"
HELP = "Youtube2Text (MSVD): the CSV or AllVideoDescriptions.txt + a folder of <clip_id>.avi; standard split"
EXAMPLE = """
  vidcap prepare msvd --annotations "MSR Video Description Corpus.csv" --videos YouTubeClips --out data/msvd
  vidcap prepare msvd --annotations AllVideoDescriptions.txt --videos YouTubeClips --out data/msvd
"""
PAPER_DATASET = "msvd"

CSV_COLUMNS = ("VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description")
REQUIRED_CSV_COLUMNS = ("VideoID", "Start", "End", "Language", "Description")
# <youtube id>_<start>_<end>; YouTube ids themselves may contain '_' and '-'.
CLIP_ID = re.compile(r"(?P<video>[^\s/\\]+)_(?P<start>\d+)_(?P<end>\d+)")


class _Rows:
    """Parsed annotation rows plus the counts of what was dropped on the way."""

    def __init__(self, fmt: str) -> None:
        self.format = fmt
        self.rows: list[dict[str, str]] = []  # clip_id, caption, source, language
        self.rows_read = 0
        self.skipped: Counter[str] = Counter()
        self.clips_seen: set[str] = set()  # every well-formed clip id, whatever its language


def _detect_format(path: Path, text: str) -> str:
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            return "txt"
        first = next(csv.reader([line]))
        if "VideoID" in first and "Description" in first:
            return "csv"
        head = line.split(None, 1)
        if CLIP_ID.fullmatch(head[0]):  # a first line without its sentence is still this format
            return "txt"
        break
    raise UsageError(
        f"{path}: not an MSVD annotation file (expected the CSV header {','.join(CSV_COLUMNS)} "
        f"or AllVideoDescriptions.txt lines '<clip_id> <sentence>')"
    )


def _valid_clip(video_id: str, start: str, end: str) -> str | None:
    video_id, start, end = video_id.strip(), start.strip(), end.strip()
    if not video_id or not start.isdigit() or not end.isdigit() or "/" in video_id or "\\" in video_id:
        return None
    if video_id.startswith(".") or any(c.isspace() for c in video_id):
        return None
    return f"{video_id}_{start}_{end}"


def _parse_csv(path: Path, text: str) -> _Rows:
    out = _Rows("csv")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise UsageError(f"{path}: CSV header lacks column(s) {', '.join(missing)}")
    for row in reader:
        out.rows_read += 1
        if None in row or any(row.get(c) is None for c in REQUIRED_CSV_COLUMNS):
            out.skipped["malformed"] += 1  # too many or too few fields
            continue
        clip = _valid_clip(row["VideoID"], row["Start"], row["End"])
        if clip is None:
            out.skipped["malformed"] += 1
            continue
        out.clips_seen.add(clip)
        if row["Language"].strip() != "English":
            out.skipped["non_english"] += 1
            continue
        caption = clean_caption(row["Description"])
        if not caption:
            out.skipped["empty_description"] += 1
            continue
        out.rows.append(
            {"clip": clip, "caption": caption, "source": (row.get("Source") or "").strip(), "language": "English"}
        )
    return out


def _parse_txt(text: str) -> _Rows:
    out = _Rows("txt")
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        out.rows_read += 1
        head = line.strip().split(None, 1)
        match = CLIP_ID.fullmatch(head[0])
        clip = _valid_clip(*match.group("video", "start", "end")) if match else None
        if clip is None:
            out.skipped["malformed"] += 1
            continue
        out.clips_seen.add(clip)
        caption = clean_caption(head[1]) if len(head) == 2 else ""
        if not caption:
            out.skipped["empty_description"] += 1
            continue
        out.rows.append({"clip": clip, "caption": caption, "source": "", "language": "English"})
    return out


def read_annotations(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The English, non-empty descriptions of either annotation format.

    Returns (DataFrame[video_id, caption, source, language] in file order, counts). Raises UsageError for a missing
    or unreadable file, or one in neither format.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: annotation file not found")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"{path}: cannot read it: {error.strerror}") from None
    # Decoding the bytes ourselves keeps line breaks inside quoted CSV fields intact; utf-8-sig drops a BOM.
    try:
        text, _ = decode_text(path, data)  # UTF-8 (a BOM dropped), UTF-16 with a BOM; refuses UTF-16 without one
        bad_bytes = 0
    except UnicodeDecodeError as error:
        text, _ = decode_text(path, data, errors="replace")
        bad_bytes = text.count("\ufffd")
        log.warning("%s: not valid UTF-8 (%s at byte %d); %d undecodable characters replaced",
                    path, error.reason, error.start, bad_bytes)
    fmt = _detect_format(path, text)
    try:
        parsed = _parse_csv(path, text) if fmt == "csv" else _parse_txt(text)
    except csv.Error as error:
        raise UsageError(f"{path}: broken CSV: {error}") from None
    table = pd.DataFrame(parsed.rows, columns=["clip", "caption", "source", "language"]).rename(
        columns={"clip": "video_id"}
    )
    counts = {
        "format": fmt,
        "rows_read": parsed.rows_read,
        "skipped_rows": {k: parsed.skipped.get(k, 0) for k in ("non_english", "empty_description", "malformed")},
        "clips_in_annotations": len(parsed.clips_seen),
        "undecodable_characters": bad_bytes,
        "clips_seen": parsed.clips_seen,
    }
    return table, counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", required=True, metavar="FILE",
                        help='"MSR Video Description Corpus.csv" or AllVideoDescriptions.txt')
    parser.add_argument("--videos", required=True, metavar="DIR", help="folder of <VideoID>_<Start>_<End>.avi")


def load(out: Path, *, annotations: str | Path, videos: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The dataset protocol (vidcap.datasets.catalog): `read_tables(annotations, videos)`."""
    return read_tables(annotations, videos)


def read_tables(annotations: str | Path, videos_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """MSVD -> (captions, videos, report); see the module docstring.

    captions: DataFrame[video_id, split, caption, source, language], videos: DataFrame[video_id, split, path]
    (absolute paths), report: counts of rows read, dropped (non-English, empty, malformed), clips without a video,
    clips and captions kept per split, and the split rule used.
    """
    annotations, videos_dir = Path(annotations), Path(videos_dir)
    if not videos_dir.is_dir():
        raise UsageError(f"{videos_dir}: video folder not found")
    table, counts = read_annotations(annotations)
    clips_seen = counts.pop("clips_seen")
    listing = list_videos(videos_dir)
    # The split numbers every described clip that has a video, whatever the language of its descriptions, so that
    # the standard order does not depend on which rows were kept.
    with_video = byte_order(c for c in clips_seen if c in listing)
    without_video = len(clips_seen) - len(with_video)
    if not with_video:
        raise UsageError(
            f"{videos_dir}: none of the {len(clips_seen)} clips of {annotations.name} has a video here "
            f"(expected files like {next(iter(sorted(clips_seen)), 'CLIPID')}.avi)"
        )
    split_of = standard_split(with_video)
    base = videos_dir.resolve()
    videos = pd.DataFrame(
        {
            "video_id": with_video,
            "split": [split_of[c] for c in with_video],
            "path": [str(base / listing[c]) for c in with_video],
        }
    )
    captions = table[table["video_id"].isin(split_of)].copy()
    captions.insert(1, "split", captions["video_id"].map(split_of))
    # Group by split then clip (byte order); a stable sort keeps each clip's descriptions in file order.
    captions = order_captions(captions, with_video)
    if captions.empty:
        raise UsageError(f"{annotations}: no English description left for the {len(with_video)} clips with videos")
    report = {
        "annotations": str(annotations.resolve()),
        "videos": str(base),
        **counts,
        "clips_without_video": without_video,
        # The split numbers only the clips with a video: those without one have no split.
        "missing_videos": {"unassigned": without_video},
        "videos_not_in_annotations": len(set(listing) - clips_seen),
        "clips_kept": len(with_video),
        "clips_without_english_caption": len(set(with_video) - set(captions["video_id"])),
        "captions_kept": len(captions),
        "split_rule": (
            "standard: byte order, 1200/100/670"
            if len(with_video) == MSVD_NUM_CLIPS
            else f"proportional (1200:100:670) over {len(with_video)} clips instead of {MSVD_NUM_CLIPS}"
        ),
    }
    log.info("msvd: %d captions of %d clips kept", len(captions), len(with_video))
    return captions, videos, report
