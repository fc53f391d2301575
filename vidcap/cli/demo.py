"""`vidcap demo`: the whole pipeline on the built-in synthetic dataset (`make demo`)."""

from __future__ import annotations

import argparse
import logging
import sys

HELP = ("the whole pipeline on a built-in synthetic dataset: prepare -> extract -> fit -> evaluate (+ reversal "
        "test) -> caption one held-out video with an attention explanation")
EXAMPLE = """\
  vidcap demo --out demo_out          # about 10 minutes on a 2-core CPU; rerunning reuses finished stages
"""

# Options for quick runs (tests); hidden from --help. flag -> (dest, type).
_HIDDEN = {
    "--num-videos": ("num_videos", int), "--epochs": ("epochs", int), "--max-steps": ("max_steps", int),
    "--hidden-dim": ("hidden_dim", int), "--embed-dim": ("embed_dim", int), "--attention-dim": ("attention_dim", int),
    "--batch-size": ("batch_size", int), "--image-size": ("image_size", int), "--beam-size": ("beam_size", int),
    "--lr": ("lr", float), "--dropout": ("dropout", float), "--seed": ("seed", int), "--workers": ("workers", int),
}
# The dests of _HIDDEN that are training settings -> the LightningCLI options they set (after the demo's config);
# the others are DemoSettings fields.
_TRAINING = {
    "epochs": ("trainer.max_epochs", "trainer.check_val_every_n_epoch"),  # and validate at the end only
    "max_steps": ("trainer.max_steps",),
    "hidden_dim": ("model.architecture.hidden_dim",),
    "embed_dim": ("model.architecture.embed_dim",),
    "attention_dim": ("model.architecture.attention_dim",),
    "dropout": ("model.architecture.dropout",),
    "batch_size": ("data.batch_size",),
    "beam_size": ("model.decoding.beam_size",),
    "lr": ("model.lr",),
    "seed": ("seed_everything",),
}
_STAGE_TEXT = {
    "prepare": "prepare the synthetic dataset (videos, captions, vocabulary)",
    "extract": "extract EfficientNet-Lite0 frame features",
    "fit": "fit the attention model (time-position encoder)",
    "evaluate": "evaluate on the test split (+ reversal test) and write the report",
    "caption": "caption a held-out test video and explain it",
    "scst": "fine-tune by self-critical training (CIDEr-D reward) and evaluate",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--scst", action="store_true",
                        help="then fine-tune the model by self-critical training on CIDEr-D (configs/experiment/"
                             "scst.yaml) and evaluate it too")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    for flag, (dest, kind) in _HIDDEN.items():
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=argparse.SUPPRESS)


def quiet_lightning() -> None:
    """Lightning's start-up notes (accelerators, tips) would bury the stage display; warnings still show."""
    if logging.getLogger().level > logging.DEBUG:
        import pytorch_lightning  # noqa: F401  (its import sets its loggers to INFO: set them after it)

        for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)


def settings_from_args(args: argparse.Namespace):
    """DemoSettings with the hidden flags that were given: dataset knobs as fields, training ones as overrides."""
    from vidcap.experiments.demo import DemoSettings

    given = {dest: getattr(args, dest) for dest, _ in _HIDDEN.values() if getattr(args, dest, None) is not None}
    overrides = {option: value for dest, value in given.items() if dest in _TRAINING for option in _TRAINING[dest]}
    fields = {dest: value for dest, value in given.items() if dest not in _TRAINING}
    return DemoSettings(**fields, overrides=overrides)


def print_metrics(metrics: dict[str, float]) -> None:
    names = {
        "Bleu_4": "BLEU-4", "METEOR": "METEOR", "CIDEr": "CIDEr", "ROUGE_L": "ROUGE-L", "perplexity": "perplexity",
        "objects_order_acc": "objects + order", "order_given_objects_acc": "order | objects right",
        "colour_acc": "colour", "shape_acc": "shape", "direction_acc": "direction (action)",
        "reversal_changed": "reversal test: captions changed by reversing the frames",
    }
    for key, label in names.items():
        if key in metrics:
            value = metrics[key]
            text = f"{value:.2f}" if key == "perplexity" else f"{value:.4f}"
            if key.endswith("_acc") or key == "reversal_changed":
                text = f"{100 * value:.1f}%"
            print(f"  {label:<58} {text}")


def run(args: argparse.Namespace) -> int:
    quiet_lightning()
    from vidcap.experiments.demo import demo_stages, run_demo

    settings = settings_from_args(args)
    stages = demo_stages(args.scst)
    total = len(stages)

    def on_stage(stage: str, event: str, info: dict) -> None:
        number = stages.index(stage) + 1
        if event == "start":
            print(f"[{number}/{total}] {_STAGE_TEXT[stage]} ...", file=sys.stderr, flush=True)
        else:
            how = "reused from an earlier run" if info.get("reused") else f"done in {info['seconds']:.1f} s"
            print(f"[{number}/{total}] {stage}: {how}", file=sys.stderr, flush=True)

    result = run_demo(args.out, settings, on_stage=on_stage, progress=not args.quiet, scst=args.scst)
    print(f"Test split metrics ({result.model['variant']} variant, {result.model['encoder']} encoder):")
    print_metrics(result.metrics)
    if result.scst is not None:
        print("\nAfter self-critical training (SCST):")
        print_metrics(result.scst["metrics"])
        print("Test captions before -> after SCST:")
        for video_id, before, after in result.scst["samples"]:
            print(f"  {video_id}: {before}\n  {'':<{len(video_id)}}  -> {after}")
    caption = result.caption
    print(f"\nHeld-out video {caption['video_id']} ({caption['path']}):")
    print(f"  caption:   {caption['caption']}")
    if caption["references"]:
        print(f"  reference: {caption['references'][0]}")
    print("\nStage times: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
    print("Files:")
    for name in ("report", "metrics", "predictions", "explanation", "checkpoint", "config", "data", "features"):
        print(f"  {name:<12} {result.files[name]}")
    print(f"\nOpen {result.files['report']} in a browser: one card per test video, worst first; hover a word to see "
          "the frames it came from.")
    print(f"Training curves: tensorboard --logdir {result.files['tensorboard']}")
    print(f"Caption your own videos in a browser or over HTTP (pip install 'vidcap[app]'):\n"
          f"  vidcap app --checkpoint {result.files['checkpoint']}")
    return 0
