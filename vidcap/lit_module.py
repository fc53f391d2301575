"""The LightningModule: losses, optimisers, logging, and val/test decoding + caption metrics once per split.

`CaptionModule.__init__`'s type hints are the `model:` section of the LightningCLI config (configs/model/*.yaml);
`vocab_size`, `global_dim`, `local_dim`, `max_frames`, `vocab` and `feature_meta` are linked from the data module
(vidcap/cli/train.py), never written by hand.

Logged values (slashes in keys; all computed once over the whole split, never averaged per batch):
    train/loss   sum of word NLL per caption (EOS included) + attention_penalty * doubly-stochastic term
    train/ppl    exp(NLL per target token) of the batch
    val/loss     sum of word NLL per reference caption, over every reference of every video of the split
    val/ppl      exp(total NLL / total reference tokens incl. EOS), the paper's perplexity
    val/BLEU4, val/METEOR, val/ROUGE_L, val/CIDEr   coco-caption scores of the decoded split (beam search)
and the same under test/. The caption metrics need Java (METEOR, PTB tokenizer); `caption_metrics: false` skips
decoding and scoring for quick runs, and the CLI then monitors val/loss instead of val/CIDEr.

Under DDP each rank sees part of the split, and DistributedSampler pads it by repeating videos: the per-video
records are gathered, de-duplicated by video id, scored on rank 0 and broadcast, so every rank logs the same number.

Every checkpoint carries, under "vidcap", what a captioner needs (plain types, `torch.load(weights_only=True)`):
    {"format": 1, "model": asdict(ModelConfig), "vocab": Vocabulary.to_dict(), "features": FEATS/meta.json}
`load_checkpoint(path)` rebuilds the model from a checkpoint alone.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_lightning import LightningModule

from vidcap.errors import CheckpointError, UsageError
from vidcap.metrics import perplexity
from vidcap.model import CaptionModel, ModelConfig
from vidcap.vocab import Vocabulary

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
# Metric names of vidcap.metrics.score_captions -> logged names.
CAPTION_METRICS = {"Bleu_4": "BLEU4", "METEOR": "METEOR", "ROUGE_L": "ROUGE_L", "CIDEr": "CIDEr"}
# What torch.load raises on a file that is not a (weights-only) checkpoint: the weights-only unpickler refusing an
# object, a broken zip, and garbage bytes that happen to parse as pickle opcodes.
LOAD_ERRORS = (pickle.UnpicklingError, zipfile.BadZipFile, OSError, RuntimeError, EOFError, ValueError, KeyError,
               IndexError, AttributeError, TypeError, UnicodeDecodeError)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# References scored per forward pass at evaluation (a video can have ~40; logits are N x L x V).
_EVAL_CHUNK = 256


class CaptionModule(LightningModule):
    """Trains a `CaptionModel` (vidcap.model) on batches from `vidcap.data.collate`.

    Args:
        vocab_size, global_dim, local_dim, max_frames, vocab, feature_meta: linked from the data module.
        variant: `basic | local | global | local_global`, the rows of the paper's Table 1.
        encoder: frame encoder `none | position | lstm | bilstm`; `auto` = `position` for the attention variants
            and `none` for basic/local. `none` is the paper's model (blind to frame order).
        embed_dim, hidden_dim, attention_dim: E, H, A (the paper: 468, 3518, feature width; configs/paper.yaml).
        dropout: before the output projection (the paper: 0.5).
        selector: gate the attended context (Show-Attend-Tell's beta).
        attention_penalty: weight of the doubly-stochastic term sum_i (1 - sum_t alpha_ti)^2 (original 0.706,
            on the same per-caption scale of the NLL as here); attention variants only.
        optimizer: `adam` (modern reimplementations) or `adadelta` (the original: rho 0.95, eps 1e-6).
        lr: learning rate; None = 1e-3 for Adam, 1.0 for Adadelta.
        weight_decay: L2 on all parameters, added to the gradient (the original's 1e-4 on the summed loss is
            2e-4 here).
        beam_size, max_decode_len: decoding of val/test for the caption metrics (the original: 5, 50).
        caption_metrics: decode val/test and compute BLEU/METEOR/ROUGE/CIDEr (needs Java). False: only loss/ppl.
    """

    def __init__(
        self,
        vocab_size: int,
        global_dim: int,
        local_dim: int = 0,
        max_frames: int = 26,
        variant: Literal["basic", "local", "global", "local_global"] = "local_global",
        encoder: Literal["auto", "none", "position", "lstm", "bilstm"] = "auto",
        embed_dim: int = 256,
        hidden_dim: int = 512,
        attention_dim: int = 256,
        dropout: float = 0.5,
        selector: bool = True,
        attention_penalty: float = 0.706,
        optimizer: Literal["adam", "adadelta"] = "adam",
        lr: float | None = None,
        weight_decay: float = 0.0,
        beam_size: int = 5,
        max_decode_len: int = 30,
        caption_metrics: bool = True,
        vocab: dict | None = None,
        feature_meta: dict | None = None,
    ):
        super().__init__()
        # The vocabulary and the store's meta go into checkpoint["vidcap"], not into hparams.yaml / the logger.
        self.save_hyperparameters(ignore=["vocab", "feature_meta"])
        try:
            self.config = ModelConfig(
                vocab_size=vocab_size, global_dim=global_dim, local_dim=local_dim, variant=variant,
                encoder=encoder, embed_dim=embed_dim, hidden_dim=hidden_dim, attention_dim=attention_dim,
                dropout=dropout, max_frames=max_frames, selector=selector,
            )
        except ValueError as error:
            raise UsageError(f"model: {error}") from None
        self.model = CaptionModel(self.config)
        self.vocab = Vocabulary.from_dict(vocab) if vocab is not None else None
        self.feature_meta = feature_meta
        self._records: list[tuple[str, float, int, int, list[str]]] = []
        self._predictions: dict[str, str] = {}
        self.last_predictions: dict[str, str] = {}  # video id -> caption of the last val/test epoch

    # -- training -------------------------------------------------------------------------------------------------
    def _features(self, batch: dict) -> torch.Tensor:
        return self.model.combine_features(batch["global"], batch["local"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        feats, mask = self._features(batch), batch["mask"]
        index = batch["caption_video"]
        if not torch.equal(index, torch.arange(len(index), device=index.device)):
            feats, mask = feats[index], mask[index]
        targets = batch["targets"]
        logits, alpha = self.model(feats, mask, batch["inputs"])
        B = targets.shape[0]
        token_mask = targets != Vocabulary.PAD
        nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=Vocabulary.PAD,
                              reduction="sum")
        loss = nll / B
        if self.config.attention and self.hparams.attention_penalty:
            loss = loss + self.hparams.attention_penalty * self.model.attention_penalty(alpha, token_mask, mask)
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        self.log("train/ppl", torch.exp(nll.detach() / token_mask.sum()), batch_size=B)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "adadelta":
            return torch.optim.Adadelta(self.parameters(), lr=hp.lr or 1.0, rho=0.95, eps=1e-6,
                                        weight_decay=hp.weight_decay)
        return torch.optim.Adam(self.parameters(), lr=hp.lr or 1e-3, weight_decay=hp.weight_decay)

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
        return bool(self.hparams.caption_metrics) and not self.trainer.sanity_checking

    @torch.no_grad()
    def _eval_step(self, batch: dict) -> None:
        """NLL of every reference of every video (B videos, N references), and a beam-search caption per video."""
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
        refs = torch.bincount(index, minlength=B)
        for i, video_id in enumerate(batch["video_ids"]):
            self._records.append((video_id, nll[i].item(), int(tokens[i]), int(refs[i]), batch["references"][i]))
        if self._decoding():
            from vidcap.decoding import DecodingOptions, decode

            options = DecodingOptions(beam_size=self.hparams.beam_size, max_len=self.hparams.max_decode_len)
            hypotheses = decode(self.model, feats, mask, options, Vocabulary.BOS, Vocabulary.EOS)
            for video_id, nbest in zip(batch["video_ids"], hypotheses, strict=True):
                self._predictions[video_id] = self._vocab().decode(nbest[0].tokens)

    def _eval_epoch_end(self, split: str) -> None:
        records, predictions = self._records, self._predictions
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (records, predictions))
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
            from vidcap.metrics import score_captions

            result = score_captions(references, predictions)
            scores[0] = {CAPTION_METRICS[k]: float(result[k]) for k in CAPTION_METRICS}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
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


def read_vidcap_section(checkpoint: Any, where: str) -> dict[str, Any]:
    """checkpoint["vidcap"], checked; CheckpointError naming `where` otherwise."""
    meta = checkpoint.get("vidcap") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: not a vidcap checkpoint (no 'vidcap' section)")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where}: checkpoint format {meta.get('format')!r} is not supported "
                              f"(expected {CHECKPOINT_FORMAT})")
    return meta


def _load_failure(error: BaseException) -> str:
    """One short line for why torch.load failed: its weights-only messages are a page long, with ANSI codes."""
    if isinstance(error, pickle.UnpicklingError):
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found:
            return (f"refused: loading it would run code ({found.group(1)}); vidcap loads checkpoints with "
                    "torch.load(weights_only=True)")
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(error))
        return f"not a checkpoint (unpickling failed: {found.group(1).strip() if found else type(error).__name__})"
    # Name it by type and its first sentence (EOFError and KeyError say little else).
    first = re.split(r"(?<=\.)\s", " ".join(_ANSI.sub("", str(error)).split()), maxsplit=1)[0]
    return f"not a loadable checkpoint ({type(error).__name__}{': ' + first[:200] if first else ''})"


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load(path, weights_only=True): no pickled code runs. Every way a file can fail to load (missing, a
    folder, empty, corrupt, a pickle that would need code) is a one-line CheckpointError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # A raw pickle makes torch warn about its protocol before refusing it: the refusal says enough.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except LOAD_ERRORS as error:
        raise CheckpointError(f"{path}: {_load_failure(error)}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a vidcap checkpoint (no 'vidcap' section)")
    return checkpoint


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[CaptionModel, Vocabulary, dict[str, Any]]:
    """A Lightning checkpoint -> (CaptionModel in eval mode, Vocabulary, feature store meta), with
    `weights_only=True` (no pickled code runs). Raises CheckpointError naming the file and the reason."""
    checkpoint = read_checkpoint(path, map_location)
    meta = read_vidcap_section(checkpoint, str(path))
    try:
        model = CaptionModel(ModelConfig(**meta["model"]))
        state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(state)
        vocab = Vocabulary.from_dict(meta["vocab"])
    except (KeyError, TypeError, ValueError, RuntimeError, UsageError) as error:
        raise CheckpointError(f"{path}: inconsistent checkpoint: {error}") from None
    return model.eval(), vocab, meta["features"]
