"""The whole pipeline on the built-in synthetic dataset, in minutes on a laptop CPU (`vidcap demo`, `make demo`).

Stages (each reuses what a previous run of the same settings finished, so an interrupted demo resumes):
    prepare   synthetic videos (vidcap.datasets.synthetic: two timed events per video) -> captions.csv, videos.csv,
              vocab.json, prepare.json, events.csv
    extract   pretrained EfficientNet-Lite0 features of 26 sampled frames per video (vidcap.extract), at 112 px:
              the videos are 112 x 112, and 224 px would cost 4x the time for no new detail
    fit       the attention model with the time-position frame encoder (variant global, encoder position)
    evaluate  the test split: BLEU-4, METEOR, CIDEr, ROUGE-L, perplexity, the content metrics, the reversal test
              (vidcap.evaluation)
    caption   one held-out test video with vidcap.caption, as a user would, and its attention explanation PNG

`train` and `prepare_synthetic` / `extract_features` are shared with `vidcap ablate` (vidcap.ablate).

The defaults (`TrainSettings`, `DemoSettings`) were chosen to pass issue 7's gates within the 10-minute budget of a
2-core CPU: attention + position encoder >= 0.80 objects-and-order, >= 0.90 order given the objects, colour and shape,
>= 90% captions changed by reversing the frames, CIDEr >= Basic's + 0.5; Basic's reversal test exactly 0.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from vidcap.errors import UsageError

log = logging.getLogger(__name__)

STAGES = ("prepare", "extract", "fit", "evaluate", "caption")
# metrics.json of the demo: these keys, in this order (fractions in 0..1 except CIDEr and perplexity).
DEMO_METRIC_KEYS = ("Bleu_4", "METEOR", "CIDEr", "ROUGE_L", "perplexity", "objects_order_acc",
                    "order_given_objects_acc", "colour_acc", "shape_acc", "direction_acc", "reversal_changed")
GLOBAL_EXTRACTOR = "efficientnet_lite0"
LOCAL_EXTRACTOR = "frame_delta_efficientnet_lite0"


@dataclass(frozen=True)
class TrainSettings:
    """How `train` fits one model (the same for every variant of the ablation). Sizes are E, H, A of the model."""

    embed_dim: int = 128
    hidden_dim: int = 256
    attention_dim: int = 128
    dropout: float = 0.5  # the original's
    # The original's doubly stochastic weight is 0.706. It pushes every frame to get a total attention of ~1 over the
    # caption; here a word depends on a few frames of one slot, and the term slowed learning (direction and colour
    # accuracy lower at the same number of epochs), so the demo leaves it out.
    attention_penalty: float = 0.0
    lr: float = 2e-3  # Adam
    weight_decay: float = 0.0
    batch_size: int = 64  # training captions per step
    epochs: int = 9
    max_caption_len: int = 30  # tokens incl. EOS (the longest synthetic caption has 17)
    beam_size: int = 5  # decoding of the test split (the original's 5)
    max_decode_len: int = 20
    max_steps: int = -1  # -1: no limit (tests set a few)


@dataclass(frozen=True)
class DemoSettings:
    """The demo's dataset and features; `train` holds the model's settings."""

    num_videos: int = 900  # 600 train / 100 val / 200 test
    data_seed: int = 0  # the generator's seed (the videos)
    seed: int = 0  # the training seed
    num_frames: int = 64
    frame_size: int = 112
    image_size: int = 112  # EfficientNet input size (the frames are 112 px)
    workers: int = 2  # processes that render and encode the videos
    variant: str = "global"
    encoder: str = "position"
    train: TrainSettings = field(default_factory=TrainSettings)


@dataclass
class DemoResult:
    out: Path
    metrics: dict[str, float]
    timings: dict[str, float]  # stage -> seconds this run spent on it
    checkpoint: Path
    caption: dict[str, Any]  # video_id, path, caption, references, explanation (PNG path)
    files: dict[str, Path]


# ----------------------------------------------------------------------------------------------------------------
# Stages shared with vidcap.ablate


def prepare_synthetic(data_dir: str | os.PathLike, num_videos: int = 900, seed: int = 0, num_frames: int = 64,
                      frame_size: int = 112, workers: int = 2, progress: bool = True) -> int:
    """`vidcap prepare synthetic`: the videos (skipping those already written), the tables and the vocabulary.
    Returns how many videos this call wrote."""
    from vidcap.datasets import synthetic, write_tables, write_vocab

    data_dir = Path(data_dir)
    captions, videos, report = synthetic.generate(data_dir, num_videos=num_videos, seed=seed, num_frames=num_frames,
                                                  size=frame_size, workers=workers, progress=progress)
    write_tables(data_dir, captions, videos, report)
    write_vocab(data_dir, captions)
    return int(report["videos_written"])


def extract_features(data_dir: str | os.PathLike, store: str | os.PathLike, image_size: int = 112,
                     local: bool = False, progress: bool = True) -> int:
    """`vidcap extract`: EfficientNet-Lite0 global features (and with `local`, the frame-delta local features) of every
    video, at `image_size` px. Videos already in the store are skipped. Returns how many videos this call extracted.
    UsageError if some video failed."""
    from vidcap.extract import run_extract

    sizes = {"global": image_size, "local": image_size}
    summary = run_extract(data_dir, store, global_name=GLOBAL_EXTRACTOR, local_name=LOCAL_EXTRACTOR if local else None,
                          image_sizes=sizes, progress=progress)
    if summary.failed:
        first = summary.failed[0]
        raise UsageError(f"{first.path}: feature extraction failed ({first.reason}); "
                         f"{len(summary.failed)} video(s) have no features")
    return summary.extracted


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class _FitProgress(pl.Callback):
    """A tqdm bar on stderr over the training steps, with the loss (Lightning's own bar writes to stdout, where the
    CLI prints its results)."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def on_train_start(self, trainer, pl_module) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=int(trainer.estimated_stepping_batches), initial=trainer.global_step, desc=self.desc,
                        unit="step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.bar.update(trainer.global_step - self.bar.n)
        if batch_idx % 10 == 0 and "train/loss" in trainer.callback_metrics:
            self.bar.set_postfix(epoch=trainer.current_epoch,
                                 loss=f"{float(trainer.callback_metrics['train/loss']):.2f}")

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def train(data_dir: str | os.PathLike, features_dir: str | os.PathLike, run_dir: str | os.PathLike,
          settings: TrainSettings, variant: str = "global", encoder: str = "position", seed: int = 0,
          progress: bool = True) -> tuple[Path, bool]:
    """Fit one model; return (RUN_DIR/checkpoints/last.ckpt, whether this call trained).

    Resumable: a run that finished is reused, an interrupted one continues from its last.ckpt. RUN_DIR/settings.json
    records what the run is; a folder trained with other settings is refused (UsageError).
    """
    from pytorch_lightning.callbacks import ModelCheckpoint

    from vidcap.data import CaptionDataModule
    from vidcap.lit_module import CaptionModule

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    record = {"variant": variant, "encoder": encoder, "seed": seed, "data": str(Path(data_dir).resolve()),
              "features": str(Path(features_dir).resolve()), "train": asdict(settings)}
    done_marker = run_dir / "done.json"
    previous = _read_json(run_dir / "settings.json")
    if previous is not None and previous != record:
        raise UsageError(f"{run_dir}: trained with other settings (see its settings.json); use another output folder "
                         "or delete it")
    if previous == record and done_marker.is_file() and last.is_file():
        log.info("%s: already trained, reusing %s", run_dir, last)
        return last, False
    _write_json(run_dir / "settings.json", record)

    pl.seed_everything(seed, workers=True, verbose=False)
    data = CaptionDataModule(str(data_dir), str(features_dir), batch_size=settings.batch_size,
                             eval_batch_size=100, num_workers=0, max_caption_len=settings.max_caption_len)
    module = CaptionModule(
        vocab_size=data.vocab_size, global_dim=data.global_dim, local_dim=data.local_dim, max_frames=data.num_frames,
        variant=variant, encoder=encoder, embed_dim=settings.embed_dim, hidden_dim=settings.hidden_dim,
        attention_dim=settings.attention_dim, dropout=settings.dropout, attention_penalty=settings.attention_penalty,
        optimizer="adam", lr=settings.lr, weight_decay=settings.weight_decay, beam_size=settings.beam_size,
        max_decode_len=settings.max_decode_len, caption_metrics=False, vocab=data.vocab.to_dict(),
        feature_meta=data.feature_meta,
    )
    data.setup("fit")
    steps_per_epoch = -(-len(data.datasets["train"]) // settings.batch_size)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=settings.epochs, max_steps=settings.max_steps,
        default_root_dir=str(run_dir), logger=pl.loggers.CSVLogger(str(run_dir), name="logs", version=0),
        callbacks=[ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, save_top_k=0)]
        + ([_FitProgress(f"fit {variant}/{encoder}")] if progress else []),
        # Validation loss once, at the end: per-epoch decoding would cost more than the training itself.
        check_val_every_n_epoch=settings.epochs, num_sanity_val_steps=0,
        gradient_clip_val=10.0, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=max(1, min(10, steps_per_epoch)),
    )
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
    if not last.is_file():  # max_steps smaller than an epoch
        trainer.save_checkpoint(last)
    _write_json(done_marker, {"epochs": trainer.current_epoch, "steps": trainer.global_step})
    return last, True


