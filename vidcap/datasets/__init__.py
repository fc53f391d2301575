"""The dataset layer: one module per annotation format, one pair of tables on disk.

Every loader (`msvd.load`, `lsmdc.load`, `synthetic.generate`) returns a captions table (`video_id, split,
caption`, one row per reference caption), a videos table (`video_id, split, path`, one row per clip with a video
file) and a report (what was kept and skipped, and why). `write_tables` and `write_vocab` put them in a data
directory; `read_captions` and `read_videos` read them back (docs/architecture.md, "Data directory").
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from vidcap.errors import UsageError
from vidcap.vocab import Vocabulary

log = logging.getLogger(__name__)

CAPTION_COLUMNS = ("video_id", "split", "caption")
VIDEO_COLUMNS = ("video_id", "split", "path")
SPLITS = ("train", "val", "test")
VIDEO_SPLITS = (*SPLITS, "blindtest")
# A clip's video may come in any of these containers; the first one found wins (MSVD ships .avi).
VIDEO_EXTENSIONS = (".avi", ".mp4", ".webm", ".mkv", ".mov")

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


def order_captions(captions: pd.DataFrame, clips: list[str]) -> pd.DataFrame:
    """Captions grouped by clip in the order of `clips`; a stable sort keeps each clip's captions in file order."""
    rank = {clip: i for i, clip in enumerate(clips)}
    return captions.iloc[captions["video_id"].map(rank).argsort(kind="stable")].reset_index(drop=True)


def list_videos(folder: Path) -> dict[str, str]:
    """stem -> file name of the video files in `folder` (one directory listing; .avi preferred, then the others)."""
    rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
    found: dict[str, tuple[int, str]] = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return {}
    for entry in entries:
        stem, ext = os.path.splitext(entry.name)
        order = rank.get(ext.lower())
        if order is None or entry.name.startswith("."):
            continue
        if entry.is_file() and (stem not in found or order < found[stem][0]):
            found[stem] = (order, entry.name)
    return {stem: name for stem, (_, name) in found.items()}


def clean_caption(text: str) -> str:
    """One line, single spaces: annotations hold newlines and tabs that would break the CSV readers and METEOR."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------------------------
def _atomic_write(path: Path, write) -> None:
    """Call write(handle) on a temp file beside `path`, then rename it into place: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_columns(table: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} table lacks column(s) {', '.join(missing)}")


def _ordered(table: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    return table[list(columns) + [c for c in table.columns if c not in columns]]


def _make_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{out_dir}: exists and is not a folder") from None
    except OSError as error:
        raise UsageError(f"{out_dir}: cannot create the output folder: {error.strerror}") from None


def write_tables(
    out_dir: str | os.PathLike, captions: pd.DataFrame, videos: pd.DataFrame, report: Mapping[str, Any]
) -> dict[str, Path]:
    """Write DIR/captions.csv, DIR/videos.csv and DIR/prepare.json, each atomically (temp file, then rename).

    captions: columns video_id, split, caption (+ extras); videos: video_id, split, path (+ extras).
    prepare.json is written last, so its presence means the tables are complete. Returns the paths written.
    """
    out_dir = Path(out_dir)
    _check_columns(captions, CAPTION_COLUMNS, "captions")
    _check_columns(videos, VIDEO_COLUMNS, "videos")
    _make_out_dir(out_dir)
    paths = {name: out_dir / f"{name}.csv" for name in ("captions", "videos")}
    paths["prepare"] = out_dir / "prepare.json"
    _atomic_write(paths["captions"], lambda h: _ordered(captions, CAPTION_COLUMNS).to_csv(h, index=False))
    _atomic_write(paths["videos"], lambda h: _ordered(videos, VIDEO_COLUMNS).to_csv(h, index=False))
    _atomic_write(paths["prepare"], lambda h: h.write(json.dumps(report, indent=2, default=str) + "\n"))
    return paths


def write_vocab(
    out_dir: str | os.PathLike, captions: pd.DataFrame, min_count: int = 2, max_size: int | None = None
) -> Vocabulary:
    """Build the vocabulary from the *train* captions only and save it as DIR/vocab.json."""
    _check_columns(captions, CAPTION_COLUMNS, "captions")
    train = captions.loc[captions["split"] == "train", "caption"]
    if train.empty:
        raise UsageError(f"{out_dir}: no train captions to build the vocabulary from")
    vocab = Vocabulary.build(train.astype(str), min_count=min_count, max_size=max_size)
    _make_out_dir(Path(out_dir))
    vocab.save(Path(out_dir) / "vocab.json")
    return vocab


def _read_table(path: Path, columns: tuple[str, ...], splits: tuple[str, ...]) -> pd.DataFrame:
    try:
        # All text, and "NA"/"null" captions stay words rather than becoming missing values.
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise UsageError(f"{path}: not found (run `vidcap prepare` first)") from None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as error:
        raise UsageError(f"{path}: cannot read it: {' '.join(str(error).split())}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UsageError(f"{path}: missing column(s) {', '.join(missing)}")
    unknown = sorted(set(table["split"]) - set(splits))
    if unknown:
        raise UsageError(f"{path}: unknown split(s) {', '.join(map(repr, unknown))} (expected {', '.join(splits)})")
    return table


def read_captions(data_dir: str | os.PathLike) -> pd.DataFrame:
    """DIR/captions.csv as a DataFrame of strings (video_id, split, caption, extras)."""
    return _read_table(Path(data_dir) / "captions.csv", CAPTION_COLUMNS, SPLITS)


def read_videos(data_dir: str | os.PathLike) -> pd.DataFrame:
    """DIR/videos.csv with every `path` made absolute (relative paths are relative to DIR)."""
    data_dir = Path(data_dir)
    table = _read_table(data_dir / "videos.csv", VIDEO_COLUMNS, VIDEO_SPLITS)
    base = data_dir.resolve()
    table["path"] = [p if os.path.isabs(p) else str(base / p) for p in table["path"]]
    return table
