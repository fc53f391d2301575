"""Evaluate a trained captioner on a split: captions, the coco-caption metrics and perplexity, the reversal test.

`evaluate(checkpoint, data_dir, features_dir, split=split)` runs the LightningModule's own test loop (`Trainer.test`), so
that it works unchanged on several processes (DDP): every rank decodes its share of the videos, the per-video records
are gathered, the duplicates that DistributedSampler adds to even out the ranks are dropped by video id, and the
whole split is scored once on rank 0 (CIDEr's IDF comes from all the references of the split: docs/metrics.md).

What it adds to `CaptionModule`'s test loop (`EvaluationModule`, a subclass):
- the n-best list of every video (`n_best > 1`), from the same beam search as the best caption;
- the reversal test (`reverse=True`): each video is decoded a second time with its valid frames in reverse order
  (padding stays at the end). A model that cannot see frame order (Basic, or attention without a frame encoder)
  writes the same caption; `reversal_changed` is the share of videos whose caption changed;
- the dataset's own metrics, through `vidcap.datasets.content_metrics` (e.g. the synthetic dataset's objects and
  order, colour, shape, direction), chosen by the dataset named in DIR/prepare.json.

Metric keys (metrics.json): `Bleu_4`, `METEOR`, `ROUGE_L`, `CIDEr`, `perplexity` (exp of the total NLL of every
reference over their tokens, EOS included), `reversal_changed` with the reversal test, and the dataset's own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning import Callback

from vidcap import atomic, launcher
from vidcap.errors import CheckpointError, UsageError
from vidcap.model.captioner import ModelConfig
from vidcap.model.decoding import DecodingOptions, Hypothesis, decode, words_and_attention
from vidcap.precision import check_precision
from vidcap.text.metrics import LOGGED_NAMES
from vidcap.text.vocab import Vocabulary
from vidcap.training.module import CaptionModule

log = logging.getLogger(__name__)

# Logged name of CaptionModule's test loop (test/NAME) -> metrics.json key.
LOGGED_METRICS = {name: key for key, name in LOGGED_NAMES.items()}  # logged name -> coco key


@dataclass
class EvaluationResult:
    """What `evaluate` found. Every rank gets the whole split's result; only rank 0 should write or print it.

    metrics: the metrics.json keys (module docstring) -> float.
    predictions: video id -> best caption (sorted by id).
    nbest: video id -> [{"caption", "log_prob", "score"}, ...] best first, when n_best > 1 (else None).
    reversed_predictions: video id -> caption of the reversed frames, when reverse=True (else None).
    attention: video id -> (words, weights) of the best caption, for the models with attention (else None): words
      are its tokens then "<eos>", weights (L, K) float32 the attention over the video's K valid frames when each
      word was emitted, one-hot on the frame taken for hard attention (what the report's cards show).
    model: the checkpoint's ModelConfig as a dict (variant, encoder, sizes).
    features: the feature-store meta.json the model was trained on (extractor names and sizes).
    dataset: the dataset name from DIR/prepare.json (`msvd`, `lsmdc`, `synthetic`, ...), or None.
    """

    split: str
    checkpoint: str
    metrics: dict[str, float]
    predictions: dict[str, str]
    model: dict[str, Any]
    features: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    nbest: dict[str, list[dict[str, Any]]] | None = None
    reversed_predictions: dict[str, str] | None = None
    attention: dict[str, tuple[list[str], np.ndarray]] | None = None
    rank: int = 0
    options: dict[str, Any] = field(default_factory=dict)


def reverse_frames(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """feats (B, T, D) with the valid frames of each video first (mask (B, T) bool) -> (B, T, D) with those frames
    in reverse order and the padding left where it was (at the end)."""
    T = feats.shape[1]
    length = mask.sum(1, keepdim=True)  # (B, 1)
    t = torch.arange(T, device=feats.device).unsqueeze(0)  # (1, T)
    index = torch.where(t < length, length - 1 - t, t)  # (B, T)
    return feats.gather(1, index.unsqueeze(-1).expand_as(feats))


def reversal_changed(predictions: Mapping[str, str], reversed_predictions: Mapping[str, str]) -> float:
    """Share of the videos whose caption changes when their frames are fed in reverse order (0 for a model blind
    to frame order). Both come from the same vocabulary's `decode`, so equal words are equal strings."""
    return sum(predictions[v] != reversed_predictions[v] for v in predictions) / len(predictions)


class EvaluationModule(CaptionModule):
    """CaptionModule whose test loop also keeps the n-best lists (`decoding.n_best > 1`), the attention of the best
    caption (models with attention) and, with `reverse`, the captions of the reversed frames. After `Trainer.test`,
    every rank holds the whole split's `last_predictions` (from CaptionModule), `last_nbest`, `last_attention` and
    `last_reversed`."""

    def __init__(self, *args: Any, reverse: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reverse = reverse
        self._nbest: dict[str, list[dict[str, Any]]] = {}
        self._reversed: dict[str, str] = {}
        self._attention: dict[str, tuple[list[str], np.ndarray]] = {}
        self.last_nbest: dict[str, list[dict[str, Any]]] = {}
        self.last_reversed: dict[str, str] = {}
        self.last_attention: dict[str, tuple[list[str], np.ndarray]] = {}

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._nbest, self._reversed, self._attention = {}, {}, {}

    def _decoded(self, video_ids: list[str], feats: torch.Tensor, mask: torch.Tensor,
                 hypotheses: list[list[Hypothesis]]) -> None:
        super()._decoded(video_ids, feats, mask, hypotheses)
        vocab = self._vocab()
        if self.decoding.n_best > 1:
            for video_id, nbest in zip(video_ids, hypotheses, strict=True):
                self._nbest[video_id] = [
                    {"caption": vocab.decode(h.tokens), "log_prob": float(h.log_prob), "score": float(h.score)}
                    for h in nbest
                ]
        if self.config.attends:
            valid = mask.cpu().numpy()
            for i, (video_id, nbest) in enumerate(zip(video_ids, hypotheses, strict=True)):
                words, weights = words_and_attention(nbest[0], vocab, valid[i])
                if self.config.attention == "hard":  # at test time hard attention takes the most likely frame
                    weights = np.eye(weights.shape[1], dtype=np.float32)[weights.argmax(1)]
                self._attention[video_id] = (words, weights)
        if self.reverse:
            best_only = replace(self.decoding, n_best=1)
            reversed_ = decode(self.model, reverse_frames(feats, mask), mask, best_only, Vocabulary.BOS,
                               Vocabulary.EOS)
            for video_id, nbest in zip(video_ids, reversed_, strict=True):
                self._reversed[video_id] = vocab.decode(nbest[0].tokens)

    def on_test_epoch_end(self) -> None:
        gathered = launcher.gather((self._nbest, self._reversed, self._attention))
        # Merging dicts drops the videos DistributedSampler repeated (same id, same caption).
        parts = tuple({k: v for rank in gathered for k, v in rank[n].items()} for n in range(len(gathered[0])))
        self.last_nbest, self.last_reversed, self.last_attention = (dict(sorted(part.items())) for part in parts)
        super().on_test_epoch_end()


class _Progress(Callback):
    """A tqdm bar on stderr over the test batches, rank 0 only (Lightning's own bar writes to stdout, where the
    CLI prints its results)."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            from tqdm import tqdm

            total = trainer.num_test_batches[0] if trainer.num_test_batches else None
            self.bar = tqdm(total=total, desc=self.desc, unit="batch")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.bar is not None:
            self.bar.update()

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _build_module(checkpoint: Path, ckpt: Mapping[str, Any], meta: Mapping[str, Any], decoding: DecodingOptions,
                  reverse: bool) -> EvaluationModule:
    """The checkpoint's model, decoding with `decoding` (CheckpointError naming the file when it does not fit)."""
    try:
        module = EvaluationModule(ModelConfig(**meta["model"]), decoding, caption_metrics=True,
                                  vocab=meta["vocab"], feature_meta=meta["features"], reverse=reverse)
        module.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError, UsageError) as error:
        raise CheckpointError(f"{checkpoint}: cannot rebuild the model: {' '.join(str(error).split())[:300]}") from None
    return module


def evaluate(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    features_dir: str | os.PathLike,
    decoding: DecodingOptions | None = None,
    *,
    split: str = "test",
    reverse: bool = False,
    devices: int = 1,
    accelerator: str = "cpu",
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
    precision: str = "32-true",
    check_outputs: Callable[[], object] | None = None,
    skip_corrupt: bool = False,
) -> EvaluationResult:
    """Decode `split` with a checkpoint and score it (see the module docstring).

    decoding: beam size, most words per caption, n-best (`result.nbest` when n_best > 1), ...; None: the options
    the model was trained with (vidcap.model.checkpoint.trained_decoding). `vidcap evaluate` passes those with its flags
    in place (vidcap.model.checkpoint.with_overrides). reverse: also decode the reversed frames (the reversal test).
    devices > 1 runs DDP with Lightning's launcher, which starts the current command again in devices - 1 more
    processes: call it from `vidcap evaluate` (or a script that does nothing else before this call); every rank
    returns, and only `result.rank == 0` should write files. Under torchrun or srun (any number of nodes;
    vidcap/launcher.py) the processes the launcher started are the ranks, and `devices` may only repeat their number
    per node.
    batch_size: videos per test batch, each with all its references.
    precision: "32-true" or "bf16-mixed" (vidcap.precision.PRECISIONS), Lightning's precision for the test loop; use
    the training run's `trainer.precision` to reproduce its val/ numbers.
    check_outputs: called with the checks, before anything is decoded, by the process that writes the results (rank
    0), e.g. to create the output folders.
    skip_corrupt: leave out (and count) the videos whose feature file fails the check before decoding
    (vidcap.training.data.CaptionDataModule), instead of refusing with a UsageError naming them.
    Raises UsageError / CheckpointError naming the file and the reason (vidcap.model.checkpoint.store_mismatches: a store
    or vocabulary the model cannot read); under a launcher, on every rank together (launcher.agree) when any rank
    fails a check, so that none waits alone in the test loop's first collective call.
    """
    import pytorch_lightning as pl

    from vidcap.datasets import content_metrics, dataset_module
    from vidcap.model.checkpoint import (
        read_checkpoint,
        read_vidcap_section,
        store_mismatches,
        trained_decoding,
    )
    from vidcap.training.data import CaptionDataModule, CaptionDataset

    checkpoint, data_dir, features_dir = Path(checkpoint), Path(data_dir), Path(features_dir)
    # Lightning's Trainer runs on the launcher's group as it is (the backend it would pick itself).
    on_cuda = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    launched = launcher.join("nccl" if on_cuda else "gloo")

    def prepare() -> tuple[int, dict[str, Any], DecodingOptions, EvaluationModule, CaptionDataModule, int]:
        """Every check, before the first collective call: (devices per node, the checkpoint's vidcap section,
        decoding, module, set-up data, max_caption_len)."""
        if devices < 1:
            raise UsageError(f"--devices must be >= 1, got {devices}")
        per_node = devices if launched is None else launcher.devices_per_node(launched, devices)
        check_precision(precision)
        ckpt = read_checkpoint(checkpoint)
        meta = read_vidcap_section(ckpt, str(checkpoint))
        if not isinstance(meta.get("model"), dict) or "state_dict" not in ckpt:
            raise CheckpointError(f"{checkpoint}: not a checkpoint of vidcap's CaptionModule (no model)")
        chosen = trained_decoding(meta, str(checkpoint)) if decoding is None else decoding

        # Perplexity counts the references as the model was trained on them (cut to the same max_caption_len).
        max_caption_len = int((ckpt.get("datamodule_hyper_parameters") or {}).get("max_caption_len") or 30)
        data = CaptionDataModule(str(data_dir), str(features_dir), batch_size=batch_size,
                                 eval_batch_size=batch_size, num_workers=num_workers,
                                 max_caption_len=max_caption_len, test_split=split, skip_corrupt=skip_corrupt)
        problems = store_mismatches(meta, data.feature_meta, data.vocab)
        if problems:
            raise UsageError(f"{checkpoint}: cannot evaluate it on {features_dir} and {data_dir}: "
                             + "; ".join(problems))
        module = _build_module(checkpoint, ckpt, meta, chosen, reverse)
        data.setup("test")
        if split == "train":
            # The train split is one item per (video, reference) for training; evaluation wants one per video.
            data.datasets[split] = CaptionDataset(features_dir, data.datasets[split].captions, per_reference=False)
        if check_outputs is not None and (launched is None or launched.rank == 0):
            check_outputs()
        return per_node, meta, chosen, module, data, max_caption_len

    devices, meta, chosen, module, data, max_caption_len = launcher.agree(launched, prepare)
    num_nodes = launched.num_nodes if launched is not None else 1

    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes,
        strategy="ddp" if devices * num_nodes > 1 else "auto", precision=precision,
        logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
        callbacks=[_Progress(f"evaluate {split}")] if progress else [],
    )
    trainer.test(module, datamodule=data, verbose=False)

    # Lightning keeps logged values as float32 tensors: 6 decimals are all they hold.
    metrics = {key: round(float(trainer.callback_metrics[f"test/{name}"]), 6)
               for name, key in LOGGED_METRICS.items() if f"test/{name}" in trainer.callback_metrics}
    predictions = dict(module.last_predictions)
    reversed_predictions = module.last_reversed if reverse else None
    if reversed_predictions is not None and predictions:
        metrics["reversal_changed"] = reversal_changed(predictions, reversed_predictions)
    metrics.update(content_metrics(data_dir, predictions, reversed_predictions))
    dataset = dataset_module(data_dir)
    result = EvaluationResult(
        split=split, checkpoint=str(checkpoint), metrics=metrics, predictions=predictions, model=meta["model"],
        features=meta.get("features") or {}, dataset=dataset.NAME if dataset else None,
        nbest=module.last_nbest or None, reversed_predictions=reversed_predictions,
        attention=module.last_attention or None, rank=trainer.global_rank,
        options={**asdict(chosen), "max_caption_len": max_caption_len, "devices": devices, "num_nodes": num_nodes,
                 "precision": precision},
    )
    log.info("%s: %s", split, ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    return result


def write_outputs(result: EvaluationResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write predictions.json, metrics.json (+ nbest.json, reversed_predictions.json when computed) to OUT_DIR.

    metrics.json holds the metric keys only; evaluation.json says what was evaluated (checkpoint, split, options).
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{out}: cannot create the output folder: {error.strerror}") from None
    files = {"predictions": result.predictions, "metrics": result.metrics}
    if result.nbest is not None:
        files["nbest"] = result.nbest
    if result.reversed_predictions is not None:
        files["reversed_predictions"] = result.reversed_predictions
    files["evaluation"] = {"checkpoint": result.checkpoint, "split": result.split, "dataset": result.dataset,
                           "model": result.model, "options": result.options}
    return {name: atomic.write_json(out / f"{name}.json", content, indent=1) for name, content in files.items()}
