"""Self-critical sequence training (SCST; Rennie et al., CVPR 2017): fine-tune a cross-entropy model on the reward of
its own sampled captions.

    vidcap fit --config configs/experiment/scst.yaml --model.init_from XE.ckpt --data.data_dir D --data.features_dir F

For every video of a batch the model samples K captions (vidcap.training.caption_sampling); each gets the reward
r = cider_weight * CIDEr-D + bleu_weight * BLEU-4 against the video's train references, and the loss is

    - 1/(B K) sum_{b,k} (r_bk - baseline_bk) * log p(caption_bk)

with the baseline `mean` (Luo 2020: the mean reward of the video's K-1 other samples) or `greedy` (Rennie: the reward
of the model's own greedy caption, decoded in evaluation mode). CIDEr-D's document frequencies come from the train
split's references, tokenised as `vidcap prepare` stored them (captions.csv's tokens column), the same on every DDP
rank; each rank scores its own samples. A caption sampled empty scores 0. With hard attention the frame choices are
part of the policy: log p adds log alpha_t[s_t] of the frames taken, and the attention entropy bonus of
vidcap.training.hard_attention stays.

`init_from` (a cross-entropy checkpoint) gives the starting weights; the architecture comes from that checkpoint
(vidcap/training/lightning_cli.py), the data-derived sizes from the data: a checkpoint whose vocabulary or feature widths differ
from the data's is a one-line error naming the file and the mismatch (vidcap.model.checkpoint.store_mismatches, the checks
of `vidcap evaluate` and `vidcap caption`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vidcap.errors import CheckpointError, UsageError
from vidcap.model.captioner import CaptionModel, ModelConfig
from vidcap.model.checkpoint import model_state, read_checkpoint, read_vidcap_section, store_mismatches
from vidcap.text.cider import CiderD
from vidcap.text.vocab import Vocabulary
from vidcap.training.caption_sampling import sample
from vidcap.training.hard_attention import HardAttentionOptions, frame_log_probs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SCSTOptions:
    """Self-critical training (the `model.scst` section; configs/experiment/scst.yaml)."""

    num_samples: int = 5  # K, captions sampled per video
    baseline: Literal["mean", "greedy"] = "mean"  # mean of the other K-1 samples (Luo 2020), or greedy (Rennie)
    cider_weight: float = 1.0  # weight of CIDEr-D in the reward
    bleu_weight: float = 0.0  # weight of BLEU-4 (coco-caption's, per caption) in the reward
    temperature: float = 1.0  # sampling temperature (1: the model's distribution)
    max_len: int | None = None  # most words per sampled caption; None: the decoding options' max_len

    def check(self) -> None:
        """UsageError on a value that cannot work. (Not __post_init__: jsonargparse would bury the message in a
        traceback about the `SCSTOptions | None` union.)"""
        if self.cider_weight < 0 or self.bleu_weight < 0:
            raise UsageError(f"scst reward weights must be >= 0 (got cider_weight={self.cider_weight}, "
                             f"bleu_weight={self.bleu_weight})")
        if self.cider_weight == 0 and self.bleu_weight == 0:
            raise UsageError("scst reward weights are all zero: set cider_weight or bleu_weight above 0")
        if self.baseline not in ("mean", "greedy"):
            raise UsageError(f"unknown scst baseline {self.baseline!r} (choose from mean, greedy)")
        if self.num_samples < (2 if self.baseline == "mean" else 1):
            raise UsageError(f"scst num_samples must be >= 2 with the mean baseline, >= 1 with greedy "
                             f"(got {self.num_samples})")
        if not self.temperature > 0:
            raise UsageError(f"scst temperature must be > 0 (got {self.temperature})")
        if self.max_len is not None and self.max_len < 1:
            raise UsageError(f"scst max_len must be >= 1 (got {self.max_len})")


# -- rewards --------------------------------------------------------------------------------------------------------
def train_references(data_dir: str | os.PathLike) -> dict[str, list[list[str]]]:
    """{video_id: [PTB tokens of each reference]} of the train split, from DIR/captions.csv's tokens column."""
    from vidcap.datasets import read_captions

    captions = read_captions(Path(data_dir))
    train = captions[captions["split"] == "train"]
    references: dict[str, list[list[str]]] = {}
    for video_id, tokens in zip(train["video_id"], train["tokens"], strict=True):
        references.setdefault(str(video_id), []).append(str(tokens).split())
    if not references:
        raise UsageError(f"{Path(data_dir) / 'captions.csv'}: no train captions to compute rewards against")
    return references


