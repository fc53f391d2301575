"""`vidcap prepare DATASET`: annotations + videos -> DIR/captions.csv, videos.csv, vocab.json, prepare.json."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from vidcap.errors import UsageError

HELP = "annotations + videos -> captions.csv, videos.csv, vocab.json (train split only) and prepare.json"
EXAMPLE = """
  vidcap prepare msvd --annotations "MSR Video Description Corpus.csv" --videos YouTubeClips --out data/msvd
  vidcap prepare lsmdc --annotations LSMDC16_annotations --videos MVAD --out data/mvad --source mvad
  vidcap prepare synthetic --out data/synth --num-videos 120 --seed 0

Run `vidcap prepare DATASET --help` for the options of each dataset.
"""

_DATASETS = {
    "msvd": (
        "Youtube2Text (MSVD): the CSV or AllVideoDescriptions.txt + a folder of <clip_id>.avi; standard split",
        '  vidcap prepare msvd --annotations "MSR Video Description Corpus.csv" --videos YouTubeClips '
        "--out data/msvd\n  vidcap prepare msvd --annotations AllVideoDescriptions.txt --videos YouTubeClips "
        "--out data/msvd",
    ),
    "lsmdc": (
        "DVS / M-VAD from LSMDC: LSMDC16_annos_{training,val,test,blindtest}.csv + VIDEOS/<MOVIE>/<CLIP_ID>.avi",
        "  vidcap prepare lsmdc --annotations LSMDC16_annotations --videos MVAD --out data/mvad --source mvad",
    ),
    "synthetic": (
        "procedurally generated videos with captions (mp4/H.264), for demos and tests",
        "  vidcap prepare synthetic --out data/synth --num-videos 120 --seed 0",
    ),
}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name, (help_text, example) in _DATASETS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"example:\n{example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == "msvd":
            p.add_argument("--annotations", required=True, metavar="FILE",
                           help='"MSR Video Description Corpus.csv" or AllVideoDescriptions.txt')
            p.add_argument("--videos", required=True, metavar="DIR", help="folder of <VideoID>_<Start>_<End>.avi")
        elif name == "lsmdc":
            p.add_argument("--annotations", required=True, metavar="DIR",
                           help="folder holding LSMDC16_annos_{training,val,test,blindtest}.csv")
            p.add_argument("--videos", required=True, metavar="DIR", help="folder of <MOVIE>/<CLIP_ID>.avi")
            p.add_argument("--source", choices=("all", "mvad", "mpii"), default="all",
                           help="keep only M-VAD clips (ids starting with 3), only MPII-MD (0/1), or all (default)")
        else:
            p.add_argument("--num-videos", type=_positive, default=None, metavar="N",
                           help="number of videos (default: the generator's)")
            p.add_argument("--seed", type=int, default=None, metavar="S", help="random seed (default: the generator's)")
            p.add_argument("--workers", type=_positive, default=1, metavar="N",
                           help="processes that render and encode videos (default 1)")
        p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
        p.add_argument("--min-count", type=_positive, default=2, metavar="N",
                       help="keep words seen at least N times in the train captions (default 2)")
        p.add_argument("--max-vocab", type=int, default=None, metavar="V",
                       help="cap the vocabulary size V, special tokens included (default: no cap)")


def _load(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    if args.dataset == "msvd":
        from vidcap.datasets import msvd

        return msvd.load(args.annotations, args.videos)
    if args.dataset == "lsmdc":
        from vidcap.datasets import lsmdc

        return lsmdc.load(args.annotations, args.videos, source=args.source)
    if importlib.util.find_spec("vidcap.datasets.synthetic") is None:
        raise UsageError("the synthetic dataset generator is not installed (vidcap/datasets/synthetic.py)")
    from vidcap.datasets import synthetic

    options = {"num_videos": args.num_videos, "seed": args.seed}
    kwargs = {key: value for key, value in options.items() if value is not None}
    return synthetic.generate(args.out, workers=args.workers, **kwargs)


def _summary(report: dict[str, Any], captions: Any, videos: Any, out: Path, vocab_size: int) -> str:
    """A few lines for the terminal: kept, skipped and why, per split, and where the files are."""
    lines = [f"prepared {report['dataset']}: {len(videos)} clips with videos, {len(captions)} captions kept"]
    rows = report.get("rows_read")
    if rows is not None:
        lines.append(f"  annotation rows read: {sum(rows.values()) if isinstance(rows, dict) else rows}")
    skipped = {**report.get("skipped_rows", {}), **report.get("skipped", {})}
    skipped = {k: v for k, v in skipped.items() if v}
    if skipped:
        lines.append("  rows skipped: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in skipped.items()))
    if report.get("files_missing"):
        lines.append("  annotation files missing: " + ", ".join(report["files_missing"]))
    if report.get("clips_without_video"):
        lines.append(f"  clips skipped (no video file): {report['clips_without_video']}")
    if report.get("split_rule"):
        lines.append(f"  split: {report['split_rule']}")
    clips = videos["split"].value_counts()
    caps = captions["split"].value_counts()
    for split in ("train", "val", "test", "blindtest"):
        if clips.get(split, 0) or caps.get(split, 0):
            lines.append(f"  {split:<9} {clips.get(split, 0):>7} clips {caps.get(split, 0):>8} captions")
    lines.append(f"  vocabulary: {vocab_size} tokens (train captions, min count {report['options']['min_count']})")
    lines.append(f"wrote {out / 'captions.csv'}, videos.csv, vocab.json and prepare.json")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from vidcap.datasets import write_tables, write_vocab

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if args.max_vocab is not None and args.max_vocab <= 4:
        raise UsageError(f"--max-vocab must be more than 4 (the special tokens), got {args.max_vocab}")
    captions, videos, report = _load(args)
    if len(captions) == 0:
        raise UsageError(f"{args.dataset}: no captions kept, nothing to write")
    report = dict(report)
    report.setdefault("dataset", args.dataset)
    cli_options = {key: value for key, value in vars(args).items() if key != "dataset"}
    report["options"] = {**report.get("options", {}), **cli_options}
    vocab = write_vocab(out, captions, min_count=args.min_count, max_size=args.max_vocab)
    report["vocab_size"] = len(vocab)
    write_tables(out, captions, videos, report)
    print(_summary(report, captions, videos, out, len(vocab)))
    return 0
