"""`vidcap prepare DATASET`: annotations + videos -> DIR/captions.csv, videos.csv, vocab.json, prepare.json.

One sub-parser per module of `vidcap.datasets.registry()`: a new dataset module appears here without an edit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vidcap import datasets

HELP = "annotations + videos -> captions.csv (with PTB tokens), videos.csv, vocab.json (train split) and prepare.json"
EXAMPLE = "\n".join([*(module.EXAMPLE.strip("\n") for module in datasets.registry().values()), "",
                     "Run `vidcap prepare DATASET --help` for the options of each dataset.", ""])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name, module in datasets.registry().items():
        datasets.add_prepare_arguments(
            sub.add_parser(name, help=module.HELP, description=module.HELP,
                           epilog="example:\n" + module.EXAMPLE.strip("\n"),
                           formatter_class=argparse.RawDescriptionHelpFormatter),
            module,
        )


def _summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: what was skipped and why, the split table, and where the files are."""
    table = report["splits"].values()
    lines = [f"prepared {report['dataset']}: {sum(row['clips'] for row in table)} clips with videos, "
             f"{sum(row['captions'] for row in table)} captions kept"]
    rows = report.get("rows_read")
    if rows is not None:
        lines.append(f"  annotation rows read: {sum(rows.values()) if isinstance(rows, dict) else rows}")
    skipped = {**report.get("skipped_rows", {}), **report.get("skipped", {}), **report.get("skipped_samples", {})}
    skipped = {k: v for k, v in skipped.items() if v}
    if skipped:
        lines.append("  rows skipped: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in skipped.items()))
    if report.get("files_missing"):
        lines.append("  annotation files missing: " + ", ".join(report["files_missing"]))
    if report.get("captions_without_tokens"):
        lines.append(f"  captions dropped (no token left after PTB tokenisation): {report['captions_without_tokens']}")
    if report.get("split_rule"):
        lines.append(f"  split: {report['split_rule']}")
    lines.append(f"  {'split':<10} {'clips':>7} {'captions':>9} {'missing videos':>15}")
    for split, row in report["splits"].items():
        lines.append(f"  {split:<10} {row['clips']:>7} {row['captions']:>9} {row['missing_videos']:>15}")
    lines.append(f"  vocabulary: {report['vocab_size']} tokens (train captions, min count "
                 f"{report['options']['min_count']})")
    out = Path(report["options"]["out"])
    lines.append(f"wrote {out / 'captions.csv'}, videos.csv, vocab.json and prepare.json")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    options = {key: value for key, value in vars(args).items() if key != "dataset"}
    report = datasets.prepare(args.dataset, **options)
    print(_summary(report))
    # Damaged inputs (a truncated tar shard): what was complete before the damage is prepared, and the run fails.
    for shard, reason in report.get("damaged_shards", {}).items():
        print(f"vidcap prepare: {shard}: {reason}", file=sys.stderr)
    return 1 if report.get("damaged_shards") else 0
