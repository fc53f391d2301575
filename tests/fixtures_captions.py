"""Generated annotation files in the official MSR-VTT and VATEX formats (full size in well under a second).

Text is generated, never downloaded: the loaders only need the structure of the files (docs/formats.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SUBJECTS = ("a man", "a woman", "two kids", "a dog", "the chef", "a band", "someone")
VERBS = ("is cooking", "is riding", "plays", "is talking about", "shows", "is slicing", "watches", "paints",
         "is throwing", "sings about", "drives")
OBJECTS = ("a car", "the guitar", "some food", "a horse", "a ball", "an onion", "the news", "a song", "the street",
           "a cartoon", "the camera", "a game", "the kitchen")
# YouTube ids use letters, digits, '-' and '_'
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

MSRVTT_SPLITS = (("train", 6513), ("validate", 497), ("test", 2990))  # video0 ... video9999 in this order
VATEX_SIZES = {"train": 25991, "val": 3000, "test": 6000, "blindtest": 6278}  # blindtest: the private test


def caption(k: int) -> str:
    """The k-th generated sentence (1001 distinct ones, then they repeat)."""
    return f"{SUBJECTS[k % 7]} {VERBS[k // 7 % 11]} {OBJECTS[k // 77 % 13]}."


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# -- MSR-VTT -----------------------------------------------------------------------------------------------------
def msrvtt_videos(num_videos: int = 10000) -> list[tuple[str, str]]:
    """(video_id, split) of the official release: train video0-6512, validate video6513-7009, test video7010-9999."""
    splits = [split for split, n in MSRVTT_SPLITS for _ in range(n)]
    return [(f"video{i}", splits[i]) for i in range(num_videos)]


def msrvtt_json(videos: list[tuple[str, str]], per_video: int = 20, first_sen_id: int = 0) -> dict[str, Any]:
    """One videodatainfo file: each video has `per_video` sentences, spread over the file as in the release.

    Sentence k (sen_id first_sen_id + k) describes video k % len(videos): a video's sentences are far apart.
    """
    return {
        "info": {"contributor": "generated", "data_created": "2016-04-01", "version": "1.0", "year": "2016"},
        "videos": [
            {"category": i % 20, "url": f"https://www.youtube.com/watch?v={youtube_id(i)}", "video_id": video_id,
             "start time": 10.0 + i % 7, "end time": 25.5 + i % 7, "split": split, "id": int(video_id[5:])}
            for i, (video_id, split) in enumerate(videos)
        ],
        "sentences": [
            {"caption": caption(first_sen_id + k), "video_id": videos[k % len(videos)][0], "sen_id": first_sen_id + k}
            for k in range(per_video * len(videos))
        ],
    }


def msrvtt_release(folder: Path, per_video: int = 20, merged: bool = False) -> list[Path]:
    """train_val_videodatainfo.json and test_videodatainfo.json, full size (10,000 videos); with `merged`, the same
    videos and sentences in one MSRVTT_data.json."""
    videos = msrvtt_videos()
    train_val = msrvtt_json([v for v in videos if v[1] != "test"], per_video)
    test = msrvtt_json([v for v in videos if v[1] == "test"], per_video, len(train_val["sentences"]))
    if merged:
        both = {"info": train_val["info"], "videos": train_val["videos"] + test["videos"],
                "sentences": train_val["sentences"] + test["sentences"]}
        return [write_json(folder / "MSRVTT_data.json", both)]
    return [write_json(folder / "train_val_videodatainfo.json", train_val),
            write_json(folder / "test_videodatainfo.json", test)]


# -- VATEX -------------------------------------------------------------------------------------------------------
def youtube_id(i: int) -> str:
    """An 11-character YouTube-like id, distinct for each i (an odd multiplier permutes the ids modulo 64**11)."""
    n, chars = i * 0x9E3779B97F4A7C15 % 64**11, []
    for _ in range(11):
        n, digit = divmod(n, 64)
        chars.append(ALPHABET[digit])
    return "".join(chars)


def vatex_clip(i: int) -> str:
    start = (i * 37) % 500
    return f"{youtube_id(i)}_{start:06d}_{start + 10:06d}"


def vatex_entries(first: int, count: int, english: bool = True, chinese: bool = True) -> list[dict[str, Any]]:
    """`count` entries for clips first .. first + count - 1; each has 10 enCap (and 10 chCap) sentences."""
    entries = []
    for i in range(first, first + count):
        entry: dict[str, Any] = {"videoID": vatex_clip(i)}
        if english:
            entry["enCap"] = [caption(10 * i + k) for k in range(10)]
        if chinese:
            entry["chCap"] = [f"一个人在做第{k}件事。" for k in range(10)]
        entries.append(entry)
    return entries


def vatex_release(folder: Path) -> dict[str, Path]:
    """The four official files, full size: split -> path (clips numbered train, val, test, blindtest in turn)."""
    names = {
        "train": "vatex_training_v1.0.json",
        "val": "vatex_validation_v1.0.json",
        "test": "vatex_public_test_english_v1.1.json",
        "blindtest": "vatex_private_test_without_annotations.json",
    }
    paths, first = {}, 0
    for split, count in VATEX_SIZES.items():
        entries = vatex_entries(first, count, english=split != "blindtest", chinese=split in ("train", "val"))
        paths[split] = write_json(folder / names[split], entries)
        first += count
    return paths
