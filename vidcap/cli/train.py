"""`vidcap fit | validate | test`: LightningCLI over CaptionModule + CaptionDataModule, configured by YAML.

Compose the files in configs/ (later files override earlier ones, command-line flags override all):
    vidcap fit --config configs/data/msvd.yaml --config configs/model/local_global.yaml \\
        --config configs/trainer/gpu.yaml --data.data_dir DIR --data.features_dir FEATS
`vidcap fit --help` lists every option; `--print_config` prints the resolved config (also saved with every run).

What this adds to LightningCLI:
- the model's sizes, vocabulary and feature meta are linked from the data module (`link_arguments`), never typed;
- `checkpoint` (ModelCheckpoint: best by `val/CIDEr`, plus last.ckpt) and `early_stopping` (EarlyStopping on the
  same monitor, patience 20 validations as the original) option groups; with `--model.caption_metrics false`
  a caption-metric monitor falls back to `val/loss` (mode min), since nothing else would be logged;
- checkpoints go to `<default_root_dir>/checkpoints` unless `--checkpoint.dirpath` says otherwise, so that
  `--ckpt_path last` finds the last.ckpt of an interrupted run (Lightning would look in a new version folder);
- trainer defaults: gradient-norm clipping at 10 (the original), seed 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from typing import Any

from vidcap.errors import UsageError

log = logging.getLogger(__name__)

HELP = "train (fit), validate or test a captioner; LightningCLI with --config YAML files from configs/"
EXAMPLE = """\
  vidcap fit --config configs/data/msvd.yaml --config configs/model/local_global.yaml \\
      --config configs/trainer/gpu.yaml --data.data_dir data/msvd --data.features_dir features/msvd
  vidcap fit --config configs/data/synthetic.yaml --config configs/model/global.yaml --config configs/debug.yaml \\
      --data.data_dir demo/data --data.features_dir demo/features --trainer.fast_dev_run true
  vidcap fit ... --ckpt_path last                      # resume an interrupted run
  vidcap test --config configs/data/msvd.yaml --config configs/model/local_global.yaml \\
      --data.data_dir data/msvd --data.features_dir features/msvd --ckpt_path checkpoints/last.ckpt
"""

# data module attribute -> model argument, set when the data module is instantiated.
LINKS = {
    "data.vocab_size": "model.vocab_size",
    "data.global_dim": "model.global_dim",
    "data.local_dim": "model.local_dim",
    "data.num_frames": "model.max_frames",
    "data.feature_meta": "model.feature_meta",
}
# Monitors that exist only when the caption metrics are computed.
_CAPTION_MONITORS = {f"val/{name}" for name in ("BLEU4", "METEOR", "ROUGE_L", "CIDEr")}
# What the checkpoint decides when one is given (everything else is a training or decoding setting).
ARCHITECTURE = ("variant", "encoder", "embed_dim", "hidden_dim", "attention_dim", "dropout", "selector")
TRAINER_DEFAULTS = {"gradient_clip_val": 10.0, "gradient_clip_algorithm": "norm"}


def _vocab_to_dict(vocab) -> dict:
    return vocab.to_dict()


def build_cli(args: list[str], run: bool = True):
    """The LightningCLI for `args` (`[subcommand, *options]` when run=True, options only when run=False)."""
    from jsonargparse import DefaultHelpFormatter
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.cli import LightningCLI

    from vidcap.data import CaptionDataModule
    from vidcap.lit_module import CaptionModule

    class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
        """jsonargparse's help, with the examples printed as written."""

    class VidcapCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults({
                "checkpoint.monitor": "val/CIDEr",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}-{step}",
            })
            parser.add_lightning_class_args(EarlyStopping, "early_stopping")
            parser.set_defaults({
                "early_stopping.monitor": "val/CIDEr",
                "early_stopping.mode": "max",
                "early_stopping.patience": 20,
            })
            for source, target in LINKS.items():
                parser.link_arguments(source, target, apply_on="instantiate")
            parser.link_arguments("data.vocab", "model.vocab", compute_fn=_vocab_to_dict, apply_on="instantiate")

        def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
            parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
            # Lightning leaves weights_only to torch's default; say it: resuming never runs pickled code.
            if "weights_only" in self._subcommand_method_arguments[subcommand]:
                parser.set_defaults({"weights_only": True})
            return parser

        def _parse_ckpt_path(self) -> None:
            # LightningCLI would overwrite the whole `model:` section with the checkpoint's hparams, so that
            # `--model.beam_size 1` or `--model.caption_metrics false` given to `test` would be ignored. Take only
            # the architecture from the checkpoint; everything else comes from the configs and the command line.
            if self.config.get("subcommand"):
                _architecture_from_checkpoint(self.config[self.config.subcommand])

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            _resolve_monitors(config)
            if config.checkpoint.dirpath is None:
                root = config.trainer.default_root_dir or os.getcwd()
                config.checkpoint.dirpath = os.path.join(str(root), "checkpoints")

    return VidcapCLI(
        CaptionModule,
        CaptionDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=0,
        # Resuming or re-testing in the same folder rewrites its config.yaml instead of refusing to start.
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "prog": "vidcap",
            "description": HELP,
            "formatter_class": HelpFormatter,  # jsonargparse gives subcommands the main parser's formatter
            **{name: {"epilog": "examples:\n" + EXAMPLE, "formatter_class": HelpFormatter}
               for name in ("fit", "validate", "test")},
        },
        args=args,
        run=run,
    )


