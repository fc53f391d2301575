"""MSR-VTT: train_val_videodatainfo.json + test_videodatainfo.json (or one merged file) + folders of <video_id>.mp4.

Each annotation file is one JSON object `{"info": {...}, "videos": [...], "sentences": [...]}`:
a video is `{"id", "video_id": "video123", "category", "url", "start time", "end time", "split"}` with split
"train", "validate" or "test", a sentence `{"sen_id", "video_id", "caption"}`. The merged distributions
(videodatainfo_2017.json, MSRVTT_data.json) have the same structure, so any set of such files is read alike: a
video's split is its own "split" field (validate -> val), a sentence may name a video of another file. The
official split has 6,513 / 497 / 2,990 videos and 130,260 / 9,940 / 59,800 sentences; other numbers are a warning.

Bad entries are skipped and counted by reason (`REASONS`); a video listed under two splits stays in the first of
train, val, test. Clips without a video file are skipped and counted by split (report["missing_videos"]).

The shared loading (`load_clips`) lives in vidcap/datasets/_json_clips.py, used by the VATEX loader too.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from vidcap.datasets import SPLITS, clean_caption
from vidcap.datasets._json_clips import load_clips, read_json, valid_id
from vidcap.errors import UsageError

log = logging.getLogger(__name__)

NAME = "msrvtt"
HELP = "MSR-VTT: train_val_videodatainfo.json + test_videodatainfo.json (or one merged file) + <video_id>.mp4 folders"
EXAMPLE = (
    "  vidcap prepare msrvtt --annotations train_val_videodatainfo.json test_videodatainfo.json \\\n"
    "      --videos TrainValVideo TestVideo --out data/msrvtt\n"
    "  vidcap prepare msrvtt --annotations MSRVTT_data.json --videos MSRVTT/videos/all --out data/msrvtt"
)
PAPER_DATASET = None

SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}
OFFICIAL_VIDEOS = {"train": 6513, "val": 497, "test": 2990}
OFFICIAL_SENTENCES = {"train": 130260, "val": 9940, "test": 59800}
REASONS = (
    "malformed_json_file",  # files
    "malformed_video",  # video entries: not an object, or no usable video_id
    "unknown_split",  # video entries whose split is not train/validate/test
    "video_in_two_splits",  # videos
    "duplicate_video",  # video entries repeating a (video_id, split) already read
    "malformed_sentence",  # sentence entries: not an object, or video_id/caption not strings
    "unknown_video",  # sentences whose video_id no file lists
    "empty_caption",  # sentences
    "duplicate_sentence",  # sentences repeating a (sen_id, video_id, caption) already read
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", required=True, nargs="+", metavar="FILE",
                        help="train_val_videodatainfo.json and test_videodatainfo.json, or one merged file "
                             "(videodatainfo_2017.json, MSRVTT_data.json)")
    parser.add_argument("--videos", required=True, nargs="+", metavar="DIR",
                        help="folder(s) of <video_id>.mp4, e.g. TrainValVideo TestVideo")


# -- MSR-VTT ----------------------------------------------------------------------------------------------------
def _read_annotations(paths: list[Path], skipped: Counter[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """clip -> split, and the (clip, caption) rows, from every readable file (see the module docstring)."""
    claims: dict[str, set[str]] = {}
    sentences: list[Any] = []
    for path in paths:
        data = read_json(path, skipped)
        if data is None:
            continue
        if not (isinstance(data, dict) and isinstance(data.get("videos"), list)
                and isinstance(data.get("sentences"), list)):
            raise UsageError(f'{path}: not an MSR-VTT annotation file (expected a JSON object with "videos" and '
                             '"sentences" lists, like train_val_videodatainfo.json)')
        for video in data["videos"]:
            video_id = video.get("video_id") if isinstance(video, dict) else None
            if not valid_id(video_id):
                skipped["malformed_video"] += 1
                continue
            split = SPLIT_NAMES.get(video["split"]) if isinstance(video.get("split"), str) else None
            if split is None:
                skipped["unknown_split"] += 1
                continue
            splits = claims.setdefault(video_id, set())
            if split in splits:
                skipped["duplicate_video"] += 1
            splits.add(split)
        sentences.extend(data["sentences"])

    split_of = {clip: min(splits, key=SPLITS.index) for clip, splits in claims.items()}
    skipped["video_in_two_splits"] += sum(1 for splits in claims.values() if len(splits) > 1)

    rows: list[tuple[str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    for sentence in sentences:
        fields = sentence if isinstance(sentence, dict) else {}
        video_id, caption = fields.get("video_id"), fields.get("caption")
        if not isinstance(video_id, str) or not isinstance(caption, str):
            skipped["malformed_sentence"] += 1
            continue
        if video_id not in split_of:
            skipped["unknown_video"] += 1
            continue
        caption = clean_caption(caption)
        if not caption:
            skipped["empty_caption"] += 1
            continue
        key = (str(fields.get("sen_id")), video_id, caption)
        if key in seen:
            skipped["duplicate_sentence"] += 1
            continue
        seen.add(key)
        rows.append((video_id, caption))
    return split_of, rows


def load(out: Path, *, annotations: Sequence[str | Path], videos: Sequence[str | Path]
         ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """MSR-VTT -> (captions[video_id, split, caption], videos[video_id, split, path], report); see the module doc.

    annotations: the JSON files, videos: the folders of <video_id>.mp4.
    """
    return load_clips(NAME, annotations, videos, _read_annotations, REASONS, SPLITS, OFFICIAL_VIDEOS, OFFICIAL_SENTENCES)
