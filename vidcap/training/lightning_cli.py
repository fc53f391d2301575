"""The training entry point: LightningCLI over CaptionModule + CaptionDataModule, configured by YAML.

`vidcap fit | validate | test` (vidcap/cli/train.py) hands its options to `run_lightning` as written; the
experiments (vidcap.experiments) compose configs/ files and Python values with `resolve_config` and hand the
resolved config to the same `run_lightning`. Both build the one LightningCLI subclass, `VidcapCLI`.

Compose the files in configs/ (later files override earlier ones, command-line flags override all):
    vidcap fit --config configs/data/msvd.yaml --config configs/model/local_global.yaml \\
        --config configs/trainer/gpu.yaml --data.data_dir DIR --data.features_dir FEATS
`vidcap fit --help` lists every option; `--print_config` prints the resolved config (also saved with every run).

What this adds to LightningCLI (through its public hooks only):
- the model's data-derived sizes, vocabulary and feature meta are linked from the data module (`link_arguments`),
  never typed;
- `checkpoint` (ModelCheckpoint: best by `val/CIDEr`, plus last.ckpt) and `early_stopping` (EarlyStopping on the
  same monitor, patience 20 validations as the original) option groups; with `--model.caption_metrics false`
  a caption-metric monitor falls back to `val/loss` (mode min), since nothing else would be logged;
- a `step_checkpoint` option group (vidcap.training.step_checkpoint): last.ckpt every N steps with the train
  loader's position, so that `--ckpt_path last` resumes a killed run mid-epoch;
- checkpoints go to `<default_root_dir>/checkpoints` unless `--checkpoint.dirpath` says otherwise, so that
  `--ckpt_path last` finds the last.ckpt of an interrupted run (Lightning would look in a new version folder);
- checkpoints are loaded with `weights_only=True` (no pickled code runs) and written atomically (a temporary name
  renamed: vidcap.training.step_checkpoint.AtomicCheckpointIO);
- a full disk or a read-only folder while training is one line naming the folder (vidcap.errors.DiskError; exit 1
  when a checkpoint to resume from exists, 2 when not);
- with `--ckpt_path FILE`, the architecture comes from the checkpoint (its hyper-parameters hold nothing else, see
  vidcap.training.module) and a differing config value is reported; decoding and training options come from the config;
- with `--model.init_from FILE`, the architecture comes from that checkpoint too (self-critical training starts from
  a cross-entropy checkpoint: configs/experiment/scst.yaml);
- trainer defaults: gradient-norm clipping at 10 (the original), seed 0. This is the one place they are set.
- logs: Lightning's default logger, TensorBoard (a dependency), in <default_root_dir>/lightning_logs/version_N; a
  logger whose save_dir is "" writes there too (a CSV log: configs/trainer/csv_logger.yaml). With a logger, the
  learning rate is logged (LearningRateMonitor), and the `explanation` option group (vidcap.training.callbacks) draws one
  validation video's attention into TensorBoard after each validation; `vidcap fit` prints `tensorboard --logdir`.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError, DefaultHelpFormatter
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from vidcap.errors import UsageError, disk_error
from vidcap.text.metrics import CAPTION_METRICS, LOGGED_NAMES
from vidcap.training.callbacks import ExplanationImage
from vidcap.training.data import CaptionDataModule
from vidcap.training.module import DATA_SIZES, CaptionModule
from vidcap.training.step_checkpoint import AtomicCheckpointIO, StepCheckpoint, last_checkpoint_path

log = logging.getLogger(__name__)

HELP = "train (fit), validate or test a captioner; LightningCLI with --config YAML files from configs/"
EXAMPLE = """\
  vidcap fit --config configs/data/msvd.yaml --config configs/model/local_global.yaml \\
      --config configs/trainer/gpu.yaml --data.data_dir data/msvd --data.features_dir features/msvd
  vidcap fit --config configs/data/synthetic.yaml --config configs/model/global.yaml --config configs/debug.yaml \\
      --data.data_dir demo/data --data.features_dir demo/features --trainer.fast_dev_run true
  vidcap fit --config configs/data/synthetic.yaml --config configs/experiment/demo.yaml \
      --data.data_dir demo_out/data --data.features_dir demo_out/features   # the demo's model
  vidcap fit ... --ckpt_path last                      # resume an interrupted run
  vidcap test --config configs/data/msvd.yaml --config configs/model/local_global.yaml \\
      --data.data_dir data/msvd --data.features_dir features/msvd --ckpt_path checkpoints/last.ckpt
