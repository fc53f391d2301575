"""The LightningModule: losses, optimisers, logging, and val/test decoding + caption metrics once per split.

`CaptionModule.__init__`'s type hints are the `model:` section of the LightningCLI config (configs/):
    model:
      architecture: {variant, encoder, embed_dim, ...}    # vidcap.model.captioner.ModelConfig
      decoding: {beam_size, max_len, ...}                 # vidcap.model.decoding.DecodingOptions, for val/test
      attention_penalty, optimizer, lr, weight_decay, caption_metrics
The data-derived sizes of ModelConfig (`DATA_SIZES`), the vocabulary and the feature meta are linked from the data
module (vidcap/training/lightning_cli.py), never written by hand.

Logged values (slashes in keys; all computed once over the whole split, never averaged per batch):
    train/loss   sum of word NLL per caption (EOS included) + the regularisers (`CaptionModule.regularisers`)
    train/ppl    exp(NLL per target token) of the batch
    train/frame_baseline  hard attention: the mean baseline (moving averages of returns) REINFORCE compared with
    train/reward, train/baseline, train/entropy, train/length  self-critical training (`scst`, vidcap.training.scst): mean
                 reward and baseline of the samples, word entropy per sampled token, words per sampled caption
    val/loss     sum of word NLL per reference caption, over every reference of every video of the split
    val/ppl      exp(total NLL / total reference tokens incl. EOS), the paper's perplexity (docs/metrics.md)
    val/BLEU4, val/METEOR, val/ROUGE_L, val/CIDEr   coco-caption scores of the decoded split (beam search)
and the same under test/. The caption metrics need Java (METEOR, PTB tokenizer); `caption_metrics: false` skips
decoding and scoring for quick runs, and the CLI then monitors val/loss instead of val/CIDEr.

Under DDP each rank sees part of the split, and DistributedSampler pads it by repeating videos: the per-video
records are gathered, de-duplicated by video id, scored on rank 0 and broadcast, so every rank logs the same number.

Every checkpoint carries, under "vidcap", what a captioner needs (plain types, `torch.load(weights_only=True)`):
    {"format": 1, "model": asdict(ModelConfig), "vocab": Vocabulary.to_dict(), "features": FEATS/meta.json,
     "decoding": asdict(DecodingOptions)}
`vidcap.model.checkpoint.load_checkpoint(path)` rebuilds the model from a checkpoint alone. The checkpoint's
hyper-parameters hold the architecture only (`ARCHITECTURE`): LightningCLI restores them with `--ckpt_path FILE`,
while the decoding and training options still come from the config and the command line.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, fields
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_lightning import LightningModule

from vidcap import launcher
from vidcap.errors import CheckpointError, UsageError
from vidcap.model.captioner import CaptionModel, ModelConfig
from vidcap.model.checkpoint import CHECKPOINT_FORMAT, read_vidcap_section
from vidcap.model.decoding import DecodingOptions, Hypothesis, decode
from vidcap.text.metrics import CAPTION_METRICS as CAPTION_METRIC_KEYS
from vidcap.text.metrics import LOGGED_NAMES, perplexity
from vidcap.text.vocab import Vocabulary
from vidcap.training.hard_attention import HardAttentionObjective, HardAttentionOptions
from vidcap.training.scst import (
    CaptionReward,
    SCSTOptions,
    SelfCritical,
    load_initial_weights,
    train_references,
)

log = logging.getLogger(__name__)

# Metric names of vidcap.text.metrics.score_captions -> logged names.
CAPTION_METRICS = {key: LOGGED_NAMES[key] for key in CAPTION_METRIC_KEYS}  # coco key -> logged name
# ModelConfig field -> the data module attribute it is linked from (vidcap/training/lightning_cli.py).
DATA_SIZES = {"vocab_size": "vocab_size", "global_dim": "global_dim", "local_dim": "local_dim",
              "max_frames": "num_frames"}
# What a checkpoint fixes: every other field of ModelConfig.
ARCHITECTURE = tuple(f.name for f in fields(ModelConfig) if f.name not in DATA_SIZES)
# References scored per forward pass at evaluation (a video can have ~40; logits are N x L x V).
_EVAL_CHUNK = 256


class CaptionModule(LightningModule):
    """Trains a `CaptionModel` (vidcap.model.captioner) on batches from `vidcap.training.data.collate`.

    Args:
        architecture: the model (vidcap.model.captioner.ModelConfig; docs/model.md has the paper's sizes).
        decoding: beam search of val/test for the caption metrics (the original: beam 5, at most 50 words).
        attention_penalty: weight of the doubly-stochastic term (1 - sum_t alpha_ti)^2; attention variants only.
            The original's 0.706 weighs its own scale of the term (`attention_penalty_scale: paper`), not this one.
        attention_penalty_scale: `vidcap`: summed over each video's real frames and real steps, averaged over the
            captions like the NLL. `paper`, the original's: mean over all frames, summed over the batch, padded
            steps included (vidcap.model.captioner.CaptionModel.attention_penalty; docs/paper_vs_original.md). `paper` also
            counts the padded steps in the entropy term.
        attention_entropy: weight of the original's optional attention-entropy term (0: off, as in its config).
        optimizer: `adam` (modern reimplementations) or `adadelta` (the original: rho 0.95, eps 1e-6).
        lr: learning rate; None = 1e-3 for Adam, 1.0 for Adadelta.
        weight_decay: L2 on all parameters: `weight_decay * w` added to the gradient by the optimizer, after
            gradient clipping; with `weight_decay_in_loss`, `weight_decay * sum(w^2)` added to the loss, before
            clipping, as the original did (its 1e-4; the same pull as 2e-4 in the optimizer, clipping aside).
        weight_decay_in_loss: see weight_decay.
        caption_metrics: decode val/test and compute BLEU/METEOR/ROUGE/CIDEr (needs Java). False: only loss/ppl.
        vocab, feature_meta: linked from the data module (or restored from a checkpoint).
        init_from: a checkpoint to take the starting weights from (its architecture: vidcap/training/lightning_cli.py).
        scst: train with the self-critical loss instead of cross-entropy (vidcap.training.scst; configs/experiment/scst.yaml).
        hard_attention: REINFORCE for `attention: hard` models (vidcap.training.hard_attention).
    """

    def __init__(
        self,
        architecture: ModelConfig,
        decoding: DecodingOptions = DecodingOptions(),  # noqa: B008 (frozen)
        attention_penalty: float = 0.706,
        attention_penalty_scale: Literal["vidcap", "paper"] = "vidcap",
        attention_entropy: float = 0.0,
        optimizer: Literal["adam", "adadelta"] = "adam",
        lr: float | None = None,
        weight_decay: float = 0.0,
        weight_decay_in_loss: bool = False,
        caption_metrics: bool = True,
        vocab: dict | None = None,
        feature_meta: dict | None = None,
        # -- learning from rewards (issue 12) --
        init_from: str | None = None,
        scst: SCSTOptions | None = None,
        hard_attention: HardAttentionOptions = HardAttentionOptions(),  # noqa: B008 (frozen)
    ):
        super().__init__()
        # Only the architecture: LightningCLI puts these back into the config for `--ckpt_path FILE`, and the
        # data-derived sizes are link targets it could not take.
        self.save_hyperparameters({"architecture": {k: getattr(architecture, k) for k in ARCHITECTURE}})
        self.config = architecture
        self.model = CaptionModel(architecture)
        self.decoding = decoding
        self.attention_penalty = attention_penalty
        self.attention_penalty_scale, self.attention_entropy = attention_penalty_scale, attention_entropy
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.weight_decay_in_loss = weight_decay_in_loss
        self.caption_metrics = caption_metrics
        self.vocab = Vocabulary.from_dict(vocab) if vocab is not None else None
        self.feature_meta = feature_meta
        if init_from is not None:
            load_initial_weights(self.model, init_from, self.vocab, feature_meta)
        if scst is not None:
            scst.check()
        self.scst, self.hard_attention_options = scst, hard_attention
        self.self_critical: SelfCritical | None = None  # built at the start of fit, from the train split
        self.hard_attention = HardAttentionObjective(hard_attention) if architecture.attention == "hard" else None
        self._records: list[tuple[str, float, int, int, list[str]]] = []
        self._predictions: dict[str, str] = {}
        self.last_predictions: dict[str, str] = {}  # video id -> caption of the last val/test epoch

    # -- training -------------------------------------------------------------------------------------------------
    def _features(self, batch: dict) -> torch.Tensor:
        return self.model.combine_features(batch["global"], batch["local"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.self_critical is not None:
            return self._self_critical_step(batch)
        feats, mask = self._features(batch), batch["mask"]
        index = batch["caption_video"]
        # Training batches hold one caption per video, in order (vidcap.training.data.collate: every item has at least one
        # caption, so N == B means index == arange(B)). Comparing shapes, not values, keeps the step free of a
        # host-device sync (issue 17).
        if len(index) != feats.shape[0]:
            feats, mask = feats[index], mask[index]
        targets = batch["targets"]
        logits, alpha, frames = self.model.teacher_forcing(feats, mask, batch["inputs"])
        B = targets.shape[0]
        token_mask = targets != Vocabulary.PAD
        word_nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=Vocabulary.PAD,
                                   reduction="none").view(targets.shape)
        nll = word_nll.sum()
        loss = nll / B + self.regularisers(alpha, token_mask, mask)
        if frames is not None:  # hard attention: REINFORCE for the frames taken (vidcap.training.hard_attention)
            entropy = self.model.attention_entropy(alpha, token_mask)
            term, baseline = self.hard_attention(-word_nll, alpha, frames, token_mask, entropy)
            loss = loss + term
            self.log("train/frame_baseline", baseline, batch_size=B)
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        self.log("train/ppl", torch.exp(nll.detach() / token_mask.sum()), batch_size=B)
        return loss

    def on_fit_start(self) -> None:
        if self.scst is None or self.self_critical is not None:
            return
        data_dir = getattr(self.trainer.datamodule, "data_dir", None)
        if data_dir is None:
            raise UsageError("scst needs the data module's data_dir (the train split's references)")
        reward = CaptionReward(train_references(data_dir), self.scst.cider_weight, self.scst.bleu_weight)
        self.self_critical = SelfCritical(self.scst, reward, self._vocab(), self.decoding.max_len,
                                          self.hard_attention_options)

    def _self_critical_step(self, batch: dict) -> torch.Tensor:
        """The self-critical loss on the batch's videos (vidcap.training.scst); logs train/reward, train/baseline,
        train/entropy (of the sampled words, per token) and train/length (words per sampled caption)."""
        loss, values = self.self_critical(self.model, self._features(batch), batch["mask"], batch["video_ids"])
        B = len(batch["video_ids"])
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        for name, value in values.items():
            self.log(f"train/{name}", value, prog_bar=name == "reward", batch_size=B)
        return loss

    def regularisers(self, alpha: torch.Tensor, token_mask: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """What the training loss adds to the NLL per caption: the attention penalty and entropy terms, and the
        L2 term with `weight_decay_in_loss`. alpha (N, L, T), token_mask (N, L), frame_mask (N, T) -> scalar."""
        total = alpha.new_zeros(())
        if self.config.attends and self.attention_penalty:
            total = total + self.attention_penalty * self.model.attention_penalty(
                alpha, token_mask, frame_mask, self.attention_penalty_scale)
        if self.config.attends and self.attention_entropy:
            total = total + self.attention_entropy * self.model.attention_entropy(
                alpha, token_mask, self.attention_penalty_scale)
        if self.weight_decay_in_loss and self.weight_decay:
            total = total + self.weight_decay * sum(p.float().square().sum() for p in self.model.parameters())
        return total

    def configure_optimizers(self) -> torch.optim.Optimizer:
        weight_decay = 0.0 if self.weight_decay_in_loss else self.weight_decay
        if self.optimizer_name == "adadelta":
            return torch.optim.Adadelta(self.parameters(), lr=self.lr or 1.0, rho=0.95, eps=1e-6,
                                        weight_decay=weight_decay)
        return torch.optim.Adam(self.parameters(), lr=self.lr or 1e-3, weight_decay=weight_decay)

    # -- evaluation -----------------------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_start(self) -> None:
        self._reset_eval()

    def on_test_epoch_start(self) -> None:
        self._reset_eval()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def _reset_eval(self) -> None:
        self._records, self._predictions = [], {}

    def _decoding(self) -> bool:
        return self.caption_metrics and not self.trainer.sanity_checking

    @torch.no_grad()
    def _eval_step(self, batch: dict) -> None:
        """NLL of every reference of every video (B videos, N references), and the n-best captions of each video
        (one beam search, handed to `_decoded`)."""
        feats, mask = self._features(batch), batch["mask"]
        index, inputs, targets = batch["caption_video"], batch["inputs"], batch["targets"]
        B = feats.shape[0]
        nll = torch.zeros(B, dtype=torch.float64, device=feats.device)
        for start in range(0, len(index), _EVAL_CHUNK):
            part = slice(start, start + _EVAL_CHUNK)
            logits, _ = self.model(feats[index[part]], mask[index[part]], inputs[part])
            word_nll = F.cross_entropy(logits.flatten(0, 1).float(), targets[part].flatten(),
                                       ignore_index=Vocabulary.PAD, reduction="none")
            nll.index_add_(0, index[part], word_nll.view(targets[part].shape).sum(1).double())
        tokens = torch.zeros(B, dtype=torch.long, device=feats.device)
        tokens.index_add_(0, index, (targets != Vocabulary.PAD).sum(1))
        refs = torch.zeros_like(tokens).index_add_(0, index, torch.ones_like(index))  # bincount syncs on CUDA
        # One copy to the host per batch, not three per video.
        counts = torch.stack([nll, tokens.double(), refs.double()], 1).tolist()
        for video_id, (video_nll, n_tokens, n_refs), references in zip(batch["video_ids"], counts,
                                                                      batch["references"], strict=True):
            self._records.append((video_id, video_nll, int(n_tokens), int(n_refs), references))
        if self._decoding():
            hypotheses = decode(self.model, feats, mask, self.decoding, Vocabulary.BOS, Vocabulary.EOS)
            self._decoded(batch["video_ids"], feats, mask, hypotheses)

    def _decoded(self, video_ids: list[str], feats: torch.Tensor, mask: torch.Tensor,
                 hypotheses: list[list[Hypothesis]]) -> None:
        """Keep the best caption of each video. feats (B, T, D), mask (B, T): the batch that was decoded (for
        subclasses that decode more, vidcap.evaluation)."""
        vocab = self._vocab()
        for video_id, nbest in zip(video_ids, hypotheses, strict=True):
            self._predictions[video_id] = vocab.decode(nbest[0].tokens)

    def _eval_epoch_end(self, split: str) -> None:
        gathered = launcher.gather((self._records, self._predictions))
        records = [r for part, _ in gathered for r in part]
        predictions = {k: v for _, part in gathered for k, v in part.items()}
        # DistributedSampler repeats videos to even out the ranks: keep one record per video.
        unique = {r[0]: r for r in records}
        if not unique:
            return
        total_nll = sum(r[1] for r in unique.values())
        n_tokens = sum(r[2] for r in unique.values())
        n_refs = sum(r[3] for r in unique.values())
        values = {"loss": total_nll / n_refs, "ppl": perplexity(total_nll, n_tokens)}
        if self._decoding():
            values.update(self._score({r[0]: r[4] for r in unique.values()}, predictions))
            self.last_predictions = dict(sorted(predictions.items()))
        for name, value in values.items():
            # Identical on every rank already; sync_dist only silences Lightning's epoch-level DDP warning.
            self.log(f"{split}/{name}", value, prog_bar=name in ("loss", "CIDEr"), sync_dist=True)
        if self.global_rank == 0:
            log.info("%s: %s", split, ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
        self._reset_eval()

    def _score(self, references: dict[str, list[str]], predictions: dict[str, str]) -> dict[str, float]:
        """coco-caption scores of the whole split, computed on rank 0 only and broadcast to every rank."""
        scores: list[Any] = [None]
        if self.global_rank == 0:
            from vidcap.text.metrics import score_captions

            result = score_captions(references, predictions)
            scores[0] = {CAPTION_METRICS[k]: float(result[k]) for k in CAPTION_METRICS}
        if launcher.distributed():
            dist.broadcast_object_list(scores, src=0)
        return scores[0]

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def _vocab(self) -> Vocabulary:
        if self.vocab is None:
            raise UsageError("CaptionModule has no vocabulary (link it from the data module, or load a checkpoint)")
        return self.vocab

    def vidcap_metadata(self) -> dict[str, Any]:
        """What `checkpoint["vidcap"]` holds: plain types only."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": asdict(self.config),
            "vocab": self._vocab().to_dict(),
            "features": self.feature_meta,
            "decoding": asdict(self.decoding),  # what `vidcap evaluate` decodes with unless told otherwise
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vidcap"] = self.vidcap_metadata()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = read_vidcap_section(checkpoint, "checkpoint")
        saved = ModelConfig(**meta["model"])
        if saved != self.config:
            diff = ", ".join(f"{k}={v!r} (config: {getattr(self.config, k)!r})"
                             for k, v in asdict(saved).items() if getattr(self.config, k) != v)
            raise CheckpointError(f"the checkpoint's model differs: {diff}; use the config it was trained with")
        vocab = Vocabulary.from_dict(meta["vocab"])
        if self.vocab is not None and vocab != self.vocab:
            raise CheckpointError("the checkpoint's vocabulary differs from the data directory's vocab.json")
        self.vocab = vocab
        if self.feature_meta is None:
            self.feature_meta = meta["features"]
