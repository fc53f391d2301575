"""Shared loading for datasets annotated in JSON files with one video file per clip (MSR-VTT, VATEX).

A loader reads its annotation files into {clip: split} and (clip, caption) rows, counting what it skips by reason;
`load_clips` then matches clips to video files, builds the captions and videos tables and the report, and warns when
the counts differ from the official release. Private module: the dataset registry skips names starting with "_".
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from vidcap.datasets import SPLITS, byte_order, list_videos, order_captions
from vidcap.errors import UsageError

log = logging.getLogger(__name__)


def valid_id(value: Any) -> bool:
    """A clip id usable as a file stem: a non-empty string without whitespace or path separators, no leading dot."""
    return (
        isinstance(value, str) and value != "" and not value.startswith(".")
        and not any(c.isspace() or c in "/\\" for c in value)
    )


def read_json(path: Path, skipped: Counter[str]) -> Any:
    """The parsed file, or None (counted as skipped["malformed_json_file"], with a warning) if it is not JSON.

    A missing or unreadable file is a UsageError: there is nothing to count.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: annotation file not found") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot read it: {error.strerror}") from None
    try:
        return json.loads(data)  # bytes: json detects UTF-8/16/32 and a BOM itself
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning("%s: not valid JSON (%s); file skipped", path, error)
        skipped["malformed_json_file"] += 1
        return None


def find_videos(folders: Iterable[str | Path]) -> dict[str, str]:
    """clip id -> absolute path of its video file; the first folder holding a clip wins (one listing per folder)."""
    paths: dict[str, str] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise UsageError(f"{folder}: video folder not found")
        base = folder.resolve()
        for stem, name in list_videos(base).items():
            paths.setdefault(stem, str(base / name))
    return paths


def _per_split(values: Iterable[str], splits: tuple[str, ...]) -> dict[str, int]:
    counts = Counter(values)
    return {split: counts.get(split, 0) for split in splits}


def build_tables(
    name: str,
    split_of: Mapping[str, str],
    caption_rows: list[tuple[str, str]],
    paths: Mapping[str, str],
    skipped: Counter[str],
    reasons: tuple[str, ...],
    splits: tuple[str, ...],
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The captions and videos tables and the report's counts, from what the annotations say and the files found.

    split_of: clip -> split for every clip kept from the annotations; caption_rows: (clip, caption) in file order;
    paths: clip -> video file. Clips without a video are dropped with their captions and counted by split. Clips
    are ordered by split, then byte order; each clip's captions keep their file order. Logs one line summing up
    the skipped entries.
    """
    clips = sorted((c for c in split_of if c in paths), key=lambda c: (splits.index(split_of[c]), c.encode("utf-8")))
    if not clips:
        example = next(iter(byte_order(split_of)), "CLIP")
        raise UsageError(f"none of the {len(split_of)} {name} clips has a video file (expected files like "
                         f"{example}.mp4 in the --videos folders)")
    videos = pd.DataFrame({"video_id": clips, "split": [split_of[c] for c in clips], "path": [paths[c] for c in clips]})
    captions = pd.DataFrame(caption_rows, columns=["video_id", "caption"])
    captions.insert(1, "split", captions["video_id"].map(split_of))
    in_annotations = captions["split"].tolist()
    captions = order_captions(captions[captions["video_id"].isin(paths)], clips)
    missing = _per_split((s for c, s in split_of.items() if c not in paths), splits)
    report = {
        "skipped": {reason: skipped.get(reason, 0) for reason in reasons},
        "clips_in_annotations": _per_split(split_of.values(), splits),
        "captions_in_annotations": _per_split(in_annotations, SPLITS),
        "missing_videos": missing,
        "videos_not_in_annotations": sum(1 for c in paths if c not in split_of),
        "clips_kept": len(clips),
        "captions_kept": len(captions),
    }
    dataset_log = logging.getLogger(f"vidcap.datasets.{name}")
    bad = {reason: n for reason, n in report["skipped"].items() if n}
    if bad:
        dataset_log.warning("%s: skipped %s", name,
                            ", ".join(f"{reason.replace('_', ' ')} {n}" for reason, n in bad.items()))
    dataset_log.info("%s: %d captions of %d clips kept; clips without a video: %s", name, len(captions),
                     len(clips), ", ".join(f"{split} {n}" for split, n in missing.items()))
    return captions, videos, report


def warn_unofficial_sizes(name: str, report: Mapping[str, Any], clips: Mapping[str, int],
                          captions: Mapping[str, int]) -> None:
    """One warning if a split found in the annotations has other clip or caption numbers than the official ones.

    Splits absent from the annotations (a file not given) are left out: the split table shows them empty.
    """
    found = [s for s in clips if report["clips_in_annotations"][s]]
    have = [(report["clips_in_annotations"][s], report["captions_in_annotations"][s]) for s in found]
    want = [(clips[s], captions[s]) for s in found]
    if have != want:
        logging.getLogger(f"vidcap.datasets.{name}").warning(
            "%s: the annotations hold %s clips and %s captions (%s), not the official %s and %s", name,
            "/".join(str(n) for n, _ in have), "/".join(str(n) for _, n in have), "/".join(found),
            "/".join(str(n) for n, _ in want), "/".join(str(n) for _, n in want),
        )


def load_clips(
    name: str,
    annotation_files: Sequence[str | Path],
    video_dirs: Sequence[str | Path],
    read_annotations: Callable[[list[Path], Counter[str]], tuple[dict[str, str], list[tuple[str, str]]]],
    reasons: tuple[str, ...],
    splits: tuple[str, ...],
    official_clips: Mapping[str, int],
    official_captions: Mapping[str, int],
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """A dataset's `load`: the annotation files through `read_annotations` (-> clip -> split, (clip, caption) rows,
    counting what it skips), the video folders through `find_videos`, then `build_tables` and `warn_unofficial_sizes`."""
    annotations = [Path(p) for p in annotation_files]
    paths = find_videos(video_dirs)
    skipped: Counter[str] = Counter()
    split_of, rows = read_annotations(annotations, skipped)
    if not split_of:
        raise UsageError(f"{', '.join(map(str, annotations))}: no usable {name} clip in the annotations")
    captions, videos, counts = build_tables(name, split_of, rows, paths, skipped, reasons, splits)
    report = {
        "dataset": name,
        "annotations": [str(p.resolve()) for p in annotations],
        "videos": [str(Path(d).resolve()) for d in video_dirs],
        **counts,
    }
    warn_unofficial_sizes(name, report, official_clips, official_captions)
    return captions, videos, report
