"""`vidcap fit | validate | test`: the training entry point (vidcap.training.lightning_cli) on the command line.

Compose the files in configs/ (later files override earlier ones, command-line flags override all):
    vidcap fit --config configs/data/msvd.yaml --config configs/model/local_global.yaml \\
        --config configs/trainer/gpu.yaml --data.data_dir DIR --data.features_dir FEATS
`vidcap fit --help` lists every option; `--print_config` prints the resolved config (also saved with every run).
"""

from __future__ import annotations

import argparse

from vidcap.training.lightning_cli import EXAMPLE, HELP, SUBCOMMANDS, run_lightning

__all__ = ["EXAMPLE", "HELP", "add_arguments", "run", "run_lightning"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("subcommand", choices=SUBCOMMANDS)
    parser.add_argument("options", nargs=argparse.REMAINDER, help="LightningCLI options (see `vidcap fit --help`)")


def run(args: argparse.Namespace) -> int:
    return run_lightning(args.subcommand, list(args.options))
