"""VATEX (English captions): vatex_{training,validation}_v1.0.json, vatex_public_test_english_v1.1.json + <videoID>.mp4.

Each annotation file is a JSON list of `{"videoID": "<youtube id>_<start 6 digits>_<end 6 digits>", "enCap": [10
strings], "chCap": [10 strings]}`; the public test file may lack chCap, the private test file
(vatex_private_test_without_annotations.json) has no captions. Only English is read: all ten enCap sentences of a
clip are its references, chCap is ignored.

The split of a file comes from its name (`split_of_file`): "training"/"train" -> train, "validation"/"val" -> val,
"private" -> blindtest (its clips only go to videos.csv, like LSMDC's blind test), otherwise "test" -> test; a name
saying none of these, or two, is a usage error. The official split has 25,991 / 3,000 / 6,000 clips with 10 English
captions each; other numbers are a warning. Many YouTube clips are gone: clips without a video file are the normal
case, skipped and counted by split (report["missing_videos"]).

Bad entries are skipped and counted by reason (`REASONS`); a clip listed under two splits stays in the first of
train, val, test, blindtest.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from vidcap.datasets import VIDEO_SPLITS, clean_caption
from vidcap.datasets._json_clips import load_clips, read_json, valid_id
from vidcap.errors import UsageError

log = logging.getLogger(__name__)

NAME = "vatex"
HELP = "VATEX (English): vatex_training_v1.0.json, vatex_validation_v1.0.json, ... + a folder of <videoID>.mp4"
EXAMPLE = (
    "  vidcap prepare vatex --videos vatex_videos --out data/vatex --annotations vatex_training_v1.0.json \\\n"
    "      vatex_validation_v1.0.json vatex_public_test_english_v1.1.json vatex_private_test_without_annotations.json"
)
PAPER_DATASET = None

EXPECTED_FILES = (
    "vatex_training_v1.0.json",
    "vatex_validation_v1.0.json",
    "vatex_public_test_english_v1.1.json",
    "vatex_private_test_without_annotations.json",
)
# split -> the words of a file name that give it
NAME_WORDS = {"train": {"training", "train"}, "val": {"validation", "val"}, "test": {"test"}, "blindtest": {"private"}}
OFFICIAL_CLIPS = {"train": 25991, "val": 3000, "test": 6000}
OFFICIAL_CAPTIONS = {split: 10 * n for split, n in OFFICIAL_CLIPS.items()}
REASONS = (
    "malformed_json_file",  # files
    "malformed_entry",  # entries: not an object, or no usable videoID
    "no_english_caption",  # entries of train/val/test left without an English caption (enCap missing or all bad)
    "malformed_caption",  # enCap items that are not strings
    "empty_caption",  # enCap items that are empty
    "clip_in_two_splits",  # entries of a clip already read in another split
    "duplicate_clip",  # entries of a clip already read in the same split
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", required=True, nargs="+", metavar="FILE",
                        help="VATEX JSON files; each one's split comes from its name: " + ", ".join(EXPECTED_FILES))
    parser.add_argument("--videos", required=True, nargs="+", metavar="DIR", help="folder(s) of <videoID>.mp4")


def split_of_file(path: Path) -> str:
    """train | val | test | blindtest from the words of a file name (see the module docstring)."""
    words = set(re.split(r"[^a-z0-9]+", path.name.lower()))
    found = {split for split, keys in NAME_WORDS.items() if keys & words}
    if "blindtest" in found:
        found.discard("test")  # the private test file's name says "test" too
    if len(found) != 1:
        raise UsageError(f"{path}: cannot tell its VATEX split from the name (expected a name saying training, "
                         f"validation, test or private test, like {', '.join(EXPECTED_FILES)})")
    return found.pop()


def _english(captions: Any, skipped: Counter[str]) -> list[str]:
    """The usable enCap sentences of an entry, counting the bad ones; [] when enCap is missing or not a list."""
    kept = []
    for caption in captions if isinstance(captions, list) else ():
        if not isinstance(caption, str):
            skipped["malformed_caption"] += 1
        elif not (caption := clean_caption(caption)):
            skipped["empty_caption"] += 1
        else:
            kept.append(caption)
    return kept


def _read_annotations(paths: list[Path], skipped: Counter[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """clip -> split, and the (clip, caption) rows, files read in split order (see the module docstring)."""
    files = sorted(((path, split_of_file(path)) for path in paths), key=lambda item: VIDEO_SPLITS.index(item[1]))
    split_of: dict[str, str] = {}
    rows: list[tuple[str, str]] = []
    for path, split in files:
        entries = read_json(path, skipped)
        if entries is None:
            continue
        if not isinstance(entries, list) or (entries and not any(
                isinstance(entry, dict) and "videoID" in entry for entry in entries)):
            raise UsageError(f'{path}: not a VATEX annotation file (expected a JSON list of objects with "videoID" '
                             'and "enCap", like vatex_training_v1.0.json)')
        without_captions = skipped["no_english_caption"]
        for entry in entries:
            clip = entry.get("videoID") if isinstance(entry, dict) else None
            if not valid_id(clip):
                skipped["malformed_entry"] += 1
                continue
            captions = [] if split == "blindtest" else _english(entry.get("enCap"), skipped)
            if split != "blindtest" and not captions:
                skipped["no_english_caption"] += 1
                continue
            known = split_of.get(clip)
            if known is not None:
                skipped["duplicate_clip" if known == split else "clip_in_two_splits"] += 1
                continue
            split_of[clip] = split
            rows.extend((clip, caption) for caption in captions)
        if entries and skipped["no_english_caption"] - without_captions == len(entries):
            log.warning("%s: no entry has English captions (enCap); for the blind test, pass a file named "
                        "like vatex_private_test_without_annotations.json", path)
    return split_of, rows


def load(out: Path, *, annotations: Sequence[str | Path], videos: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """VATEX -> (captions[video_id, split, caption], videos[video_id, split, path], report); see the module doc.

    annotations: the JSON files, videos: the folders of <videoID>.mp4. report["file_splits"]: file -> its split.
    """
    captions, videos, report = load_clips(NAME, annotations, videos, _read_annotations, REASONS, VIDEO_SPLITS, OFFICIAL_CLIPS,
                                          OFFICIAL_CAPTIONS)
    report["file_splits"] = {Path(p).name: split_of_file(Path(p)) for p in annotations}
    return captions, videos, report
