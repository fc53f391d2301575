"""Training batches streamed from a sharded feature store (vidcap/features/sharded.py): `vidcap fit` on a store written
with `vidcap extract --store shards`.

- Setup reads shards.json (one line per shard) and nothing per sample: its time and memory follow the number of
  shards, ~1000 times fewer than the clips (docs/sharded.md measures it).
- An epoch is one pass over the samples in an order drawn from (seed, epoch): the shards are shuffled, and their
  samples, one after the other, make one sequence. The sequence is cut into `world_size x num_workers` equal,
  contiguous slots, one per loader worker of every DDP rank: a slot spans a few whole shards and at most two partial
  ones (read from their index offsets). Each sample is in exactly one slot; the last slots are padded with the first
  samples (fewer than `world_size x num_workers` repeats, as DistributedSampler pads), so that every rank makes the
  same number of batches and DDP never waits for a rank that ran out.
- Within a slot a shuffle buffer of `shuffle_buffer` samples mixes them: each sample read enters the buffer, and a
  random one of the buffer leaves it. A buffer of b samples mixes about b / shard_size shards at a time; it holds
  index entries (a video id, an offset), the features are read when a sample leaves it.
- A sample is one video with all its token captions (the evaluation items of vidcap.training.data): `batch_size`
  counts videos here. Web-scale datasets have one caption per clip (WebVid, Panda-70M), so it is the same thing
  there. Batches are made in the loader's workers (the loader has batch_size=None).
- Resume mid-epoch: `state_dict()` is (epoch, samples taken from this slot's buffer); `load_state_dict` replays the
  slot's order from the indexes (no feature reads) and goes on from there. torchdata's StatefulDataLoader saves it
  per worker, and Lightning stores that in its step checkpoints.
- A sample whose checksum fails stops training with one line naming the shard and the sample and `vidcap verify`,
  or with `skip_corrupt` is skipped, logged and counted (`skipped`).
"""

from __future__ import annotations

import bisect
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from vidcap.errors import UsageError
from vidcap.features import sharded
from vidcap.video.reader import short_socket_dir

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 1000  # samples; 0 or 1: the slot's order as it is (shards still shuffled per epoch)


