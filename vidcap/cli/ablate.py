"""`vidcap ablate`: train and evaluate Table 1's variants over seeds, print the table of means."""

from __future__ import annotations

import argparse
import sys

from vidcap.cli.demo import _HIDDEN, quiet_lightning, settings_from_args

HELP = ("train and evaluate Table 1's variants (Basic, +Global with and without the position encoder, +Local, "
        "+Local+Global) and +Global with SCST and with hard attention over seeds; print the table of means, write "
        "ablation.csv")
EXAMPLE = """\
  vidcap ablate --out ablation_out --seeds 3                      # the synthetic dataset (prepared like the demo)
  vidcap ablate --out ablation_msvd --seeds 1 --data data/msvd --features features/msvd
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="ablation_out", help="output folder (default: ablation_out)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per variant (default: 3)")
    parser.add_argument("--data", default=None, help="a data directory (`vidcap prepare`); default: synthetic")
    parser.add_argument("--features", default=None, help="its feature store (`vidcap extract`)")
    parser.add_argument("--runs", default=None,
                        help="VARIANT:ENCODER[:TRAINING],... to run (default: basic:none,global:none,global:position,"
                             "local:none,local_global:position,global:position:scst,global:position:hard); "
                             "TRAINING is xe (cross-entropy, the default), hard (hard attention) or scst "
                             "(self-critical, from the xe run of the same seed)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    for flag, (dest, kind) in _HIDDEN.items():
        if dest != "seed":
            parser.add_argument(flag, dest=dest, type=kind, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(seed=None)


TRAINING_TEXT = {"xe": "cross-entropy", "hard": "hard attention", "scst": "SCST"}


def run(args: argparse.Namespace) -> int:
    quiet_lightning()
    from vidcap.experiments.ablate import (
        ABLATION_RUNS,
        check_gates,
        format_ablation,
        parse_runs,
        run_ablation,
    )

    runs = parse_runs(args.runs) if args.runs else ABLATION_RUNS

    def on_run(index: int, total: int, variant: str, encoder: str, training: str, seed: int) -> None:
        print(f"[{index + 1}/{total}] {variant}, encoder {encoder}, {TRAINING_TEXT[training]}, seed {seed}",
              file=sys.stderr, flush=True)

    rows = run_ablation(args.out, args.seeds, args.data, args.features, settings_from_args(args), runs,
                        on_run=on_run, progress=not args.quiet)
    print(f"Means over {args.seeds} seed(s), test split:")
    print(format_ablation(rows))
    synthetic = any(row.get("objects_order_acc") is not None for row in rows)  # content metrics: synthetic data
    gates = check_gates(rows) if synthetic else []
    if gates:
        print("\nGates (issues 7 and 12, synthetic data):")
        for gate in gates:
            print(f"  {'PASS' if gate.passed else 'FAIL'}  {gate.name} = {gate.value:.3f} ({gate.threshold})")
    print(f"\nwrote {args.out}/ablation.csv", file=sys.stderr)
    return 0
