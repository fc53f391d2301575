"""One process's share of an extraction run (vidcap/extract.py starts one per device): decoding workers, batches
across videos, and the writes into the store.

DataLoader workers decode each video's sampled frames (and clips) and resize them to uint8 with
vidcap.video.read_sampled_frames and the extractors' requests (the same call `vidcap caption` makes), while this
process runs the networks on `batch_size` steps at a time, whatever the video boundaries (`_Batcher`), and writes each
finished video's features through vidcap.store.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vidcap import store as fs
from vidcap.errors import VidcapError
from vidcap.extractors import Extractor, assemble_features
from vidcap.video import SampledFrames, read_sampled_frames

if TYPE_CHECKING:
    from vidcap.extract import ExtractOptions

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Decoding in workers


@dataclass
class _Item:
    """One video as a worker hands it over: its decoded samples (inputs as uint8 tensors), or why it failed."""

    video_id: str
    path: str
    video: SampledFrames | None = None
    error: str | None = None

    def pin_memory(self) -> _Item:  # DataLoader(pin_memory=True) calls this on custom types
        if self.video is not None:
            self.video.inputs = {k: v.pin_memory() for k, v in self.video.inputs.items()}
        return self


def _reason(exc: BaseException, path: str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # VideoError messages are "PATH: reason"; the manifest and the CLI add the path themselves.
    if text.startswith(f"{path}: "):
        text = text[len(path) + 2 :]
    return text if isinstance(exc, VidcapError) else f"{type(exc).__name__}: {text}"


class _VideoDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[tuple[str, str]], extractors: dict[str, Extractor], options: ExtractOptions):
        self.items = items
        self.requests = {kind: ext.request for kind, ext in extractors.items()}
        self.num_frames = options.num_frames
        self.backend = options.backend

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> _Item:
        video_id, path = self.items[index]
        try:
            video = read_sampled_frames(path, self.num_frames, self.backend, self.requests)
        except Exception as exc:  # noqa: BLE001 - any decoder failure on one file is that file's status, not the run's
            return _Item(video_id, path, error=_reason(exc, path))
        # Only the valid steps go to the networks (padded steps get zero features).
        video.inputs = {k: torch.from_numpy(v[video.mask]) for k, v in video.inputs.items()}
        return _Item(video_id, path, video=video)


def _keep(item: _Item) -> _Item:
    return item


def _worker_init(_worker_id: int) -> None:
    # Workers only decode and resize: one thread each leaves the cores to the model.
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------------------------
# Batching across videos


def _take_rows(queue: deque, n: int, concat):
    """Pop the first n rows off a queue of arrays/tensors (splitting the last one taken); concat joins parts."""
    parts = []
    while n:
        head = queue[0]
        if len(head) <= n:
            parts.append(queue.popleft())
            n -= len(head)
        else:
            parts.append(head[:n])
            queue[0] = head[n:]
            n = 0
    return parts[0] if len(parts) == 1 else concat(parts)


class _Batcher:
    """FIFO of decoded videos. Each extractor runs on exactly `batch_size` steps per forward pass (the last one may
    be short), cutting across video boundaries; a video is done once every extractor has covered its steps."""

    def __init__(self, extractors: dict[str, Extractor], batch_size: int):
        self.extractors = extractors
        self.batch_size = batch_size
        self.videos: deque[_Item] = deque()
        self.pending: dict[str, deque[torch.Tensor]] = {k: deque() for k in extractors}
        self.pending_rows = dict.fromkeys(extractors, 0)
        self.outputs: dict[str, deque[np.ndarray]] = {k: deque() for k in extractors}
        self.output_rows = dict.fromkeys(extractors, 0)

    def __len__(self) -> int:
        return len(self.videos)

    def add(self, item: _Item) -> None:
        self.videos.append(item)
        for key in self.extractors:
            x = item.video.inputs[key]
            self.pending[key].append(x)
            self.pending_rows[key] += len(x)

    def run(self, flush: bool = False) -> None:
        for key, extractor in self.extractors.items():
            while self.pending_rows[key] >= self.batch_size or (flush and self.pending_rows[key] > 0):
                take = min(self.batch_size, self.pending_rows[key])
                x = _take_rows(self.pending[key], take, torch.cat)
                out = extractor.extract(x, batch_size=take)
                self.pending_rows[key] -= take
                self.outputs[key].append(out)
                self.output_rows[key] += len(out)

    def _pop_rows(self, key: str, n: int) -> np.ndarray:
        self.output_rows[key] -= n
        return _take_rows(self.outputs[key], n, np.concatenate)

    def finished(self) -> list[tuple[_Item, dict[str, np.ndarray]]]:
        done = []
        while self.videos:
            n = int(self.videos[0].video.mask.sum())
            if any(self.output_rows[key] < n for key in self.extractors):
                break
            item = self.videos.popleft()
            done.append((item, {key: self._pop_rows(key, n) for key in self.extractors}))
        return done


# --------------------------------------------------------------------------------------------------------------------
# One process (a shard)


@dataclass
class Shard:
    """What a shard process needs (picklable: sent to spawned processes). items: (index in the selected table,
    video_id, path) not yet extracted; extractors: prebuilt ones (single process only)."""

    store: Path
    items: list[tuple[int, str, str]]
    options: ExtractOptions
    progress: bool
    on_failure: Callable[[str, str, str], None] | None = None
    extractors: dict[str, Extractor] | None = field(default=None, repr=False)


def run_shard(rank: int, shard: Shard) -> int:
    """Extract this rank's share of shard.items; returns the number of videos written."""
    threads = torch.get_num_threads()
    if shard.options.threads:
        torch.set_num_threads(shard.options.threads)
    try:
        return _extract_shard(rank, shard)
    finally:
        torch.set_num_threads(threads)  # in-process runs leave the caller's setting as it was