class ShardStream(IterableDataset):
    """Batches (vidcap.training.data.collate's dicts) of the videos of `captions` (a SplitCaptions) found in the
    shards `shards` ({name: samples}, from shards.json) of the store at `store`. Call `distribute` before handing it
    to a loader; the module docstring says how an epoch goes."""

    def __init__(self, store: str | os.PathLike, shards: dict[str, int], captions, batch_size: int,
                 shuffle_buffer: int = SHUFFLE_BUFFER, seed: int = 0, shuffle: bool = True, skip_corrupt: bool = False):
        if not shards:
            raise UsageError(f"{store}: no shards to train on (run `vidcap extract --store shards`)")
        self.store = str(store)
        self.names = sorted(shards)
        self.counts = np.array([shards[name] for name in self.names], dtype=np.int64)
        self.captions = captions
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.shuffle = shuffle
        self.skip_corrupt = skip_corrupt
        self.skipped = 0  # bad samples skipped by this worker (skip_corrupt)
        self.rank, self.world_size, self.num_workers = 0, 1, 0
        self.epoch = -1  # __iter__ starts epoch 0
        self.taken = 0  # samples taken from this slot's buffer in this epoch
        self._batches: Iterator[dict] | None = None
        self._video_index: dict[str, int] | None = None

    def distribute(self, rank: int, world_size: int, num_workers: int) -> ShardStream:
        """This process's DDP rank, the number of ranks, and its loader's workers (0: batches made in-process)."""
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        return self

    # -- sizes -----------------------------------------------------------------------------------------------------
    @property
    def samples(self) -> int:
        return int(self.counts.sum())

    @property
    def slots(self) -> int:
        return self.world_size * max(1, self.num_workers)

    @property
    def per_slot(self) -> int:
        return math.ceil(self.samples / self.slots)

    def __len__(self) -> int:
        """Batches this rank makes per epoch (the same on every rank)."""
        return max(1, self.num_workers) * math.ceil(self.per_slot / self.batch_size)

    # -- the order of an epoch -------------------------------------------------------------------------------------
    def _slot(self) -> int:
        info = get_worker_info()
        return self.rank * max(1, self.num_workers) + (info.id if info is not None else 0)

    def _slot_entries(self, epoch: int, slot: int) -> Iterator[tuple[str, sharded.Entry]]:
        """(shard, entry) of the slot's samples in sequence order (module docstring), reading only their indexes."""
        order = np.arange(len(self.names))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.names))
        ends = np.cumsum(self.counts[order]).tolist()
        total = ends[-1]
        start = slot * self.per_slot
        positions = [p % total for p in range(start, start + self.per_slot)]  # past the end: padding
        cached: tuple[int, list[sharded.Entry]] | None = None
        for p in positions:
            k = bisect.bisect_right(ends, p)
            if cached is None or cached[0] != k:
                cached = (k, sharded.read_index(self.store, self.names[order[k]]))
            yield self.names[order[k]], cached[1][p - (ends[k - 1] if k else 0)]

    def _buffered(self, epoch: int, slot: int) -> Iterator[tuple[str, sharded.Entry]]:
        """The slot's entries through the shuffle buffer."""
        rng = np.random.default_rng([self.seed, epoch, slot, 1])
        buffer: list[tuple[str, sharded.Entry]] = []
        size = max(1, self.shuffle_buffer) if self.shuffle else 1
        for entry in self._slot_entries(epoch, slot):
            buffer.append(entry)
            if len(buffer) >= size:
                i = int(rng.integers(len(buffer)))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                yield buffer.pop()
        if self.shuffle:
            rng.shuffle(buffer)
        yield from buffer

    def _batches_from(self, epoch: int, taken: int) -> Iterator[dict]:
        from vidcap.training.data import collate

        if self._video_index is None:
            self._video_index = {vid: v for v, vid in enumerate(self.captions.video_ids)}
        entries = self._buffered(epoch, self._slot())
        for _ in range(taken):  # resume: replay the order, read nothing
            next(entries)
        handles: dict[str, Any] = {}
        batch: list[dict] = []
        try:
            for name, entry in entries:
                self.taken += 1
                v = self._video_index.get(entry.video_id)
                if v is not None:  # a video of the shards without captions in this split: not trained on
                    if name not in handles:
                        handles = {name: open(sharded.shard_path(self.store, name), "rb")} | handles
                    try:
                        feats = sharded.read_sample(self.store, name, entry, handles[name])
                    except UsageError as error:
                        if not self.skip_corrupt:  # to the main process as data: raised there as one line
                            yield {"error": str(error)}
                            return
                        self.skipped += 1
                        log.warning("skipping %s (%d skipped so far by this loader worker)", error, self.skipped)
                        continue
                    batch.append(self._item(v, feats))
                if len(batch) == self.batch_size:
                    yield collate(batch)
                    batch = []
                if len(handles) > 4:  # a slot reads a few shards at once; keep the newest open
                    for old in list(handles)[4:]:
                        handles.pop(old).close()
            if batch:
                yield collate(batch)
        finally:
            for handle in handles.values():
                handle.close()

    def _item(self, v: int, feats: dict[str, np.ndarray]) -> dict[str, Any]:
        split = self.captions
        return {"video_id": split.video_ids[v], "global": feats.get("global"), "local": feats.get("local"),
                "mask": feats["mask"], "references": split.video_references(v),
                "tokens": [split.tokens(n) for n in split.video_captions(v)]}

    def __getstate__(self) -> dict[str, Any]:  # to spawned loader workers: no open generator
        return {**self.__dict__, "_batches": None}

    # -- the iterator protocol, and its state ----------------------------------------------------------------------
    def __iter__(self) -> ShardStream:
        self.epoch += 1
        self.taken = 0
        self._batches = self._batches_from(self.epoch, 0)
        return self

    def __next__(self) -> dict:
        if self._batches is None:
            iter(self)
        return next(self._batches)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "taken": self.taken, "slots": self.slots, "shards": len(self.names)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["slots"], state["shards"]) != (self.slots, len(self.names)):
            raise UsageError(f"{Path(self.store)}: the checkpoint's loader state is for {state['shards']} shards over "
                             f"{state['slots']} loader workers, this run has {len(self.names)} over {self.slots} "
                             "(ranks x --data.num_workers): resume with the same ones")
        self.epoch, self.taken = int(state["epoch"]), int(state["taken"])
        self._batches = self._batches_from(self.epoch, self.taken)


def _as_is(batch: dict) -> dict:
    return batch


class StreamLoader(StatefulDataLoader):
    """The loader of a ShardStream: a StatefulDataLoader whose batches come made (batch_size=None), and which raises
    a bad sample met in a worker here, as a UsageError of one line rather than a worker's traceback."""

    def __iter__(self):
        for batch in super().__iter__():
            if "error" in batch:
                raise UsageError(batch["error"])
            yield batch


def stream_loader(dataset: ShardStream, num_workers: int) -> StreamLoader:
    """Workers persist, so that each counts its epochs."""
    if num_workers:
        short_socket_dir()
    return StreamLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is,
                        pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)