class CaptionReward:
    """r = cider_weight * CIDEr-D + bleu_weight * BLEU-4 of tokenised candidates against one fixed reference set."""

    def __init__(self, references: Mapping[str, Sequence[Sequence[str]]], cider_weight: float = 1.0,
                 bleu_weight: float = 0.0):
        self.references = references
        self.cider_weight, self.bleu_weight = cider_weight, bleu_weight
        self.cider = CiderD(references) if cider_weight else None

    def __call__(self, video_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> np.ndarray:
        """(C,) video ids, C token lists -> (C,) float64 rewards; an empty candidate gets 0."""
        reward = np.zeros(len(candidates))
        if self.cider is not None:
            reward += self.cider_weight * self.cider.score_array(video_ids, candidates)
        if self.bleu_weight:
            reward += self.bleu_weight * self._bleu4(video_ids, candidates)
        return reward

    def _bleu4(self, video_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> np.ndarray:
        """coco-caption's per-caption BLEU-4 ("closest" reference length), as `Bleu(4).compute_score` reports it."""
        from pycocoevalcap.bleu.bleu_scorer import BleuScorer

        scorer = BleuScorer(n=4)
        for video_id, candidate in zip(video_ids, candidates, strict=True):
            scorer += (" ".join(candidate), [" ".join(ref) for ref in self.references[video_id]])
        _, per_caption = scorer.compute_score(option="closest", verbose=0)
        return np.where([len(c) > 0 for c in candidates], per_caption[3], 0.0)


# -- the loss -------------------------------------------------------------------------------------------------------
class SelfCritical:
    """The self-critical loss of a batch of videos; `reward_seconds` adds up the time spent computing rewards."""

    def __init__(self, options: SCSTOptions, reward: CaptionReward, vocab: Vocabulary, max_len: int,
                 hard_attention: HardAttentionOptions | None = None):
        options.check()
        self.options, self.reward, self.vocab = options, reward, vocab
        self.max_len = options.max_len or max_len
        self.hard_attention = hard_attention
        self.reward_seconds = 0.0

    def _rewards(self, video_ids: Sequence[str], words: list[list[int]]) -> np.ndarray:
        started = time.perf_counter()
        itos = self.vocab.itos
        reward = self.reward(video_ids, [[itos[w] for w in caption] for caption in words])
        self.reward_seconds += time.perf_counter() - started
        return reward

    def __call__(self, model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor,
                 video_ids: Sequence[str]) -> tuple[torch.Tensor, dict[str, float]]:
        """feats (B, T, D), mask (B, T) bool, B video ids (a video given twice is used once) -> (loss, logged
        values: mean reward, mean baseline, mean word entropy per sampled token, mean words per sampled caption)."""
        first: dict[str, int] = {}
        for row, video_id in enumerate(video_ids):
            first.setdefault(video_id, row)
        if len(first) < len(video_ids):
            rows = torch.tensor(list(first.values()), device=feats.device)
            feats, mask, video_ids = feats[rows], mask[rows], list(first)
        B, K = len(video_ids), self.options.num_samples
        samples = sample(model, feats, mask, K, self.max_len, self.options.temperature, Vocabulary.BOS,
                         Vocabulary.EOS)
        rewards = self._rewards(np.repeat(video_ids, K).tolist(), samples.words(Vocabulary.EOS)).reshape(B, K)
        if self.options.baseline == "mean":
            baseline = (rewards.sum(1, keepdims=True) - rewards) / (K - 1)
        else:
            baseline = np.repeat(self._greedy_rewards(model, feats, mask, video_ids)[:, None], K, axis=1)
        advantage = torch.from_numpy(rewards - baseline).float().to(feats.device).view(-1)
        log_prob = samples.log_probs.sum(1)
        if samples.frames is not None:
            log_prob = log_prob + frame_log_probs(samples.alpha, samples.frames).sum(1)
        loss = -(advantage * log_prob).mean()
        if samples.alpha is not None and self.hard_attention is not None:
            entropy = model.attention_entropy(samples.alpha, samples.mask)
            loss = loss - self.hard_attention.entropy_weight * entropy
        steps = samples.mask.sum()
        values = {"reward": float(rewards.mean()), "baseline": float(baseline.mean()),
                  "entropy": float(samples.entropy.sum() / steps), "length": float(steps) / len(rewards.flat) - 1}
        return loss, values

    @torch.no_grad()
    def _greedy_rewards(self, model: CaptionModel, feats: torch.Tensor, mask: torch.Tensor,
                        video_ids: Sequence[str]) -> np.ndarray:
        """Rennie's baseline: the reward of each video's greedy caption, decoded as at test time (eval mode)."""
        training = model.training
        model.eval()
        try:
            greedy = sample(model, feats, mask, 1, self.max_len, 0.0, Vocabulary.BOS, Vocabulary.EOS)
        finally:
            model.train(training)
        return self._rewards(list(video_ids), greedy.words(Vocabulary.EOS))


# -- the initial weights (--model.init_from) -------------------------------------------------------------------------
def checkpoint_model(path: str | os.PathLike) -> dict[str, Any]:
    """The ModelConfig fields a checkpoint was trained with (CheckpointError naming the file if unreadable)."""
    return dict(read_vidcap_section(read_checkpoint(path), str(path))["model"])


def initial_weights(path: str | os.PathLike, config: ModelConfig, vocab: Vocabulary | None,
                    feature_meta: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    """The model weights of checkpoint `path`, checked against the model about to be trained on this data.

    UsageError, one line naming the file and each mismatch (vidcap.model.checkpoint.store_mismatches): another
    vocabulary, other feature widths or extractors, frames sampled otherwise; CheckpointError when the file is
    missing, corrupt or not a vidcap checkpoint. Without `feature_meta`, the store is known by the sizes `config`
    took from it."""
    checkpoint = read_checkpoint(path)
    meta = read_vidcap_section(checkpoint, str(path))
    store = feature_meta or {"num_frames": config.max_frames, "global": {"dim": config.global_dim},
                             "local": {"dim": config.local_dim} if config.local_dim else None}
    problems = store_mismatches(meta, store, vocab)
    if problems:
        raise UsageError(f"{path}: cannot start from this checkpoint: {'; '.join(problems)}")
    return model_state(checkpoint)


def load_initial_weights(model: CaptionModel, path: str | os.PathLike, vocab: Vocabulary | None,
                         feature_meta: Mapping[str, Any] | None) -> None:
    """Copy the weights of checkpoint `path` into `model` (see `initial_weights` for the checks)."""
    state = initial_weights(path, model.config, vocab, feature_meta)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: its weights do not fit the model: {' '.join(str(error).split())[:300]}"
                              ) from None
    log.info("initial weights from %s", path)
