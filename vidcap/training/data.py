"""Training data: the feature store (`vidcap extract`) joined with the captions table (`vidcap prepare`).

- `SplitCaptions`: a split's videos, references and caption ids in flat arrays (`read_split`).
- `CaptionDataset`: one item per (video, caption) for training, or one item per video with all its
  references for validation and testing (perplexity counts every reference; the metrics need them all).
- `collate`: pads frames to (B, T, D) with a frame mask (B, T) and captions to (N, L) with PAD.
- `CaptionDataModule`: the LightningDataModule. `__init__` reads only the two small files that the model's sizes
  come from (DIR/vocab.json, FEATS/meta.json); `setup()` reads the captions table (its PTB tokens, stored by
  `vidcap prepare`) and lists the store; on a sharded store (vidcap/features/sharded.py) the training split streams
  (vidcap/training/streaming.py) and only the other splits are listed, from their shards' indexes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

from vidcap.datasets import read_captions
from vidcap.errors import UsageError
from vidcap.features.sharded import shards_dir
from vidcap.features.store import features_dir, list_features, read_meta
from vidcap.features.stores import ShardedStore, open_store
from vidcap.text.vocab import Vocabulary
from vidcap.video.reader import short_socket_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SplitCaptions:
    """The V videos of one split, sorted by id, with their R references and N token captions in flat arrays.

    video_ids: (V,) str. references: (R,) raw captions, video v's in file order at
    `reference_offsets[v]:reference_offsets[v + 1]` ((V + 1,) int64). token_ids: int32, the ids of the token captions
    (the NLL's, each ending with EOS) one after the other, caption n's at `token_offsets[n]:token_offsets[n + 1]`
    ((N + 1,) int64); video v's token captions are `caption_offsets[v]:caption_offsets[v + 1]` ((V + 1,) int64), and
    caption n tokenises `references[caption_reference[n]]` ((N,) int64). N < R when long captions are dropped.

    A few objects however many videos: nothing per video or caption for Python's garbage collector to walk (a
    container per clip made `setup()` superlinear at LSMDC's 118k clips).
    """

    video_ids: list[str]
    references: list[str]
    reference_offsets: np.ndarray
    token_ids: np.ndarray
    token_offsets: np.ndarray
    caption_offsets: np.ndarray
    caption_reference: np.ndarray

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def num_captions(self) -> int:
        return len(self.caption_reference)

    def video_references(self, v: int) -> list[str]:
        return self.references[self.reference_offsets[v]:self.reference_offsets[v + 1]]

    def video_captions(self, v: int) -> range:
        """The token captions of video v."""
        return range(self.caption_offsets[v], self.caption_offsets[v + 1])

    def tokens(self, n: int) -> list[int]:
        """Caption n's ids `[w1, ..., wn, EOS]`."""
        return self.token_ids[self.token_offsets[n]:self.token_offsets[n + 1]].tolist()

    def caption_video(self) -> np.ndarray:
        """(N,) int64: the video of each token caption."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.caption_offsets))


class CaptionDataset(Dataset):
    """Items are dicts: `video_id` str, `global` (T, Dg) / `local` (T, Dl) float arrays (or None), `mask` (T,)
    bool, `references` list[str] and `tokens` list of id lists (each `[w1, ..., wn, EOS]`).

    per_reference=True (training): one item per token caption, `references` (the caption's text) and `tokens` of
    length 1. per_reference=False (evaluation): one item per video with all its references and token captions.
    """

    def __init__(self, features_dir: str | os.PathLike, captions: SplitCaptions, per_reference: bool):
        self.features_dir = str(features_dir)
        self.store = None  # opened on first use, in each loader worker
        self.captions = captions
        # Training item i is token caption i, of video item_video[i]; evaluation item i is video i.
        self.item_video = captions.caption_video() if per_reference else None

    def __len__(self) -> int:
        return len(self.captions) if self.item_video is None else len(self.item_video)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = range(len(self))[i]  # IndexError past the end, as a list's
        split = self.captions
        if self.item_video is None:
            v, references, captions = i, split.video_references(i), split.video_captions(i)
        else:
            v, references, captions = int(self.item_video[i]), [split.references[split.caption_reference[i]]], [i]
        video_id = split.video_ids[v]
        if self.store is None:
            self.store = open_store(self.features_dir)
        feats = self.store.load(video_id)
        return {
            "video_id": video_id,
            "global": feats.get("global"),
            "local": feats.get("local"),
            "mask": feats["mask"],
            "references": references,
            "tokens": [split.tokens(n) for n in captions],
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


class ResumableShuffle(Sampler[int]):
    """torch's RandomSampler order, resumable mid-epoch: each epoch's iteration draws a seed from torch's global
    generator at its first item, exactly as `RandomSampler` does (the same seed gives the same batches as a plain
    shuffled DataLoader), and its iterator's state (that seed and the items yielded) goes into the checkpoint through
    torchdata's StatefulDataLoader, so a resumed run continues the epoch's permutation where it stopped.
    (torchdata's own RandomSampler draws one seed at construction instead, which orders batches differently.)"""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> _ShuffleIterator:
        return _ShuffleIterator(self.size)


class _ShuffleIterator:
    def __init__(self, size: int):
        self.size = size
        self.seed: int | None = None
        self.yielded = 0
        self._order: list[int] | None = None

    def __iter__(self) -> _ShuffleIterator:
        return self

    def __next__(self) -> int:
        if self._order is None:
            if self.seed is None:  # RandomSampler's draw, at the same moment (the epoch's first item)
                self.seed = int(torch.empty((), dtype=torch.int64).random_().item())
            generator = torch.Generator()
            generator.manual_seed(self.seed)
            self._order = torch.randperm(self.size, generator=generator).tolist()
        if self.yielded >= self.size:
            raise StopIteration
        self.yielded += 1
        return self._order[self.yielded - 1]

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.yielded, self._order = state["seed"], int(state["yielded"]), None


def read_split(
    captions: pd.DataFrame, split: str, vocab: Vocabulary, max_caption_len: int, available: set[str],
    drop_long_captions: bool = False,
) -> tuple[SplitCaptions, int]:
    """The videos of `split` that have features, sorted by id, and how many were skipped for lack of them.

    captions: `read_captions`'s table; the ids come from its `tokens` column, the references are the raw captions.
    A caption longer than `max_caption_len` tokens (EOS included) is cut, or with `drop_long_captions` left out of
    the token captions (the NLL) while it stays a reference for the metrics; a train video left without a caption
    is left out.
    """
    rows = captions[captions["split"] == split]
    # Grouped with arrays, not a container per video: see SplitCaptions.
    codes, video_ids = pd.factorize(rows["video_id"].astype(str).to_numpy(), sort=True)
    has_features = np.fromiter((video_id in available for video_id in video_ids), dtype=bool, count=len(video_ids))
    order = np.argsort(codes, kind="stable")  # by video id, then in file order
    order = order[has_features[codes[order]]]
    flat: list[int] = []
    lengths = np.zeros(len(order), dtype=np.int64)  # 0: a dropped caption (an encoded one has EOS at least)
    for k, text in enumerate(rows["tokens"].to_numpy()[order]):
        words = str(text).split()
        if not (drop_long_captions and len(words) >= max_caption_len):  # room for EOS
            encoded = vocab.encode(words, max_len=max_caption_len)
            flat += encoded
            lengths[k] = len(encoded)
    code = codes[order]  # each caption's video among video_ids
    kept = has_features.copy()
    if drop_long_captions:
        dropped = int((lengths == 0).sum())
        if dropped:
            log.info("%s: %d captions of %d or more words dropped", split, dropped, max_caption_len)
        if split == "train":
            kept &= np.bincount(code[lengths > 0], minlength=len(video_ids)) > 0
    keep = kept[code]
    video = (np.cumsum(kept) - 1)[code[keep]]  # each caption's video among those kept
    lengths = lengths[keep]
    tokenised = lengths > 0
    count = int(kept.sum())
    return SplitCaptions(
        video_ids=video_ids[kept].tolist(),
        references=rows["caption"].astype(str).to_numpy()[order[keep]].tolist(),
        reference_offsets=_offsets(np.bincount(video, minlength=count)),
        token_ids=np.asarray(flat, dtype=np.int32),
        token_offsets=_offsets(lengths[tokenised]),
        caption_offsets=_offsets(np.bincount(video[tokenised], minlength=count)),
        caption_reference=np.flatnonzero(tokenised),
    ), int((~has_features).sum())


class _Everything:
    """`available` for a streamed split: every video counts as present; those the shards lack never come."""

    def __contains__(self, video_id: object) -> bool:
        return True


def repair_command(data_dir: str | os.PathLike, store: str | os.PathLike, meta: dict[str, Any]) -> str:
    """The `vidcap extract` that re-extracts a store's corrupt files (its settings, from meta.json)."""
    parts = ["vidcap extract", f"--data {data_dir}", f"--out {store}"]
    for kind in ("global", "local"):
        desc = meta.get(kind)
        if isinstance(desc, dict) and desc.get("name"):
            parts.append(f"--{kind} {desc['name']}")
            if desc.get("weights") not in (None, "pretrained"):
                parts.append(f"--{kind}-weights {desc['weights']}")
    if meta.get("num_frames"):
        parts.append(f"--frames {meta['num_frames']}")
    if meta.get("dtype") and meta["dtype"] != "float16":
        parts.append(f"--dtype {meta['dtype']}")
    return " ".join(parts)


def _offsets(counts: np.ndarray) -> np.ndarray:
    """(n,) counts -> (n + 1,) int64 offsets, starting at 0."""
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


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
        shuffle_buffer: on a sharded store, the training stream's shuffle buffer in videos
            (vidcap/training/streaming.py; there `batch_size` counts videos, each with all its captions).
        skip_corrupt: feature files that fail the check before the first step (headers, array names, widths and
            dtypes against meta.json: vidcap.features.integrity.quick_check) are left out and counted, instead of
            refusing to start (UsageError naming them and the repair command).
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
        shuffle_buffer: int = 1000,
        skip_corrupt: bool = False,
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
        store = open_store(self.features_dir)
        available = None if isinstance(store, ShardedStore) else self._available_videos()
        splits = [split for split in splits if split not in self.datasets]
        if available is not None:
            available -= self._corrupt_files(captions, splits, available)
        for split in splits:
            if split in self.datasets:
                continue
            streaming = isinstance(store, ShardedStore) and split == "train"
            # A sharded store's training split streams: nothing lists its samples (vidcap/training/streaming.py).
            if streaming:
                has = _Everything()
            elif available is not None:
                has = available
            else:
                has = self._checked_shards(store, split)
            videos, skipped = read_split(captions, split, self.vocab, self.hparams.max_caption_len, has,
                                         self.hparams.drop_long_captions)
            if skipped:
                log.warning("%s: %d of %d videos have no features in %s (failed extraction?): skipped",
                            split, skipped, skipped + len(videos), self.features_dir)
            if not len(videos):
                raise UsageError(f"{self.data_dir / 'captions.csv'}: no '{split}' video has features in "
                                 f"{self.features_dir}")
            if streaming:
                from vidcap.training.streaming import ShardStream

                self.datasets[split] = ShardStream(self.features_dir, store.shards(split), videos,
                                                   self.hparams.batch_size, self.hparams.shuffle_buffer,
                                                   skip_corrupt=self.hparams.skip_corrupt)
            else:
                self.datasets[split] = CaptionDataset(self.features_dir, videos, per_reference=split == "train")
            log.info("%s: %d videos, %d captions", split, len(videos), videos.num_captions)

    def train_dataloader(self) -> DataLoader:
        """A loader Lightning saves the position of in every checkpoint, to resume mid-epoch: a StatefulDataLoader, or
        on a sharded store the stream's own state."""
        from vidcap.training.streaming import ShardStream, stream_loader

        if isinstance(self.datasets["train"], ShardStream):
            trainer = self.trainer
            rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
            dataset = self.datasets["train"].distribute(rank, world, self.hparams.num_workers)
            # The run's seed (seed_everything sets it, and DDP's processes inherit it): the same order on every rank.
            dataset.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
            return stream_loader(dataset, self.hparams.num_workers)
        distributed = self.trainer is not None and self.trainer.world_size > 1
        if distributed:  # Lightning swaps in a DistributedSampler (deterministic per epoch and seed)
            return self._loader("train", self.hparams.batch_size, shuffle=True, stateful=True)
        return self._loader("train", self.hparams.batch_size, sampler=ResumableShuffle(len(self.datasets["train"])),
                            stateful=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.val_split, self.hparams.eval_batch_size or self.hparams.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.test_split, self.hparams.eval_batch_size or self.hparams.batch_size)

    # -- internals ----------------------------------------------------------------------------------------------
    def _loader(self, split: str, batch_size: int, shuffle: bool = False, sampler: Sampler | None = None,
                stateful: bool = False) -> DataLoader:
        # Under DDP Lightning swaps in a DistributedSampler; for val/test it pads the split by repeating videos,
        # which the LightningModule removes again by video id before computing any number.
        workers = self.hparams.num_workers
        if workers:
            short_socket_dir()
        return (StatefulDataLoader if stateful else DataLoader)(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )

    def _corrupt_files(self, captions: pd.DataFrame, splits: list[str], available: set[str]) -> set[str]:
        """The check before the first step: the quick check of every feature file these splits will read. Refuses
        (UsageError, one line naming the files and the repair) or, with skip_corrupt, returns the bad ones."""
        from vidcap.features.integrity import quick_check

        wanted = captions.loc[captions["split"].isin(splits), "video_id"].astype(str)
        ids = sorted(set(wanted) & available)
        bad = quick_check(self.features_dir, ids, self.feature_meta)
        if not bad:
            return set()
        named = "; ".join(f"{vid}.npz: {reason}" for vid, reason in sorted(bad.items())[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        if self.hparams.skip_corrupt:
            log.warning("%s: skipping %d corrupt feature file(s) of %d (%s%s)", self.features_dir, len(bad),
                        len(ids), named, more)
            return set(bad)
        raise UsageError(
            f"{features_dir(self.features_dir)}: {len(bad)} of {len(ids)} feature files are corrupt ({named}{more}); "
            f"repair: {repair_command(self.data_dir, self.features_dir, self.feature_meta)} (or skip them: "
            "--data.skip_corrupt true)")

    def _checked_shards(self, store: ShardedStore, split: str) -> set[str]:
        """The check before the first step on a sharded store's evaluation split (each shard there, its index
        readable, its size as recorded: ShardedStore.preflight): the videos to read. Refuses (UsageError, one line
        naming the bad shards and samples and `vidcap verify`) or, with skip_corrupt, leaves them out and counts them."""
        good, problems = store.preflight(split)
        if not problems:
            return good
        named = "; ".join(f"{problem}" for problem in problems[:5])
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        if self.hparams.skip_corrupt:
            log.warning("%s: skipping %d bad shard(s) or sample(s) of split '%s' (%s%s); `vidcap verify %s` checks "
                        "them all", store.path, len(problems), split, named, more, store.path)
            return good
        raise UsageError(
            f"{shards_dir(store.path)}: {len(problems)} bad shard(s) or sample(s) in split '{split}' ({named}{more}); "
            f"run `vidcap verify {store.path}`; repair: "
            f"{repair_command(self.data_dir, self.features_dir, self.feature_meta)} --store shards (or skip them: "
            "--data.skip_corrupt true, or evaluate --skip-corrupt)")

    def _available_videos(self) -> set[str]:
        folder = features_dir(self.features_dir)
        if not folder.is_dir():
            raise UsageError(f"{folder}: not found (is {self.features_dir} a feature store?)")
        return set(list_features(self.features_dir))
