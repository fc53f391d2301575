"""Split rules: MSVD's standard split (byte order, 1200/100/670) and the table of clips and captions per split.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import pandas as pd

from vidcap.datasets.tables import VIDEO_SPLITS
from vidcap.errors import UsageError

log = logging.getLogger(__name__)

# The standard Youtube2Text split (Yao et al. 2015; Venugopalan et al. 2015): 1970 clips in byte order.
MSVD_SPLIT_SIZES = {"train": 1200, "val": 100, "test": 670}
MSVD_NUM_CLIPS = sum(MSVD_SPLIT_SIZES.values())


def byte_order(ids: Iterable[str]) -> list[str]:
    """Distinct ids sorted in plain byte order (C locale: '-' < digits < upper case < '_' < lower case)."""
    return sorted(set(ids), key=lambda s: s.encode("utf-8"))


def split_sizes(num_clips: int) -> tuple[int, int, int]:
    """(train, val, test) clip counts: exactly 1200/100/670 for 1970 clips, else the same ratios.

    With another number of clips val and test get round(n * 100 / 1970) and round(n * 670 / 1970) clips, at least
    one each, and train the rest, so that no split is empty.
    """
    if num_clips == MSVD_NUM_CLIPS:
        return MSVD_SPLIT_SIZES["train"], MSVD_SPLIT_SIZES["val"], MSVD_SPLIT_SIZES["test"]
    if num_clips < 3:
        raise UsageError(f"only {num_clips} clip(s): a train/val/test split needs at least 3")
    n_val = max(1, round(num_clips * MSVD_SPLIT_SIZES["val"] / MSVD_NUM_CLIPS))
    n_test = max(1, round(num_clips * MSVD_SPLIT_SIZES["test"] / MSVD_NUM_CLIPS))
    return num_clips - n_val - n_test, n_val, n_test


def standard_split(clip_ids: Iterable[str]) -> dict[str, str]:
    """The MSVD split rule: clip id -> "train" | "val" | "test".

    The distinct ids are sorted in plain byte order (vid1..vidN); the first 1200 are train, the next 100 val and the
    last 670 test. With a number of clips other than 1970 the split is proportional (see `split_sizes`) and a
    warning says so.
    """
    ordered = byte_order(clip_ids)
    n_train, n_val, n_test = split_sizes(len(ordered))
    if len(ordered) != MSVD_NUM_CLIPS:
        log.warning(
            "%d clips instead of the standard %d: split proportionally (1200:100:670) into %d/%d/%d",
            len(ordered), MSVD_NUM_CLIPS, n_train, n_val, n_test,
        )
    return {
        clip: "train" if i < n_train else "val" if i < n_train + n_val else "test" for i, clip in enumerate(ordered)
    }


def split_table(captions: pd.DataFrame, videos: pd.DataFrame,
                missing_videos: Mapping[str, int] | None = None) -> dict[str, dict[str, int]]:
    """{split: {"clips", "captions", "missing_videos"}} for every split with any of them (a dataset may count
    clips that have no split, e.g. MSVD's unnumbered clips without a video, under its own key)."""
    clips = videos["split"].value_counts()
    caps = captions["split"].value_counts()
    missing = dict(missing_videos or {})
    names = [*VIDEO_SPLITS, *(k for k in missing if k not in VIDEO_SPLITS)]
    table = {name: {"clips": int(clips.get(name, 0)), "captions": int(caps.get(name, 0)),
                    "missing_videos": int(missing.get(name, 0))} for name in names}
    return {name: row for name, row in table.items() if any(row.values())}
