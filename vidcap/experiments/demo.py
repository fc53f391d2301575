"""The whole pipeline on the built-in synthetic dataset, in minutes on a laptop CPU (`vidcap demo`, `make demo`).

Stages (each reuses what a previous run of the same settings finished, so an interrupted demo resumes):
    prepare   synthetic videos (`vidcap prepare synthetic`: two timed events per video) -> captions.csv, videos.csv,
              vocab.json, prepare.json, events.csv
    extract   pretrained EfficientNet-Lite0 features of 26 sampled frames per video (vidcap.features.extract), at 112 px:
              the videos are 112 x 112, and 224 px would cost 4x the time for no new detail
    fit       `vidcap fit --config configs/data/synthetic.yaml --config configs/experiment/demo.yaml` (the attention model with the time-position frame
              encoder), through the same LightningCLI as every other training run
    evaluate  the test split: BLEU-4, METEOR, CIDEr, ROUGE-L, perplexity, the content metrics, the reversal test
              (vidcap.evaluation), and its HTML report, report/index.html (vidcap.report.cards)
    scst      (`--scst` only) self-critical training of the fitted model on CIDEr-D (configs/experiment/scst.yaml,
              vidcap.training.scst) and the same evaluation of it, in OUT/scst/
    caption   one held-out test video with vidcap.caption, as a user would, and its attention explanation PNG

`train`, `prepare_synthetic` and `extract_features` are shared with `vidcap ablate` (vidcap.experiments.ablate).

Every setting of the model and its training is in configs/experiment/demo.yaml; `DemoSettings` holds only what is
not training (the dataset's size and seed, the frame size, the extraction size, worker processes). The configs are
read from the source tree (`DEMO_CONFIG`, beside the `vidcap` package): vidcap is installed editable
(`pip install -e .`, as `make` does), and the demo runs from a checkout.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from vidcap import atomic
from vidcap.datasets.synthetic.events import CONTENT_METRIC_KEYS, REVERSAL_KEY
from vidcap.errors import UsageError

log = logging.getLogger(__name__)

STAGES = ("prepare", "extract", "fit", "evaluate", "caption")
# metrics.json of the demo: these keys, in this order (fractions in 0..1 except CIDEr and perplexity).
DEMO_METRIC_KEYS = ("Bleu_4", "METEOR", "CIDEr", "ROUGE_L", "perplexity", *CONTENT_METRIC_KEYS, REVERSAL_KEY)
GLOBAL_EXTRACTOR = "efficientnet_lite0"
LOCAL_EXTRACTOR = "frame_delta_efficientnet_lite0"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEMO_CONFIG = CONFIGS / "experiment" / "demo.yaml"
SCST_CONFIG = CONFIGS / "experiment" / "scst.yaml"  # `vidcap demo --scst`, the ablation's SCST row
DATA_CONFIG = CONFIGS / "data" / "synthetic.yaml"  # what the experiment configs compose with
HARD_CONFIG = CONFIGS / "experiment" / "hard.yaml"  # on top of the demo's: the ablation's hard-attention row


@dataclass(frozen=True)
class Training:
    """One `vidcap fit` as values: config files composed in order (each as `--config` would), then `values` set on top
    (dotted LightningCLI options -> typed values, e.g. {"trainer.max_epochs": 1}); vidcap.training.lightning_cli.
    resolve_config resolves them."""

    configs: tuple[str, ...]
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoSettings:
    """The demo's dataset and features. The model and its training: `config` (a LightningCLI YAML file) after
    `data_config`, then `overrides` (LightningCLI options as values, e.g. {"trainer.max_epochs": 1}) on top."""

    num_videos: int = 900  # 600 train / 100 val / 200 test
    data_seed: int = 0  # the generator's seed (the videos)
    num_frames: int = 64
    frame_size: int = 112
    image_size: int = 112  # EfficientNet input size (the frames are 112 px)
    workers: int = 2  # processes that render and encode the videos
    config: str = str(DEMO_CONFIG)
    data_config: str = str(DATA_CONFIG)
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def training(self, values: Mapping[str, Any] | None = None) -> Training:
        """The demo's training: the data config, the experiment's, these settings' overrides, then `values`."""
        return Training(self._configs(self.config), {**self.overrides, **(values or {})})

    def hard_training(self, values: Mapping[str, Any] | None = None) -> Training:
        """`training` with hard attention: configs/experiment/hard.yaml after the experiment's config (it sets only the
        attention and its REINFORCE weights, nothing the overrides set)."""
        return Training(self._configs(self.config, HARD_CONFIG), {**self.overrides, **(values or {})})

    def scst_training(self, init_from: str | os.PathLike, values: Mapping[str, Any] | None = None) -> Training:
        """Self-critical training from checkpoint `init_from`: configs/experiment/scst.yaml after the data config,
        these settings' overrides, then `values`."""
        return Training(self._configs(SCST_CONFIG),
                        {**self.overrides, "model.init_from": str(init_from), **(values or {})})

    def _configs(self, *experiment: str | os.PathLike) -> tuple[str, ...]:
        configs = tuple(str(config) for config in (self.data_config, *experiment))
        for config in configs:
            if not Path(config).is_file():
                raise UsageError(f"{config}: config not found (the demo reads configs/ from a vidcap source "
                                 "checkout installed with `pip install -e .`)")
        return configs


