"""Training data: the feature store (`vidcap extract`) joined with the captions table (`vidcap prepare`).

- `CaptionDataset`: one item per (video, reference) for training, or one item per video with all its
  references for validation and testing (perplexity counts every reference; the metrics need them all).
- `collate`: pads frames to (B, T, D) with a frame mask (B, T) and captions to (N, L) with PAD.
- `CaptionDataModule`: the LightningDataModule. `__init__` reads only the two small files that the model's sizes
  come from (DIR/vocab.json, FEATS/meta.json); `setup()` reads the captions table (its PTB tokens, stored by
  `vidcap prepare`) and lists the store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from vidcap.datasets import read_captions
from vidcap.errors import UsageError
from vidcap.store import features_dir, list_features, load_features, read_meta
from vidcap.vocab import Vocabulary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoCaptions:
    """One video of a split: its id, its reference captions (raw text) and their ids (each ending with EOS)."""

    video_id: str
    references: tuple[str, ...]
    tokens: tuple[tuple[int, ...], ...]


class CaptionDataset(Dataset):
    """Items are dicts: `video_id` str, `global` (T, Dg) / `local` (T, Dl) float arrays (or None), `mask` (T,)
    bool, `references` list[str] and `tokens` list of id lists (each `[w1, ..., wn, EOS]`).

    per_reference=True (training): one item per (video, reference), `references`/`tokens` of length 1.
    per_reference=False (evaluation): one item per video with all its references.
    """

    def __init__(self, features_dir: str | os.PathLike, videos: Sequence[VideoCaptions], per_reference: bool):
        self.features_dir = str(features_dir)
        self.videos = list(videos)
        if per_reference:
            self.index = [(v, r) for v, video in enumerate(self.videos) for r in range(len(video.tokens))]
        else:
            self.index = [(v, None) for v in range(len(self.videos))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, r = self.index[i]
        video = self.videos[v]
        feats = load_features(self.features_dir, video.video_id)
        refs = range(len(video.tokens)) if r is None else [r]
        return {
            "video_id": video.video_id,
            "global": feats.get("global"),
            "local": feats.get("local"),
            "mask": feats["mask"],
            "references": [video.references[k] for k in refs],
            "tokens": [list(video.tokens[k]) for k in refs],
        }


def _stack_frames(arrays: list[np.ndarray], T: int) -> torch.Tensor:
    out = torch.zeros(len(arrays), T, arrays[0].shape[-1], dtype=torch.float32)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = torch.from_numpy(np.asarray(a, dtype=np.float32))
    return out


def collate(samples: list[dict[str, Any]], bos_id: int = Vocabulary.BOS, pad_id: int = Vocabulary.PAD) -> dict:
    """Batch of B videos and N >= B captions.

    Returns `video_ids` list[str] (B); `global` (B, T, Dg) float32; `local` (B, T, Dl) float32 or None;
    `mask` (B, T) bool; `inputs` (N, L) long `[BOS, w1, ..., wn]` and `targets` (N, L) long `[w1, ..., wn, EOS]`,
    both PAD-padded; `caption_video` (N,) long, the video (row of `global`) of each caption; `references`
    list[list[str]] (B).
    """
    T = max(s["mask"].shape[0] for s in samples)
    mask = torch.zeros(len(samples), T, dtype=torch.bool)
    for i, s in enumerate(samples):
        mask[i, : s["mask"].shape[0]] = torch.from_numpy(np.asarray(s["mask"], dtype=bool))
    has_local = samples[0]["local"] is not None
    captions = [(i, ids) for i, s in enumerate(samples) for ids in s["tokens"]]
    L = max((len(ids) for _, ids in captions), default=1)  # none: an evaluation batch of long captions only
    targets = torch.full((len(captions), L), pad_id, dtype=torch.long)
    inputs = torch.full((len(captions), L), pad_id, dtype=torch.long)
    for n, (_, ids) in enumerate(captions):
        targets[n, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        inputs[n, 0] = bos_id
        inputs[n, 1 : len(ids)] = torch.tensor(ids[:-1], dtype=torch.long)
    return {
        "video_ids": [s["video_id"] for s in samples],
        "global": _stack_frames([s["global"] for s in samples], T),
        "local": _stack_frames([s["local"] for s in samples], T) if has_local else None,
        "mask": mask,
        "inputs": inputs,
        "targets": targets,
        "caption_video": torch.tensor([i for i, _ in captions], dtype=torch.long),
        "references": [list(s["references"]) for s in samples],
    }


def read_split(
    captions: pd.DataFrame, split: str, vocab: Vocabulary, max_caption_len: int, available: set[str],
    drop_long_captions: bool = False,
) -> tuple[list[VideoCaptions], int]:
    """The videos of `split` that have features, sorted by id, and how many were skipped for lack of them.

    captions: `read_captions`'s table; the ids come from its `tokens` column, the references are the raw captions.
    A caption longer than `max_caption_len` tokens (EOS included) is cut, or with `drop_long_captions` left out of
    the token lists (the NLL) while it stays a reference for the metrics; a train video left without a caption
    is left out.
    """
    rows = captions[captions["split"] == split]
    # One pass over plain columns: a pandas group per video costs ~0.3 ms, half a minute at LSMDC's 118k clips.
    grouped: dict[str, list[tuple[str, str]]] = {}
    for video_id, caption, tokens in zip(rows["video_id"], rows["caption"], rows["tokens"], strict=True):
        grouped.setdefault(str(video_id), []).append((str(caption), str(tokens)))
    videos, skipped, dropped = [], 0, 0
    for video_id in sorted(grouped):
        if video_id not in available:
            skipped += 1
            continue
        references = tuple(caption for caption, _ in grouped[video_id])
        words = [t.split() for _, t in grouped[video_id]]
        if drop_long_captions:
            kept = [w for w in words if len(w) < max_caption_len]  # room for EOS
            dropped += len(words) - len(kept)
            words = kept
            if split == "train" and not words:
                continue
        tokens = tuple(tuple(vocab.encode(w, max_len=max_caption_len)) for w in words)
        videos.append(VideoCaptions(video_id, references, tokens))
    if dropped:
        log.info("%s: %d captions of %d or more words dropped", split, dropped, max_caption_len)
    return videos, skipped


class CaptionDataModule(LightningDataModule):
    """Feature store + captions table -> batches (see `collate`).

    Args:
        data_dir: the folder `vidcap prepare` wrote (captions.csv, vocab.json).
        features_dir: the feature store `vidcap extract` wrote (meta.json, features/*.npz).
        batch_size: training captions per batch (one reference per video); the paper used 64.
        eval_batch_size: videos per validation/test batch (each with all its references); default batch_size.
        num_workers: DataLoader worker processes.
        max_caption_len: captions are cut to this many tokens, EOS included (the paper: 30).
        drop_long_captions: instead of cutting them, leave captions of max_caption_len or more words out of
            training and out of every split's NLL and perplexity (the original's data_engine.prepare_data); the
            metrics still score against every reference.
        val_split, test_split: split names of captions.csv used by validate and test.
    """

    def __init__(
        self,
        data_dir: str,
        features_dir: str,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        max_caption_len: int = 30,
        drop_long_captions: bool = False,
        val_split: str = "val",
        test_split: str = "test",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.features_dir = Path(features_dir)
        if not self.data_dir.is_dir():
            raise UsageError(f"{self.data_dir}: data directory not found (run `vidcap prepare` first)")
        if not (self.data_dir / "vocab.json").is_file():
            raise UsageError(f"{self.data_dir / 'vocab.json'}: vocabulary not found (run `vidcap prepare` first)")
        if not self.features_dir.is_dir():
            raise UsageError(f"{self.features_dir}: feature store not found (run `vidcap extract` first)")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise UsageError(f"batch sizes must be positive (got {batch_size}, {eval_batch_size})")
        self.vocab = Vocabulary.load(self.data_dir / "vocab.json")
        self.feature_meta: dict[str, Any] = read_meta(self.features_dir)
        if not self.feature_meta.get("global"):
            raise UsageError(f"{self.features_dir / 'meta.json'}: the store has no global (2-D CNN) features")
        self.datasets: dict[str, CaptionDataset] = {}

    # -- sizes linked into the model (LightningCLI link_arguments) --------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def global_dim(self) -> int:
        return int(self.feature_meta["global"]["dim"])

    @property
    def local_dim(self) -> int:
        local = self.feature_meta.get("local")
        return int(local["dim"]) if local else 0

    @property
    def num_frames(self) -> int:
        return int(self.feature_meta["num_frames"])

    # -- Lightning hooks ----------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        splits = {
            "fit": ["train", self.hparams.val_split],
            "validate": [self.hparams.val_split],
            "test": [self.hparams.test_split],
        }.get(stage or "fit", ["train", self.hparams.val_split, self.hparams.test_split])
        if all(split in self.datasets for split in splits):  # set up already (e.g. by the caller, then by Lightning)
            return
        captions = read_captions(self.data_dir)
        available = self._available_videos()
        for split in splits:
            if split in self.datasets:
                continue
            videos, skipped = read_split(captions, split, self.vocab, self.hparams.max_caption_len, available,
                                         self.hparams.drop_long_captions)
            if skipped:
                log.warning("%s: %d of %d videos have no features in %s (failed extraction?): skipped",
                            split, skipped, skipped + len(videos), self.features_dir)
            if not videos:
                raise UsageError(f"{self.data_dir / 'captions.csv'}: no '{split}' video has features in "
                                 f"{self.features_dir}")
            self.datasets[split] = CaptionDataset(self.features_dir, videos, per_reference=split == "train")
            log.info("%s: %d videos, %d captions", split, len(videos), sum(len(v.tokens) for v in videos))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.val_split, self.hparams.eval_batch_size or self.hparams.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.test_split, self.hparams.eval_batch_size or self.hparams.batch_size)

    # -- internals ----------------------------------------------------------------------------------------------
    def _loader(self, split: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        # Under DDP Lightning swaps in a DistributedSampler; for val/test it pads the split by repeating videos,
        # which the LightningModule removes again by video id before computing any number.
        workers = self.hparams.num_workers
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )

    def _available_videos(self) -> set[str]:
        folder = features_dir(self.features_dir)
        if not folder.is_dir():
            raise UsageError(f"{folder}: not found (is {self.features_dir} a feature store?)")
        return set(list_features(self.features_dir))
