"""`vidcap verify`: check every feature file of a store against the checksum recorded when it was written."""

from __future__ import annotations

import argparse
import sys

HELP = "check every feature file of a store against its recorded SHA-256; list the bad and missing ones"
EXAMPLE = """
  vidcap verify feats/msvd                 # full check: every file's SHA-256 (parallel)
  vidcap verify feats/msvd --quick         # headers only (array names, widths, dtypes against meta.json)

Exit code 0 when every file is good, 1 when some are bad or missing (each listed on stderr, one a line). A rerun of
the `vidcap extract` that made the store extracts them again.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="FEATS", help="feature store folder (vidcap extract --out)")
    parser.add_argument("--quick", action="store_true",
                        help="check the headers only (what fit and evaluate check before their first step)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="threads reading files (default: the cores + 4, at most 32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vidcap.errors import UsageError
    from vidcap.features.integrity import verify_store
    from vidcap.features.store import feature_path, list_features, read_meta

    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    read_meta(args.store)  # not a store: one line, exit 2
    with tqdm(total=len(list_features(args.store)), desc="verify", unit="file", disable=args.no_progress,
              file=sys.stderr) as bar:
        report = verify_store(args.store, full=not args.quick, workers=args.workers, progress=bar.update)
    for video_id, reason in sorted(report.bad.items()):
        print(f"bad: {feature_path(args.store, video_id)}: {reason}", file=sys.stderr)
    for video_id in report.missing:
        print(f"missing: {feature_path(args.store, video_id)}", file=sys.stderr)
    how = "headers" if args.quick else "SHA-256"
    unrecorded = f", {report.unrecorded} without a recorded checksum (headers checked)" if report.unrecorded and not args.quick else ""
    print(f"{args.store}: {report.checked} files checked ({how}), {len(report.bad)} bad, {len(report.missing)} "
          f"missing{unrecorded}")
    if not report.ok:
        print(f"vidcap verify: {len(report.bad) + len(report.missing)} feature files bad or missing; repair: rerun "
              f"the `vidcap extract ... --out {args.store}` that made the store", file=sys.stderr)
        return 1
    return 0