@dataclass
class DemoResult:
    out: Path
    metrics: dict[str, float]
    timings: dict[str, float]  # stage -> seconds this run spent on it
    checkpoint: Path
    caption: dict[str, Any]  # video_id, path, caption, references, explanation (PNG path)
    files: dict[str, Path]
    model: dict[str, Any]  # the checkpoint's ModelConfig (variant, encoder, sizes)
    scst: dict[str, Any] | None = None  # with --scst: metrics, checkpoint, samples [(video, XE caption, SCST caption)]


# ----------------------------------------------------------------------------------------------------------------
# Stages shared with vidcap.experiments.ablate


def prepare_synthetic(data_dir: str | os.PathLike, settings: DemoSettings, progress: bool = True) -> int:
    """`vidcap prepare synthetic`: the videos (skipping those already written), the tables and the vocabulary.
    Returns how many videos this call wrote."""
    from vidcap.datasets import prepare

    report = prepare("synthetic", out=str(data_dir), num_videos=settings.num_videos, seed=settings.data_seed,
                     num_frames=settings.num_frames, frame_size=settings.frame_size, workers=settings.workers,
                     no_progress=not progress)
    return int(report["videos_written"])


def extract_features(data_dir: str | os.PathLike, store: str | os.PathLike, image_size: int = 112,
                     local: bool = False, progress: bool = True) -> int:
    """`vidcap extract`: EfficientNet-Lite0 global features (and with `local`, the frame-delta local features) of every
    video, at `image_size` px. Videos already in the store are skipped. Returns how many videos this call extracted.
    UsageError if some video failed."""
    from vidcap.features.extract import ExtractOptions, run_extract

    options = ExtractOptions(global_name=GLOBAL_EXTRACTOR, local_name=LOCAL_EXTRACTOR if local else None,
                             image_sizes={"global": image_size, "local": image_size})
    summary = run_extract(data_dir, store, options, progress=progress)
    if summary.failed:
        first = summary.failed[0]
        raise UsageError(f"{first.path}: feature extraction failed ({first.reason}); "
                         f"{len(summary.failed)} video(s) have no features")
    return summary.extracted


def demo_stages(scst: bool = False) -> tuple[str, ...]:
    """The stages of `run_demo`, in order: STAGES, with "scst" after "evaluate" when asked for."""
    return STAGES[:4] + ("scst",) + STAGES[4:] if scst else STAGES


@dataclass
class Evaluated:
    """What evaluate_run gives: the test split's metrics and predictions, the evaluated model's description and
    decoding options (evaluation.json's "model" and "options"), and whether they were read back from a finished run."""

    metrics: dict[str, Any]
    predictions: dict[str, str]
    evaluation: dict[str, Any]
    reused: bool


