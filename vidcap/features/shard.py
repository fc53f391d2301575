"""One process's share of an extraction run (vidcap/features/extract.py starts one per device): decoding workers, batches
across videos, and the writes into the store.

DataLoader workers decode each video's sampled frames (and clips) and resize them to uint8 with
vidcap.video.reader.read_sampled_frames and the extractors' requests (the same call `vidcap caption` makes), while this
process runs the networks on `batch_size` steps at a time, whatever the video boundaries (`_Batcher`), and writes each
finished video's features through vidcap.features.store.

The workers start as fresh processes (vidcap.video.reader.worker_context: never forked from a process that decoded), and a
watchdog ends the run when a worker hangs or dies: one WorkerError naming the video that worker was on; the videos
written before it stay.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidcap.errors import UsageError, VidcapError, WorkerError, disk_error
from vidcap.features import store as fs
from vidcap.features.extractors import Extractor, assemble_features
from vidcap.features.options import ExtractOptions
from vidcap.video.reader import (
    FrameRequest,
    SampledFrames,
    read_sampled_frames,
    short_socket_dir,
    worker_context,
)

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


class _InFlight:
    """Which item each decoding worker is on: (pid, index) pairs in shared memory that the workers write, so that
    the run can name the video of a worker that dies (its prefetched items may be lost with it)."""

    def __init__(self, num_workers: int):
        self.slots = worker_context().RawArray("q", [-1] * 2 * max(1, num_workers))

    def mark(self, index: int) -> None:
        info = torch.utils.data.get_worker_info()
        if info is not None:  # in a worker
            self.slots[2 * info.id : 2 * info.id + 2] = [os.getpid(), index]

    def index_of(self, pid: int) -> int | None:
        pairs = zip(self.slots[0::2], self.slots[1::2], strict=True)
        return next((index for worker, index in pairs if worker == pid), None)

    def dead(self) -> tuple[int, int] | None:
        """(pid, index) of a worker that has died (Linux: its /proc entry is gone or a zombie), or None."""
        for pid, index in zip(self.slots[0::2], self.slots[1::2], strict=True):
            if pid > 0 and not _alive(pid):
                return pid, index
        return None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): a zombie counts as alive here, and the run names the video it waited for
        return True
    return stat[stat.rindex(")") + 2] not in "ZX"


class VideoDataset(torch.utils.data.Dataset):
    """items (video_id, path) -> one _Item per video: the frames `requests` ask for ({key: FrameRequest}, e.g. each
    extractor's request under its kind), sampled and decoded the way options (ExtractOptions.checked()) say."""

    def __init__(self, items: list[tuple[str, str]], requests: dict[str, FrameRequest], options: ExtractOptions):
        self.items = items
        self.requests = requests
        self.num_frames = options.num_frames
        self.backend = options.backend
        self.decoder_threads = options.decoder_threads or 0  # 0: the decoder's default
        self.in_flight = _InFlight(options.num_workers or 0)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> _Item:
        self.in_flight.mark(index)
        video_id, path = self.items[index]
        try:
            video = read_sampled_frames(path, self.num_frames, self.backend, self.requests, self.decoder_threads)
        except Exception as exc:  # noqa: BLE001 - any decoder failure on one file is that file's status, not the run's
            return _Item(video_id, path, error=_reason(exc, path))
        # Only the valid steps go to the networks (padded steps get zero features).
        video.inputs = {k: torch.from_numpy(v[video.mask]) for k, v in video.inputs.items()}
        return _Item(video_id, path, video=video)


def _keep(item: _Item) -> _Item:
    return item


# Decoded uint8 inputs in flight per process at most (workers x prefetch videos, each in /dev/shm on its way from a
# worker and then in pinned memory): 32 slowfast videos per GPU were ~5 GB (issue 17).
PREFETCH_BYTES = 1 << 30


def video_bytes(extractors: dict[str, Extractor], num_frames: int) -> int:
    """Bytes of one video's decoded inputs: K steps x frames per step x 3 x S x S uint8, summed over the extractors
    (x3d_m 82 MB, slowfast_r50 164 MB, efficientnet_lite0 4 MB at K = 26)."""
    return num_frames * sum(e.request.frames_per_step * 3 * e.image_size**2 for e in extractors.values())


def prefetch_factor(video_size: int, num_workers: int) -> int:
    """Videos each decoding worker prepares ahead: 4 for small inputs, fewer for big clips so that no more than
    PREFETCH_BYTES are in flight, and at least 1."""
    return max(1, min(4, PREFETCH_BYTES // max(1, video_size * max(1, num_workers))))


@contextmanager
def _shared_memory_hint(in_flight: int) -> Iterator[None]:
    """Turn a decoding worker killed by SIGBUS, which is what a full /dev/shm does (Docker gives a container 64 MB),
    into one line that says what to do; warn first when /dev/shm is smaller than the decoded videos in flight."""
    shm = Path("/dev/shm")
    total = shutil.disk_usage(shm).total if in_flight and shm.is_dir() else 0
    if total and total < in_flight:
        logger.warning("/dev/shm holds %d MB, less than the ~%d MB of decoded videos in flight; raise the container's "
                       "--shm-size or lower --num-workers", total >> 20, in_flight >> 20)
    try:
        yield
    except RuntimeError as error:
        if not _out_of_shared_memory(str(error)):
            raise
        raise UsageError(f"decoding workers ran out of shared memory (/dev/shm: {total >> 20} MB, ~{in_flight >> 20} "
                         "MB of decoded videos in flight): give the container more (docker run --shm-size=8g ...) or "
                         "lower --num-workers") from None


def _out_of_shared_memory(text: str) -> bool:
    """Whether DataLoader's error says a worker died of a full /dev/shm (SIGBUS)."""
    return "Bus error" in text or "out of shared memory" in text


def _worker_init(_worker_id: int) -> None:
    # Workers only decode and resize: one thread each leaves the cores to the model.
    torch.set_num_threads(1)
    short_socket_dir()


def decoding_loader(dataset: VideoDataset, options: ExtractOptions, *, pin_memory: bool = False,
                    prefetch: int | None = None) -> torch.utils.data.DataLoader:
    """The DataLoader that decodes `dataset`'s videos in order, one per item, in options.num_workers fresh worker
    processes (none: in this process) with options.worker_timeout as its watchdog (options: ExtractOptions.checked()).
    A worker that hangs or dies makes it raise a RuntimeError that `worker_failure` explains."""
    workers = options.num_workers
    if workers:
        short_socket_dir()
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,  # one video per item; batching across videos happens in _Batcher
        shuffle=False,
        num_workers=workers,
        collate_fn=_keep,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=prefetch if workers else None,
        multiprocessing_context=worker_context() if workers else None,
        timeout=options.worker_timeout if workers else 0,
    )


def _stopped_worker(error: Exception, in_flight: _InFlight, timeout: float) -> tuple[str, int | None] | None:
    """(the reason, the index of the item the worker was on, or None: the one the run waited for) when `error` says
    a decoding worker hung or died; None for any other error.

    A worker killed while it hands over a video shows as a ConnectionError (its tensors' file descriptors can no
    longer be fetched) before its death is registered: then the dead worker is found among the ones in flight, and
    DataLoader's SIGCHLD handler, which raises as the death registers, is let finish here.
    """
    if isinstance(error, ConnectionError):
        found, deadline = None, time.monotonic() + 5
        while found is None and time.monotonic() < deadline:
            try:
                if (found := in_flight.dead()) is None:
                    time.sleep(0.05)
            except RuntimeError as late:  # the SIGCHLD handler: its message has the signal
                error = late
                break
        if isinstance(error, ConnectionError):
            if found is None:
                return None
            pid, index = found
            return (f"its decoding worker (pid {pid}) died while handing over a video (killed by the out-of-memory "
                    "killer?)"), index
    failure = worker_failure(error, timeout)
    if failure is None:
        return None
    reason, pid = failure
    return reason, in_flight.index_of(pid) if pid is not None else None


def worker_failure(error: RuntimeError, timeout: float) -> tuple[str, int | None] | None:
    """What DataLoader's RuntimeError says about its workers: a reason a user can act on and the pid of the worker
    that died (None for a timeout); None when the error is not about a hung or dead worker (a worker killed by
    SIGBUS, a full /dev/shm, is left to _shared_memory_hint). DataLoader raises these from its iterator (its
    timeout, a dead worker) and, through its SIGCHLD handler, from wherever this process is when a worker dies."""
    # A death seen by SIGCHLD ("... is killed by signal: Killed.") while the loader waits for data makes it raise
    # "... exited unexpectedly" from that error: read both.
    text = " ".join(f"{error} {error.__cause__ or ''}".split())
    if not text.startswith("DataLoader") or _out_of_shared_memory(text):
        return None
    if "timed out" in text:
        return (f"its decoding worker delivered nothing for {timeout:g} s (a hung decoder or file system; "
                "--worker-timeout sets the limit)"), None
    found = re.search(r"\(pid\(?s?\)? (\d+)", text)
    pid = int(found.group(1)) if found else None
    who = f"its decoding worker (pid {pid})" if pid else "its decoding worker"
    killed = re.search(r"killed by signal: ([^.]+)", text)
    signal = killed.group(1).strip() if killed else None
    if signal is None:
        return f"{who} died unexpectedly (killed by the out-of-memory killer?)", pid
    return f"{who} died: killed by signal {signal}{' (the out-of-memory killer?)' if signal == 'Killed' else ''}", pid


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
    be short), cutting across video boundaries; a video is done once every extractor has covered its steps.

    On CUDA the host never waits for the GPU in the loop (issue 17): a video's inputs go to the device when it arrives
    (a non-blocking copy from the pinned memory the DataLoader put them in), batches are joined there, and features
    come back through non-blocking copies into pinned memory; `finished` hands over the videos whose copies are done
    (`wait=True`: waits for them). Decoding, copies and compute overlap. On the CPU the same steps make no copies.
    """

    def __init__(self, extractors: dict[str, Extractor], batch_size: int, device: torch.device | None = None):
        self.extractors = extractors
        self.batch_size = batch_size
        self.device = device or torch.device("cpu")
        self.videos: deque[_Item] = deque()
        self.pending: dict[str, deque[torch.Tensor]] = {k: deque() for k in extractors}
        self.pending_rows = dict.fromkeys(extractors, 0)
        # Features on their way to the host: (tensor, the event of its copy or None), in batch order.
        self.copying: dict[str, deque[tuple[torch.Tensor, torch.cuda.Event | None]]] = {k: deque() for k in extractors}
        self.outputs: dict[str, deque[torch.Tensor]] = {k: deque() for k in extractors}
        self.output_rows = dict.fromkeys(extractors, 0)

    def __len__(self) -> int:
        return len(self.videos)

    def add(self, item: _Item) -> None:
        self.videos.append(item)
        for key in self.extractors:
            x = item.video.inputs[key].to(self.device, non_blocking=True)
            self.pending[key].append(x)
            self.pending_rows[key] += len(x)
        item.video.inputs = {}  # the host copy (pinned on CUDA) is no longer needed

    def run(self, flush: bool = False) -> None:
        for key, extractor in self.extractors.items():
            while self.pending_rows[key] >= self.batch_size or (flush and self.pending_rows[key] > 0):
                take = min(self.batch_size, self.pending_rows[key])
                x = _take_rows(self.pending[key], take, torch.cat)
                self.pending_rows[key] -= take
                self.copying[key].append(start_copy_to_host(extractor(x)))

    def _collect(self, key: str, wait: bool) -> None:
        """Move the features whose copy has ended (all of them with `wait`) from `copying` to `outputs`."""
        queue = self.copying[key]
        while queue:
            features, copied = queue[0]
            if copied is not None:
                if wait:
                    copied.synchronize()
                elif not copied.query():
                    break
            queue.popleft()
            self.outputs[key].append(features)
            self.output_rows[key] += len(features)

    def _pop_rows(self, key: str, n: int) -> np.ndarray:
        self.output_rows[key] -= n
        return _take_rows(self.outputs[key], n, torch.cat).numpy()

    def finished(self, wait: bool = False) -> list[tuple[_Item, dict[str, np.ndarray]]]:
        """The videos whose features are all on the host, in order: [(item, {kind: (Kv, D) float32})]."""
        for key in self.extractors:
            self._collect(key, wait)
        done = []
        while self.videos:
            n = int(self.videos[0].video.mask.sum())
            if any(self.output_rows[key] < n for key in self.extractors):
                break
            item = self.videos.popleft()
            done.append((item, {key: self._pop_rows(key, n) for key in self.extractors}))
        return done


def start_copy_to_host(features: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying features to the host without blocking: (the host tensor, pinned, and the event that marks the
    end of the copy; read the tensor only after it). CPU tensors come back as they are, with no event."""
    if features.device.type != "cuda":
        return features, None
    host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
    host.copy_(features, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return host, copied


# --------------------------------------------------------------------------------------------------------------------
# One process (a shard)


@dataclass
class Shard:
    """What a shard process needs (picklable: sent to spawned processes). items: the run's work, the same list in
    every process: (video_id, path) of every video not yet extracted (per-file store, run_shard), or the planned
    shards (sharded store, sharded_extract.run_shards). The process of rank r (of world_size) takes
    items[r::world_size] (`mine()`) and runs on GPU local_rank (its index on its node); extractors: prebuilt ones
    (in-process runs only)."""

    store: Path
    items: list
    options: ExtractOptions
    progress: bool
    on_failure: Callable[[str, str, str], None] | None = None
    extractors: dict[str, Extractor] | None = field(default=None, repr=False)
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def mine(self) -> list:
        return self.items[self.rank :: self.world_size]


def run_shard(shard: Shard) -> int:
    """Extract this process's share of shard.items; returns the number of videos written."""
    threads = torch.get_num_threads()
    if shard.options.threads:
        torch.set_num_threads(shard.options.threads)
    try:
        return _extract_shard(shard)
    finally:
        torch.set_num_threads(threads)  # in-process runs leave the caller's setting as it was


def _extract_shard(shard: Shard) -> int:
    from tqdm import tqdm

    options = shard.options
    device = torch.device(options.device if options.device == "cpu" else f"cuda:{shard.local_rank}")
    if device.type == "cuda":
        # Before anything touches CUDA: otherwise every process also makes a context on GPU 0.
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    if shard.extractors is None:
        extractors = {kind: options.build(kind, device) for kind in options.names}
    else:
        extractors = {kind: ext.to(device) for kind, ext in shard.extractors.items()}
    items = shard.mine()
    size = video_bytes(extractors, options.num_frames)
    prefetch = prefetch_factor(size, options.num_workers)
    in_flight = size * options.num_workers * prefetch
    writer = f"{socket.gethostname()}:{shard.rank}"  # manifest.csv's writer column
    dataset = VideoDataset(items, {kind: ext.request for kind, ext in extractors.items()}, options)
    loader = decoding_loader(dataset, options, pin_memory=device.type == "cuda", prefetch=prefetch)
    batcher = _Batcher(extractors, options.batch_size, device)
    written = 0
    desc = "extract" if shard.world_size == 1 else f"extract [{shard.rank}]"
    bar = tqdm(total=len(items), unit="video", desc=desc, disable=not shard.progress, position=shard.local_rank,
               dynamic_ncols=True)

    def write(done: list[tuple[_Item, dict[str, np.ndarray]]]) -> None:
        nonlocal written
        for item, feats in done:
            arrays = assemble_features(feats, item.video.mask, item.video.times)
            fs.save_features(shard.store, item.video_id, arrays, dtype=options.dtype, writer=writer)
            fs.failed_path(shard.store, item.video_id).unlink(missing_ok=True)
            written += 1
            bar.update(1)

    received, stopped = 0, None
    with torch.inference_mode(), _shared_memory_hint(in_flight):
        try:
            for item in loader:
                received += 1
                if item.error is not None:
                    fs.record_failure(shard.store, item.video_id, item.path, item.error, writer)
                    logger.debug("%s: %s", item.path, item.error)
                    if shard.on_failure is not None:
                        shard.on_failure(item.video_id, item.path, item.error)
                    bar.update(1)
                    continue
                batcher.add(item)
                batcher.run()
                write(batcher.finished())
            batcher.run(flush=True)
            write(batcher.finished(wait=True))
        except (RuntimeError, ConnectionError) as error:
            # No flush: DataLoader's SIGCHLD handler may have cut the batcher short mid-batch, and its rows could
            # then go to the wrong videos. The videos not written are extracted again by the rerun.
            failure = _stopped_worker(error, dataset.in_flight, options.worker_timeout or 0)
            if failure is None:
                raise
            reason, index = failure
            stopped = (*items[min(received, len(items) - 1) if index is None else index], reason)
    bar.close()
    if stopped is not None:
        video_id, path, reason = stopped
        fs.record_failure(shard.store, video_id, path, reason, writer)
        raise WorkerError(f"{path}: {reason}; stopped after writing {written} videos, which are kept: rerun to resume")
    return written


def spawned_shard(rank: int, run: Callable[[Any], int], job: Any) -> None:
    """Process `rank` of torch.multiprocessing.spawn (`--devices N` on one node: rank r uses GPU r): `run(job)` with
    the job's rank set (run_shard, or the sharded store's run_shards, each with a Shard). A VidcapError is
    logged as one line and becomes the process's exit code, which the parent reports."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(replace(job, rank=rank, local_rank=rank))
    except (VidcapError, OSError) as error:
        disk = disk_error(error) if isinstance(error, OSError) else error
        if disk is None:
            raise
        logger.error("process %d: %s", rank, disk)
        raise SystemExit(disk.exit_code) from None
