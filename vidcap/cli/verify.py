"""`vidcap verify`: check every feature file (or every sample of every shard) of a store against the checksum
recorded when it was written."""

from __future__ import annotations

import argparse
import sys

HELP = "check every feature file (or shard sample) of a store against its recorded SHA-256; list the bad and missing"
EXAMPLE = """
  vidcap verify feats/msvd                 # full check: every file's SHA-256 (parallel)
  vidcap verify feats/msvd --quick         # headers only (array names, widths, dtypes against meta.json)
  vidcap verify feats/webvid               # a sharded store: every sample of every shard
  vidcap verify feats/webvid --quick       # a sharded store: indexes readable, each shard's size as recorded

Exit code 0 when every file is good, 1 when some are bad or missing (each listed on stderr, one a line: the file, or
the shard and sample). A rerun of the `vidcap extract` that made the store extracts them again.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="FEATS", help="feature store folder (vidcap extract --out)")
    parser.add_argument("--quick", action="store_true",
                        help="check the headers only, or a sharded store's shard sizes (what fit and evaluate check "
                        "before their first step)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="threads reading files (default: the cores + 4, at most 32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vidcap.errors import UsageError
    from vidcap.features.stores import open_store

    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    store = open_store(args.store)  # not a store: one line, exit 2
    unit = "file" if store.layout == "files" else "sample"
    with tqdm(total=store.size(), desc="verify", unit=unit, disable=args.no_progress, file=sys.stderr) as bar:
        report = store.check(full=not args.quick, workers=args.workers, progress=bar.update)
    for line in report.bad:
        print(f"bad: {line}", file=sys.stderr)
    for place in report.missing:
        print(f"missing: {place}", file=sys.stderr)
    print(report.summary(args.store))
    if not report.ok:
        what = "feature files" if store.layout == "files" else "samples or shards"
        print(f"vidcap verify: {len(report.bad) + len(report.missing)} {what} bad or missing; repair: rerun the "
              f"`vidcap extract ... --out {args.store}` that made the store", file=sys.stderr)
        return 1
    return 0