def evaluate_run(checkpoint: Path, data_dir: Path, store: Path, eval_dir: Path, trained: bool,
                 progress: bool = True, report_dir: Path | None = None) -> Evaluated:
    """The test split of `checkpoint` evaluated (vidcap.evaluation, with the reversal test) into EVAL_DIR, and its
    report page into REPORT_DIR when given; or read back from EVAL_DIR when the checkpoint was not retrained and
    everything asked for is there."""
    from vidcap.evaluation import evaluate, write_outputs
    from vidcap.report.cards import write_evaluation_report

    metrics, predictions, evaluation = (_read_json(eval_dir / f"{name}.json")
                                        for name in ("metrics", "predictions", "evaluation"))
    have_report = report_dir is None or (report_dir / "index.html").is_file()
    if not trained and have_report and all(isinstance(part, dict) for part in (metrics, predictions, evaluation)):
        return Evaluated(metrics, predictions, evaluation, reused=True)
    result = evaluate(checkpoint, data_dir, store, split="test", reverse=True, progress=progress)
    write_outputs(result, eval_dir)
    if report_dir is not None:
        write_evaluation_report(result, data_dir, report_dir)
    return Evaluated(result.metrics, result.predictions, {"model": result.model, "options": result.options},
                     reused=False)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class FitProgress(pl.Callback):
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


def model_variant(training: Training) -> str:
    """model.architecture.variant of `training` (its config files, then its values)."""
    from vidcap.training.lightning_cli import resolve_config

    config = resolve_config(training.configs, {**training.values, "data.data_dir": ".", "data.features_dir": "."})
    return config["model"]["architecture"]["variant"]


def train(data_dir: str | os.PathLike, features_dir: str | os.PathLike, run_dir: str | os.PathLike,
          training: Training, progress: bool = True) -> tuple[Path, bool]:
    """`vidcap fit` with `training` and data.data_dir DATA, data.features_dir FEATS, trainer.default_root_dir RUN_DIR;
    return (RUN_DIR/checkpoints/last.ckpt, whether this call trained).

    Resumable: a run that finished is reused, an interrupted one continues from its last.ckpt. RUN_DIR/config.yaml
    is the resolved config of the run (`vidcap fit --config RUN_DIR/config.yaml` trains it again); a folder trained
    with other settings is refused (UsageError).
    """
    import yaml

    from vidcap.model.checkpoint import read_checkpoint
    from vidcap.training.lightning_cli import config_yaml, resolve_config, run_lightning

    run_dir = Path(run_dir).resolve()
    last = run_dir / "checkpoints" / "last.ckpt"
    config = resolve_config(training.configs, {
        **training.values, "data.data_dir": str(Path(data_dir).resolve()),
        "data.features_dir": str(Path(features_dir).resolve()), "trainer.default_root_dir": str(run_dir),
        "trainer.enable_progress_bar": False})
    text = config_yaml(config)
    config_file, done = run_dir / "config.yaml", run_dir / "done.json"
    previous = config_file.read_text(encoding="utf-8") if config_file.is_file() else None
    if previous is not None and _load_yaml(previous) != yaml.safe_load(text):
        raise UsageError(f"{run_dir}: trained with other settings (see its config.yaml); use another output folder "
                         "or delete it")
    if previous is None and last.is_file():
        raise UsageError(f"{run_dir}: has a checkpoint but no config.yaml (trained by an older vidcap?); use another "
                         "output folder or delete it")
    if previous is not None and done.is_file() and last.is_file():
        log.info("%s: already trained, reusing %s", run_dir, last)
        return last, False
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(config_file, text)
    if last.is_file():  # resume the interrupted run
        config = {**config, "ckpt_path": str(last)}
    callbacks = [FitProgress(f"fit {run_dir.name}")] if progress else []
    code = run_lightning("fit", config, callbacks=callbacks)
    if code != 0 or not last.is_file():
        raise UsageError(f"{run_dir}: training did not finish (exit code {code})")
    checkpoint = read_checkpoint(last)
    atomic.write_json(done, {"epochs": checkpoint["epoch"], "steps": checkpoint["global_step"]})
    return last, True


def _load_yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


# ----------------------------------------------------------------------------------------------------------------
# The demo