# ----------------------------------------------------------------------------------------------------------------
# The demo


def _caption_one(data_dir: Path, checkpoint: Path, out: Path, predictions: dict[str, str],
                 beam_size: int) -> dict[str, Any]:
    """Caption the first test video from its file (as `vidcap caption` does) and draw its explanation."""
    from vidcap.caption import caption_video, explain_result, load_captioner
    from vidcap.datasets import read_captions, read_videos
    from vidcap.decoding import DecodingOptions

    videos = read_videos(data_dir)
    test = videos[videos["split"] == "test"].sort_values("video_id")
    if test.empty:
        raise UsageError(f"{data_dir}: no test video to caption")
    row = test.iloc[0]
    captioner = load_captioner(checkpoint)
    result = caption_video(row["path"], captioner, DecodingOptions(beam_size=beam_size), with_frames=True)
    png = explain_result(result, out / "explain" / f"{row['video_id']}.png")
    captions = read_captions(data_dir)
    references = captions.loc[captions["video_id"] == row["video_id"], "caption"].tolist()
    return {"video_id": row["video_id"], "path": row["path"], "caption": result.caption,
            "evaluate_caption": predictions.get(row["video_id"]), "references": references,
            "explanation": str(png)}


def run_demo(out: str | os.PathLike = "demo_out", settings: DemoSettings | None = None,
             on_stage: Callable[[str, str, dict[str, Any]], None] | None = None, progress: bool = True) -> DemoResult:
    """Run every stage into OUT (data/, features/, run/, eval/, explain/, metrics.json, timings.json).

    on_stage(stage, event, info) is called with event "start" and "end" (info: {"seconds", "reused"}) for each
    stage of STAGES, for a progress display.
    """
    from vidcap.evaluation import evaluate, write_outputs

    settings = settings or DemoSettings()
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{out}: cannot create the output folder: {error.strerror}") from None
    data_dir, store, run_dir, eval_dir = out / "data", out / "features", out / "run", out / "eval"
    timings: dict[str, float] = {}
    notify = on_stage or (lambda *_: None)

    def stage(name: str):
        class _Stage:
            reused = False

            def __enter__(self):
                self.started = time.perf_counter()
                notify(name, "start", {})
                return self

            def __exit__(self, exc_type, *_):
                if exc_type is None:
                    timings[name] = round(time.perf_counter() - self.started, 1)
                    notify(name, "end", {"seconds": timings[name], "reused": self.reused})
                return False

        return _Stage()

    from vidcap.model import LOCAL_VARIANTS

    with stage("prepare") as st:
        st.reused = not prepare_synthetic(data_dir, settings.num_videos, settings.data_seed, settings.num_frames,
                                          settings.frame_size, settings.workers, progress)
    with stage("extract") as st:
        st.reused = not extract_features(data_dir, store, settings.image_size,
                                         local=settings.variant in LOCAL_VARIANTS, progress=progress)
    with stage("fit") as st:
        checkpoint, trained = train(data_dir, store, run_dir, settings.train, settings.variant, settings.encoder,
                                    settings.seed, progress)
        st.reused = not trained
    with stage("evaluate") as st:
        cached = _read_json(eval_dir / "metrics.json")
        predictions = _read_json(eval_dir / "predictions.json")
        if trained or not isinstance(cached, dict) or not isinstance(predictions, dict):
            result = evaluate(checkpoint, data_dir, store, split="test", beam_size=settings.train.beam_size,
                              reverse=True, progress=progress)
            write_outputs(result, eval_dir)
            cached, predictions = result.metrics, result.predictions
        else:
            st.reused = True
        metrics = {key: cached[key] for key in DEMO_METRIC_KEYS if key in cached}
    with stage("caption"):
        caption = _caption_one(data_dir, checkpoint, out, predictions, settings.train.beam_size)
    files = {"metrics": out / "metrics.json", "timings": out / "timings.json", "checkpoint": checkpoint,
             "predictions": eval_dir / "predictions.json", "explanation": Path(caption["explanation"]),
             "data": data_dir, "features": store}
    _write_json(files["metrics"], metrics)
    _write_json(files["timings"], timings)
    return DemoResult(out=out, metrics=metrics, timings=timings, checkpoint=checkpoint, caption=caption, files=files)


def with_overrides(settings: DemoSettings, **overrides: Any) -> DemoSettings:
    """A copy of `settings` with the given fields replaced; TrainSettings' fields go to `settings.train`."""
    train_fields = {k: v for k, v in overrides.items() if k in TrainSettings.__dataclass_fields__ and v is not None}
    demo_fields = {k: v for k, v in overrides.items() if k in DemoSettings.__dataclass_fields__ and v is not None}
    unknown = set(overrides) - set(train_fields) - set(demo_fields) - {k for k, v in overrides.items() if v is None}
    if unknown:
        raise UsageError(f"unknown demo setting(s): {', '.join(sorted(unknown))}")
    return replace(settings, **demo_fields, train=replace(settings.train, **train_fields))