"""

# Monitors that exist only when the caption metrics are computed.
_CAPTION_MONITORS = {f"val/{LOGGED_NAMES[key]}" for key in CAPTION_METRICS}
SUBCOMMANDS = ("fit", "validate", "test")
TRAINER_DEFAULTS = {"gradient_clip_val": 10.0, "gradient_clip_algorithm": "norm"}
# Deprecation notes that come from Lightning's own calls into jsonargparse, and the note that `args` is meant for
# Python use when sys.argv holds `vidcap fit ...`: neither is actionable by a vidcap user.
_IGNORED_WARNINGS = ((".*args parameter is intended to run from within Python", Warning, ""),
                     ("", DeprecationWarning, r"pytorch_lightning\.cli"))


def _vocab_to_dict(vocab) -> dict:
    return vocab.to_dict()


class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with the examples printed as written."""


class _Parsed(Exception):
    """Raised by a `parse_only` VidcapCLI once its arguments are parsed: LightningCLI's constructor would go on to
    seed, instantiate and run."""

    def __init__(self, config):
        super().__init__("parsed")
        self.config = config


class VidcapCLI(LightningCLI):
    """LightningCLI over CaptionModule + CaptionDataModule with vidcap's option groups, links and defaults (the module
    docstring lists them). `vidcap fit | validate | test`, `run_lightning` and `resolve_config` all build this class.

    args: `[subcommand, *options]` as on the command line, or `{subcommand: config}` with the config as Python values
    (a `resolve_config` result). callbacks: added to the Trainer's (not part of the config: progress displays).
    parse_only: stop once the arguments are parsed (`resolve_config`): nothing is seeded, instantiated or run, and a
    bad option raises jsonargparse's ArgumentError instead of printing the usage and exiting. default_configs: YAML
    files that `subcommand` applies before `args`, in order, as if given first with `--config` (jsonargparse's
    default_config_files: glob patterns).
    """

    def __init__(self, args: Sequence[str] | Mapping[str, Any], *, callbacks: Sequence[Any] = (),
                 parse_only: bool = False, default_configs: Mapping[str, Sequence[str]] | None = None):
        self.parse_only = parse_only
        subcommand_kwargs = {name: {"epilog": "examples:\n" + EXAMPLE, "formatter_class": HelpFormatter,
                                    "default_config_files": list((default_configs or {}).get(name, ()))}
                             for name in SUBCOMMANDS}
        if parse_only:
            for kwargs in subcommand_kwargs.values():
                kwargs["exit_on_error"] = False
        super().__init__(
            CaptionModule,
            CaptionDataModule,
            trainer_defaults={**TRAINER_DEFAULTS, "callbacks": list(callbacks)},
            seed_everything_default=0,
            # Resuming or re-testing in the same folder rewrites its config.yaml instead of refusing to start.
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                "prog": "vidcap",
                "description": HELP,
                "formatter_class": HelpFormatter,  # jsonargparse gives subcommands the main parser's formatter
                **({"exit_on_error": False} if parse_only else {}),
                **subcommand_kwargs,
            },
            args=args,
        )

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:
            # Lightning leaves weights_only to torch's default; say it: resuming never runs pickled code.
            self.parser.set_defaults({f"{name}.weights_only": True for name in SUBCOMMANDS})

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
        parser.add_lightning_class_args(ExplanationImage, "explanation")
        parser.add_lightning_class_args(StepCheckpoint, "step_checkpoint")
        for field, attribute in DATA_SIZES.items():
            parser.link_arguments(f"data.{attribute}", f"model.architecture.{field}", apply_on="instantiate")
        parser.link_arguments("data.feature_meta", "model.feature_meta", apply_on="instantiate")
        parser.link_arguments("data.vocab", "model.vocab", compute_fn=_vocab_to_dict, apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        if self.parse_only:
            raise _Parsed(self.config)
        # LightningCLI then overwrites the architecture with a --ckpt_path file's hyper-parameters: keep what
        # was asked for, to report the differences.
        self.requested = self.config.clone()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand:
            _report_checkpoint_architecture(self.requested[self.subcommand], config)
        _architecture_from_init(config)
        _resolve_monitors(config)
        if config.checkpoint.dirpath is None:
            root = config.trainer.default_root_dir or os.getcwd()
            config.checkpoint.dirpath = os.path.join(str(root), "checkpoints")
        logger = config.trainer.logger
        if hasattr(logger, "init_args") and logger.init_args.get("save_dir", ".") == "":
            # save_dir "" (configs/trainer/csv_logger.yaml): where Lightning's default logger writes, beside the
            # checkpoints (a logger's save_dir cannot be left out: jsonargparse requires it).
            logger.init_args.save_dir = str(config.trainer.default_root_dir or os.getcwd())

    def instantiate_trainer(self, **kwargs: Any):
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: make its writes atomic
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if trainer.loggers:  # LearningRateMonitor refuses a trainer without a logger (--trainer.logger false)
            trainer.callbacks.append(LearningRateMonitor())
        return trainer


def _architecture_from_init(config: Any) -> None:
    """With `--model.init_from FILE` (SCST from a cross-entropy checkpoint), the architecture is the checkpoint's, as
    `vidcap caption` rebuilds it; each value that differs from the config's is logged. The data-derived sizes stay
    linked from the data, and vidcap.training.scst checks that they fit the checkpoint."""
    from dataclasses import fields

    from vidcap.model.captioner import ModelConfig
    from vidcap.training.module import ARCHITECTURE
    from vidcap.training.scst import checkpoint_model

    path = config.model.get("init_from")
    if not path:
        return
    saved, architecture = checkpoint_model(path), config.model.architecture
    defaults = {f.name: f.default for f in fields(ModelConfig)}
    for key in ARCHITECTURE:
        if key in saved and architecture[key] != saved[key]:
            # A value the config set (not ModelConfig's default) that the checkpoint overrides deserves a warning.
            level = logging.INFO if architecture[key] == defaults.get(key) else logging.WARNING
            log.log(level, "model.architecture.%s: %r from %s, not %r", key, saved[key], path, architecture[key])
            architecture[key] = saved[key]


def _report_checkpoint_architecture(requested: Any, config: Any) -> None:
    """With `--ckpt_path FILE`, log each architecture value the checkpoint changed."""
    if not config.get("ckpt_path"):
        return
    asked, used = requested.model.architecture, config.model.architecture
    for key in used.keys():
        if asked[key] != used[key] and not (key == "encoder" and asked[key] == "auto"):
            log.warning("model.architecture.%s: %r from the checkpoint, not %r", key, used[key], asked[key])


def _resolve_monitors(config: Any) -> None:
    """Without caption metrics, a val/CIDEr (etc.) monitor would never be logged: monitor val/loss instead."""
    if config.model.caption_metrics:
        return
    for group in ("checkpoint", "early_stopping"):
        section = config[group]
        if section.monitor in _CAPTION_MONITORS:
            log.info("%s: caption_metrics is off, monitoring val/loss (min) instead of %s", group, section.monitor)
            section.monitor, section.mode = "val/loss", "min"


def run_lightning(name: str, args: Sequence[str] | Mapping[str, Any], callbacks: Sequence[Any] = ()) -> int:
    """Run `vidcap NAME` (NAME in fit/validate/test) through VidcapCLI; returns the exit code.
    args: the command-line options (`vidcap fit` hands them over untouched), or the config as Python values (a
    `resolve_config` result, e.g. with "ckpt_path" set to resume). callbacks: extra Trainer callbacks that are not
    part of the config (progress displays). `fit` prints the `tensorboard --logdir` line on stderr as training
    starts."""
    if name not in SUBCOMMANDS:
        raise UsageError(f"unknown Lightning subcommand {name!r}")
    cli_args = {"subcommand": name, name: dict(args)} if isinstance(args, Mapping) else [name, *args]
    folder = _checkpoint_folder()
    try:
        with _quiet_warnings():
            VidcapCLI(cli_args, callbacks=[*callbacks, folder, *([_tensorboard_hint()] if name == "fit" else [])])
    except OSError as error:
        raise _disk_error(error, folder.last) from None
    except SystemExit as exit_:  # --help, --print_config and argument errors (jsonargparse prints them)
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    return 0


def _checkpoint_folder():
    """A callback remembering the run's last.ckpt path (for the message of a full disk)."""
    from pytorch_lightning import Callback

    class CheckpointFolder(Callback):
        last: Path | None = None

        def setup(self, trainer, pl_module, stage: str) -> None:
            self.last = last_checkpoint_path(trainer)

    return CheckpointFolder()


def _disk_error(error: OSError, last: Path | None) -> BaseException:
    """A full disk or read-only folder met while training: a DiskError naming the path (the checkpoint folder when
    the error names none); exit code 1 when last.ckpt exists to resume from."""
    if error.filename is None and last is not None:
        error.filename = str(last.parent)
    resumable = last is not None and last.is_file()
    hint = (f"{last} is complete: resume with --ckpt_path last" if resumable
            else "no checkpoint was saved")
    return disk_error(error, done=resumable, hint=hint) or error


def resolve_config(configs: Sequence[str | os.PathLike] = (), values: Mapping[str, Any] | None = None,
                   name: str = "fit") -> dict[str, Any]:
    """The config `vidcap NAME --config C1 --config C2 ...` runs with, with `values` set on top, as plain Python
    values (nested dicts, what `--print_config` prints), without running, seeding or instantiating anything.

    values: dotted option names -> typed values, e.g. {"trainer.max_epochs": 3, "model.init_from": path}; they are
    checked against the option's type as a command-line flag is. The result goes back to `run_lightning(NAME, ...)`,
    and `config_yaml` writes it as a file that `--config` reads. UsageError when a config file is missing or an
    option does not parse (jsonargparse's message on one line).
    """
    if name not in SUBCOMMANDS:
        raise UsageError(f"unknown Lightning subcommand {name!r}")
    for config in configs:
        if not os.path.isfile(config):  # default config files that match nothing would be skipped silently
            raise UsageError(f"{config}: config file not found")
    nested: dict[str, Any] = {}
    for key, value in (values or {}).items():
        *parents, leaf = key.split(".")
        section = nested
        for part in parents:
            section = section.setdefault(part, {})
        section[leaf] = value
    try:
        with _quiet_warnings():
            VidcapCLI({"subcommand": name, name: nested}, parse_only=True,
                      default_configs={name: [glob.escape(os.fspath(config)) for config in configs]})
    except _Parsed as parsed:
        config = parsed.config[name].as_dict()
    except ArgumentError as error:
        raise UsageError(f"invalid training options: {' '.join(str(error).split())}") from None
    # jsonargparse's record of the files it read (`configs`): already applied
    return {key: value for key, value in config.items() if key not in ("config", "__default_config__")}


def config_yaml(config: Mapping[str, Any]) -> str:
    """A resolved config (`resolve_config`) as the YAML file that `vidcap NAME --config FILE` runs again."""
    import yaml

    return yaml.safe_dump(dict(config), sort_keys=False)


@contextlib.contextmanager
def _quiet_warnings():
    with warnings.catch_warnings():
        for message, category, module in _IGNORED_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield


def _tensorboard_hint():
    """A callback printing, as training starts, how to watch it in TensorBoard (rank 0, TensorBoard logger only)."""
    from pytorch_lightning import Callback
    from pytorch_lightning.loggers import TensorBoardLogger

    class TensorBoardHint(Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                    print(f"watch the training: tensorboard --logdir {logger.root_dir}", file=sys.stderr, flush=True)

    return TensorBoardHint()