def _caption_one(data_dir: Path, checkpoint: Path, out: Path, predictions: dict[str, str]) -> dict[str, Any]:
    """Caption the first test video from its file (as `vidcap caption` does: with the checkpoint's decoding options,
    as `evaluate` decoded the test split) and draw its explanation."""
    from vidcap.caption import caption_video, explain_result, load_captioner
    from vidcap.datasets import read_captions, read_videos

    videos = read_videos(data_dir)
    test = videos[videos["split"] == "test"].sort_values("video_id")
    if test.empty:
        raise UsageError(f"{data_dir}: no test video to caption")
    row = test.iloc[0]
    captioner = load_captioner(checkpoint)
    result = caption_video(row["path"], captioner, with_frames=True)
    png = explain_result(result, out / "explain" / f"{row['video_id']}.png")
    captions = read_captions(data_dir)
    references = captions.loc[captions["video_id"] == row["video_id"], "caption"].tolist()
    return {"video_id": row["video_id"], "path": row["path"], "caption": result.caption,
            "evaluate_caption": predictions.get(row["video_id"]), "references": references,
            "explanation": str(png)}


def run_demo(out: str | os.PathLike = "demo_out", settings: DemoSettings | None = None,
             on_stage: Callable[[str, str, dict[str, Any]], None] | None = None, progress: bool = True,
             scst: bool = False) -> DemoResult:
    """Run every stage into OUT (data/, features/, run/, eval/, report/, explain/, metrics.json, timings.json).

    on_stage(stage, event, info) is called with event "start" and "end" (info: {"seconds", "reused"}) for each
    stage of `demo_stages(scst)`, for a progress display. `scst`: fine-tune the model by self-critical training
    (configs/experiment/scst.yaml) into OUT/scst/ (run/, eval/) and evaluate it, after the evaluate stage.
    """
    from vidcap.model.captioner import LOCAL_VARIANTS

    settings = settings or DemoSettings()
    training = settings.training()
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

    with stage("prepare") as st:
        st.reused = not prepare_synthetic(data_dir, settings, progress)
    with stage("extract") as st:
        local = model_variant(training) in LOCAL_VARIANTS  # not the demo's model (global), but another config's
        st.reused = not extract_features(data_dir, store, settings.image_size, local=local, progress=progress)
    with stage("fit") as st:
        checkpoint, trained = train(data_dir, store, run_dir, training, progress)
        st.reused = not trained
    with stage("evaluate") as st:
        report = out / "report" / "index.html"
        evaluated = evaluate_run(checkpoint, data_dir, store, eval_dir, trained, progress, report_dir=report.parent)
        st.reused, predictions, evaluation = evaluated.reused, evaluated.predictions, evaluated.evaluation
        metrics = {key: evaluated.metrics[key] for key in DEMO_METRIC_KEYS if key in evaluated.metrics}
    scst_result = None
    if scst:
        with stage("scst") as st:
            scst_dir = out / "scst"
            scst_checkpoint, scst_trained = train(data_dir, store, scst_dir / "run", settings.scst_training(checkpoint),
                                                  progress)
            scst_run = evaluate_run(scst_checkpoint, data_dir, store, scst_dir / "eval", scst_trained, progress)
            st.reused = scst_run.reused
            scst_result = {"metrics": {k: scst_run.metrics[k] for k in DEMO_METRIC_KEYS if k in scst_run.metrics},
                           "checkpoint": scst_checkpoint,
                           "samples": [(v, predictions.get(v), c) for v, c in sorted(scst_run.predictions.items())[:3]]}
    with stage("caption"):
        caption = _caption_one(data_dir, checkpoint, out, predictions)
    files = {"metrics": out / "metrics.json", "timings": out / "timings.json", "checkpoint": checkpoint,
             "predictions": eval_dir / "predictions.json", "report": report,
             "explanation": Path(caption["explanation"]), "config": run_dir / "config.yaml",
             "tensorboard": run_dir / "lightning_logs", "data": data_dir, "features": store}
    atomic.write_json(files["metrics"], metrics)
    atomic.write_json(files["timings"], timings)
    return DemoResult(out=out, metrics=metrics, timings=timings, checkpoint=checkpoint, caption=caption, files=files,
                      model=evaluation["model"], scst=scst_result)
