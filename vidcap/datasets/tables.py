"""The data directory's tables: DIR/captions.csv, DIR/videos.csv, DIR/vocab.json and DIR/prepare.json.

`write_tables` and `write_vocab` write them (atomically, vidcap.atomic), `read_captions` and `read_videos` read
them back (docs/formats.md); `tokenize_captions` adds the PTB tokens every caption is stored with, and
`clean_caption`, `list_videos` and `order_captions` are what the dataset modules share while building them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from vidcap.atomic import atomic_path, write_json
from vidcap.datasets.encoding import decode_text
from vidcap.errors import UsageError
from vidcap.text.vocab import Vocabulary
from vidcap.video.windows import window_ref

CAPTION_COLUMNS = ("video_id", "split", "caption", "tokens")  # tokens: PTB tokens joined by single spaces
VIDEO_COLUMNS = ("video_id", "split", "path")
SPLITS = ("train", "val", "test")
VIDEO_SPLITS = (*SPLITS, "blindtest")
# A clip's video may come in any of these containers; the first one found wins (MSVD ships .avi).
VIDEO_EXTENSIONS = (".avi", ".mp4", ".webm", ".mkv", ".mov")


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


def _check_columns(table: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} table lacks column(s) {', '.join(missing)}")


def _ordered(table: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    return table[list(columns) + [c for c in table.columns if c not in columns]]


def make_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{out_dir}: exists and is not a folder") from None
    except OSError as error:
        raise UsageError(f"{out_dir}: cannot create the output folder: {error.strerror}") from None


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def write_tables(
    out_dir: str | os.PathLike, captions: pd.DataFrame, videos: pd.DataFrame, report: Mapping[str, Any]
) -> dict[str, Path]:
    """Write DIR/captions.csv, DIR/videos.csv and DIR/prepare.json, each atomically (vidcap.atomic).

    captions: columns video_id, split, caption, tokens (+ extras); videos: video_id, split, path (+ extras).
    prepare.json is written last, so its presence means the tables are complete. Returns the paths written.
    """
    out_dir = Path(out_dir)
    _check_columns(captions, CAPTION_COLUMNS, "captions")
    _check_columns(videos, VIDEO_COLUMNS, "videos")
    make_out_dir(out_dir)
    paths = {name: out_dir / f"{name}.csv" for name in ("captions", "videos")}
    paths["prepare"] = out_dir / "prepare.json"
    _write_csv(paths["captions"], _ordered(captions, CAPTION_COLUMNS))
    _write_csv(paths["videos"], _ordered(videos, VIDEO_COLUMNS))
    write_json(paths["prepare"], dict(report))
    return paths


def write_vocab(
    out_dir: str | os.PathLike, captions: pd.DataFrame, min_count: int = 2, max_size: int | None = None
) -> Vocabulary:
    """Build the vocabulary from the *train* captions' tokens only and save it as DIR/vocab.json."""
    _check_columns(captions, CAPTION_COLUMNS, "captions")
    train = captions.loc[captions["split"] == "train", "tokens"]
    if train.empty:
        raise UsageError(f"{out_dir}: no train captions to build the vocabulary from")
    vocab = Vocabulary.build((str(t).split() for t in train), min_count=min_count, max_size=max_size)
    make_out_dir(Path(out_dir))
    vocab.save(Path(out_dir) / "vocab.json")
    return vocab


def _read_table(path: Path, columns: tuple[str, ...], splits: tuple[str, ...]) -> pd.DataFrame:
    try:
        text, _ = decode_text(path, path.read_bytes())  # UTF-8 with or without a BOM, UTF-16 with one
        # All text, and "NA"/"null" captions stay words rather than becoming missing values.
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise UsageError(f"{path}: not found (run `vidcap prepare` first)") from None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as error:
        raise UsageError(f"{path}: cannot read it: {' '.join(str(error).split())}") from None
    if "caption" in columns and "tokens" not in table.columns:
        raise UsageError(f"{path}: no tokens column (prepared by an older vidcap): rerun `vidcap prepare`")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UsageError(f"{path}: missing column(s) {', '.join(missing)}")
    unknown = sorted(set(table["split"]) - set(splits))
    if unknown:
        raise UsageError(f"{path}: unknown split(s) {', '.join(map(repr, unknown))} (expected {', '.join(splits)})")
    return table


def read_captions(data_dir: str | os.PathLike) -> pd.DataFrame:
    """DIR/captions.csv as a DataFrame of strings (video_id, split, caption, tokens, extras)."""
    return _read_table(Path(data_dir) / "captions.csv", CAPTION_COLUMNS, SPLITS)


def read_videos(data_dir: str | os.PathLike) -> pd.DataFrame:
    """DIR/videos.csv with every `path` made absolute (relative paths are relative to DIR); an empty path (a clip
    that has features but no video file, e.g. youtube2text-arctic) stays empty. A row with `start` and `end` seconds
    (a clip of a longer video, `vidcap prepare captions`) gets the path `PATH#t=START,END` that the reader samples
    inside (vidcap.video.windows)."""
    data_dir = Path(data_dir)
    path = data_dir / "videos.csv"
    table = _read_table(path, VIDEO_COLUMNS, VIDEO_SPLITS)
    base = data_dir.resolve()
    table["path"] = [p if not p or os.path.isabs(p) else str(base / p) for p in table["path"]]
    if {"start", "end"} <= set(table.columns):
        try:
            table["path"] = [window_ref(p, float(s), float(e)) if p and (s or e) else p
                             for p, s, e in zip(table["path"], table["start"], table["end"], strict=True)]
        except ValueError as error:
            raise UsageError(f"{path}: bad start/end: {error}") from None
    return table


def tokenize_captions(captions: pd.DataFrame, java: str | None = None) -> tuple[pd.DataFrame, int]:
    """Add the `tokens` column: every caption through coco-caption's PTB tokenizer in one Java call (lower case,
    punctuation dropped, as the metrics see it; docs/metrics.md). A table that has a `tokens` column already (a
    dataset shipped tokenised) keeps it. Captions left with no token are dropped. Returns (the table, how many were
    dropped)."""
    from vidcap.text.metrics import ptb_tokenize

    if "tokens" in captions.columns:
        table = captions.assign(tokens=[" ".join(str(t).split()) for t in captions["tokens"]])
    else:
        tokens = ptb_tokenize({"all": [str(c) for c in captions["caption"]]}, java=java)["all"]
        table = captions.assign(tokens=tokens)
    kept = table["tokens"] != ""
    return table[kept].reset_index(drop=True), int((~kept).sum())