def _extract_shard(rank: int, shard: Shard) -> int:
    from tqdm import tqdm

    options = shard.options
    device = torch.device(options.device if options.device == "cpu" else f"cuda:{rank}")
    if shard.extractors is None:
        extractors = {kind: options.build(kind, device) for kind in options.names}
    else:
        extractors = {kind: ext.to(device) for kind, ext in shard.extractors.items()}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    items = [(vid, path) for index, vid, path in shard.items if index % options.devices == rank]
    loader = torch.utils.data.DataLoader(
        _VideoDataset(items, extractors, options),
        batch_size=None,  # one video per item; batching across videos happens in _Batcher
        shuffle=False,
        num_workers=options.num_workers,
        collate_fn=_keep,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if options.num_workers else None,
        prefetch_factor=4 if options.num_workers else None,
    )
    batcher = _Batcher(extractors, options.batch_size)
    written = 0
    desc = "extract" if options.devices == 1 else f"extract [{rank}]"
    bar = tqdm(total=len(items), unit="video", desc=desc, disable=not shard.progress, position=rank,
               dynamic_ncols=True)

    def write(done: list[tuple[_Item, dict[str, np.ndarray]]]) -> None:
        nonlocal written
        for item, feats in done:
            arrays = assemble_features(feats, item.video.mask, item.video.times)
            fs.save_features(shard.store, item.video_id, arrays, dtype=options.dtype)
            fs.failed_path(shard.store, item.video_id).unlink(missing_ok=True)
            written += 1
            bar.update(1)

    with torch.inference_mode():
        for item in loader:
            if item.error is not None:
                fs.record_failure(shard.store, item.video_id, item.path, item.error)
                logger.debug("%s: %s", item.path, item.error)
                if shard.on_failure is not None:
                    shard.on_failure(item.video_id, item.path, item.error)
                bar.update(1)
                continue
            batcher.add(item)
            batcher.run()
            write(batcher.finished())
        batcher.run(flush=True)
        write(batcher.finished())
    bar.close()
    return written


def spawned_shard(rank: int, shard: Shard) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_shard(rank, shard)
