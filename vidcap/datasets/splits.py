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


# ---------------------------------------------------------------------------------------------------------------
# Seeded splits of one's own data (vidcap prepare captions / webdataset)

DEFAULT_FRACTIONS = (0.9, 0.05, 0.05)


def parse_fractions(text: str) -> tuple[float, float, float]:
    """"0.9,0.05,0.05" -> (train, val, test) fractions: three non-negative numbers with a positive train share,
    normalised to sum to 1. ValueError (argparse turns it into a usage error) otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3:
        raise ValueError(f"expected three fractions train,val,test, got {text!r}")
    values = [float(p) for p in parts]
    if any(v < 0 for v in values) or values[0] <= 0:
        raise ValueError(f"fractions must be >= 0 with a positive train share, got {text!r}")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def _val_test_sizes(n: int, fractions: tuple[float, float, float], too_few: str) -> tuple[int, int]:
    """How many of n items go to val and to test: round(n * fraction), at least one for a positive fraction when
    n >= 3; UsageError(too_few) when nothing would be left for train."""
    sizes = [round(n * f) for f in fractions[1:]]
    if n >= 3:
        sizes = [max(1, size) if fraction > 0 else 0 for size, fraction in zip(sizes, fractions[1:], strict=True)]
    n_val, n_test = sizes
    if n_val + n_test >= n:
        raise UsageError(too_few)
    return n_val, n_test


def seeded_split(video_ids: Iterable[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """video id -> split, every video in exactly one split: the distinct ids in byte order, shuffled by a seeded
    generator, then cut into round(n * val) val and round(n * test) test videos (at least one each when its fraction
    is positive and n >= 3) and the rest train. The same ids, fractions and seed give the same split on any machine."""
    import numpy as np

    ordered = byte_order(video_ids)
    n = len(ordered)
    n_val, n_test = _val_test_sizes(n, fractions, f"only {n} video(s): too few for a train/val/test split of {fractions}")
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(n)]
    return {video: "val" if i < n_val else "test" if i < n_val + n_test else "train"
            for i, video in enumerate(shuffled)}


def hashed_split(key: str, fractions: tuple[float, float, float], seed: int) -> str:
    """The split of one key by a seeded hash (blake2b of seed and key, as a number in [0, 1)): needs no other key,
    so a sample keeps its split when shards are added, and splits a million keys in one pass."""
    import hashlib

    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") / 2**64
    return "train" if point < fractions[0] else "val" if point < fractions[0] + fractions[1] else "test"


def shard_split(shards: list[str], fractions: tuple[float, float, float]) -> dict[str, str]:
    """shard -> split: the shards in the order given, the first ones train, then val, then test, in the fractions'
    proportions (at least one shard each for a positive fraction when there are at least three shards)."""
    n = len(shards)
    n_val, n_test = _val_test_sizes(
        n, fractions, f"only {n} shard(s): too few to split whole shards {fractions} (drop --split-shards)")
    n_train = n - n_val - n_test
    return {shard: "train" if i < n_train else "val" if i < n_train + n_val else "test"
            for i, shard in enumerate(shards)}