def _architecture_from_checkpoint(config: Any) -> None:
    """With `--ckpt_path FILE`, set the model's architecture keys from the checkpoint's "vidcap" section."""
    ckpt_path = config.get("ckpt_path")
    if not ckpt_path or not os.path.isfile(ckpt_path):  # None, or "last"/"best" (checked when loading)
        return
    from vidcap.lit_module import read_checkpoint, read_vidcap_section

    checkpoint = read_checkpoint(ckpt_path)
    saved = read_vidcap_section(checkpoint, str(ckpt_path))["model"]
    for key in ARCHITECTURE:
        current = config.model[key]
        if current != saved[key]:
            if not (key == "encoder" and current == "auto"):
                log.warning("model.%s: %r from the checkpoint, not %r", key, saved[key], current)
            config.model[key] = saved[key]


def _resolve_monitors(config: Any) -> None:
    """Without caption metrics, a val/CIDEr (etc.) monitor would never be logged: monitor val/loss instead."""
    if config.model.caption_metrics:
        return
    for group in ("checkpoint", "early_stopping"):
        section = config[group]
        if section.monitor in _CAPTION_MONITORS:
            log.info("%s: caption_metrics is off, monitoring val/loss (min) instead of %s", group, section.monitor)
            section.monitor, section.mode = "val/loss", "min"


def run_lightning(name: str, argv: list[str]) -> int:
    """Run `vidcap NAME ARGV...` (NAME in fit/validate/test) through LightningCLI; returns the exit code."""
    if name not in ("fit", "validate", "test"):
        raise UsageError(f"unknown Lightning subcommand {name!r}")
    try:
        with warnings.catch_warnings():
            # We pass args on purpose (sys.argv holds `vidcap fit ...`); jsonargparse deprecations come from
            # Lightning's own calls and are not actionable here.
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pytorch_lightning\.cli")
            build_cli([name, *argv])
    except SystemExit as exit_:  # --help, --print_config and argument errors (jsonargparse prints them)
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("subcommand", choices=["fit", "validate", "test"])
    parser.add_argument("options", nargs=argparse.REMAINDER, help="LightningCLI options (see `vidcap fit --help`)")


def run(args: argparse.Namespace) -> int:
    return run_lightning(args.subcommand, list(args.options))
