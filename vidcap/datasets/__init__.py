"""The dataset layer: one module per dataset, one set of tables on disk.

A dataset is one module (or package) `vidcap/datasets/<name>.py` that defines
    NAME, HELP, EXAMPLE              # `vidcap prepare NAME`, its one-line help, example command lines
    PAPER_DATASET                    # key of vidcap.report.table.PAPER_TABLE1, or None when the paper has no row for it
    add_arguments(parser)            # its own options (--out, --min-count, --max-vocab are added here for all)
    load(args) -> (captions, videos, report)
                                     # captions [video_id, split, caption] (raw text), videos [video_id, split, path],
                                     # report: JSON-able counts; optional report["missing_videos"] = {split: n}
    content_metrics(data_dir, predictions, reversed_predictions) -> dict   # optional: dataset-specific metrics
    build_vocab(args, captions) -> Vocabulary        # optional: a vocabulary of its own instead of the train counts
    write_features(args, captions, videos) -> dict   # optional: a feature store of its own; counts for prepare.json
`registry()` finds them by scanning this package, so adding a dataset edits no list. `prepare` runs one of them,
tokenises every caption with coco-caption's PTB tokenizer (one Java call; a captions table that comes with a
`tokens` column keeps it), builds the vocabulary from the train split and writes the data directory;
`read_captions` and `read_videos` read it back (docs/formats.md).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import os
import pkgutil
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from vidcap.atomic import atomic_path, write_json
from vidcap.datasets.encoding import decode_text
from vidcap.errors import UsageError
from vidcap.text.vocab import SPECIAL_TOKENS, Vocabulary

log = logging.getLogger(__name__)

CAPTION_COLUMNS = ("video_id", "split", "caption", "tokens")  # tokens: PTB tokens joined by single spaces
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
    _make_out_dir(out_dir)
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
    _make_out_dir(Path(out_dir))
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
    that has features but no video file, e.g. youtube2text-arctic) stays empty."""
    data_dir = Path(data_dir)
    table = _read_table(data_dir / "videos.csv", VIDEO_COLUMNS, VIDEO_SPLITS)
    base = data_dir.resolve()
    table["path"] = [p if not p or os.path.isabs(p) else str(base / p) for p in table["path"]]
    return table


# ---------------------------------------------------------------------------------------------------------------
# The registry and `prepare`

PROTOCOL = ("NAME", "HELP", "EXAMPLE", "PAPER_DATASET", "add_arguments", "load")


@cache
def registry() -> dict[str, ModuleType]:
    """NAME -> dataset module, for every module of this package that defines the dataset protocol (sorted by name).

    A module that defines some of the protocol's names but not all is a programming error: TypeError names it.
    """
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        present = [name for name in PROTOCOL if hasattr(module, name)]
        if not present:
            continue  # a helper module, not a dataset
        if len(present) < len(PROTOCOL):
            missing = ", ".join(name for name in PROTOCOL if name not in present)
            raise TypeError(f"{module.__name__}: a dataset module must also define {missing}")
        found[module.NAME] = module
    return dict(sorted(found.items()))


def _module(name: str) -> ModuleType:
    datasets = registry()
    if name not in datasets:
        raise UsageError(f"unknown dataset {name!r} (choose from {', '.join(datasets)})")
    return datasets[name]


def dataset_module(data_dir: str | os.PathLike) -> ModuleType | None:
    """The module of the dataset DIR was prepared from (DIR/prepare.json's "dataset"); None when there is no
    prepare.json or it names no registered dataset."""
    path = Path(data_dir) / "prepare.json"
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("dataset")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as error:
        raise UsageError(f"{path}: cannot read it: {error}") from None
    module = registry().get(name)
    if module is None:
        log.warning("%s: dataset %r is not one of %s", path, name, ", ".join(registry()))
    return module


def content_metrics(
    data_dir: str | os.PathLike, predictions: Mapping[str, str], reversed_predictions: Mapping[str, str] | None
) -> dict[str, float]:
    """The dataset's own metrics of `predictions` (e.g. the synthetic dataset's objects and order), through the
    `content_metrics` hook of the dataset DIR was prepared from; {} when it has none."""
    module = dataset_module(data_dir)
    hook = getattr(module, "content_metrics", None)
    if hook is None:
        return {}
    return hook(Path(data_dir), dict(predictions), None if reversed_predictions is None else dict(reversed_predictions))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_prepare_arguments(parser: argparse.ArgumentParser, module: ModuleType) -> None:
    """The dataset's own options, then the ones every dataset shares."""
    module.add_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--min-count", type=positive_int, default=2, metavar="N",
                        help="keep words seen at least N times in the train captions (default 2)")
    parser.add_argument("--max-vocab", type=int, default=None, metavar="V",
                        help="cap the vocabulary size V, special tokens included (default: no cap)")


def prepare_parser(name: str) -> argparse.ArgumentParser:
    """The parser of `vidcap prepare NAME`."""
    module = _module(name)
    parser = argparse.ArgumentParser(prog=f"vidcap prepare {name}", description=module.HELP,
                                     epilog="example:\n" + module.EXAMPLE.strip("\n"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prepare_arguments(parser, module)
    return parser


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


def prepare_args(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """`prepare` with parsed arguments (what `vidcap prepare` runs)."""
    from vidcap.text.metrics import find_java

    module = _module(name)
    java = find_java()  # before any work: the dataset may take minutes to load
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if args.max_vocab is not None and args.max_vocab <= len(SPECIAL_TOKENS):
        raise UsageError(f"--max-vocab must be more than {len(SPECIAL_TOKENS)} (the special tokens), "
                         f"got {args.max_vocab}")
    captions, videos, report = module.load(args)
    captions, untokenized = tokenize_captions(captions, java)
    if captions.empty:
        raise UsageError(f"{name}: no captions kept, nothing to write")
    report = {"dataset": module.NAME, **report}
    options = {key: value for key, value in vars(args).items() if key != "dataset"}
    report["options"] = {**report.get("options", {}), **options}
    report["captions_without_tokens"] = untokenized
    report["splits"] = split_table(captions, videos, report.get("missing_videos"))
    if hasattr(module, "build_vocab"):
        _make_out_dir(out)
        vocab = module.build_vocab(args, captions)
        vocab.save(out / "vocab.json")
    else:
        vocab = write_vocab(out, captions, min_count=args.min_count, max_size=args.max_vocab)
    report["vocab_size"] = len(vocab)
    if hasattr(module, "write_features"):
        report.update(module.write_features(args, captions, videos))
    write_tables(out, captions, videos, report)  # prepare.json last: its presence means everything is written
    log.info("%s: %d captions of %d clips written to %s", name, len(captions), len(videos), out)
    return report


def prepare(name: str, argv: list[str]) -> dict[str, Any]:
    """Exactly what `vidcap prepare NAME ARGV...` does, without printing: load the dataset, tokenise its captions,
    write DIR/captions.csv, videos.csv, vocab.json (train split only) and prepare.json. Returns the report written
    to prepare.json. Needs Java (the PTB tokenizer)."""
    return prepare_args(name, prepare_parser(name).parse_args(argv))
