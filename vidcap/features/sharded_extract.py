"""Extraction into a sharded store (`vidcap extract --store shards`): the plan, the one shard-processing core, and
the single-process engine. The Ray engine (vidcap/features/ray_engine.py) runs the same plan and the same core.

- Plan: the videos of DIR/videos.csv that no finished shard holds, in file order, grouped by split into shards of
  `shard_size` videos, numbered after the shards already there (`<split>-<n:06d>`); videos inside video2dataset tar
  shards keep their source shard's number instead (`plan_shards`). A shard is the unit of work
  and of resume: a killed run leaves whole shards and an unfinished one that the next run plans again.
- Core (`extract_shard`): decoded videos of one shard (vidcap.features.shard's workers or Ray tasks, in plan order)
  -> the extractors, `batch_size` steps per forward pass across videos and flushed at the shard's end (so every
  engine makes the same batches, and the same features, for a shard) -> one tar shard and its index.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from itertools import groupby
from pathlib import Path
from typing import Any

import torch

from vidcap import launcher
from vidcap.datasets import read_videos
from vidcap.errors import UsageError, VidcapError, WorkerError
from vidcap.features import sharded
from vidcap.features import store as fs
from vidcap.features.extractors import Extractor, assemble_features
from vidcap.features.options import ENGINES, STORES, ExtractOptions
from vidcap.features.records import ExtractSummary, Failure, make_meta, read_video_table
from vidcap.features.shard import (
    Shard,
    VideoDataset,
    _Batcher,
    _Item,
    _stopped_worker,
    decoding_loader,
    prefetch_factor,
    spawned_shard,
    video_bytes,
)
from vidcap.precision import compute_record
from vidcap.video.tar_members import split_ref

logger = logging.getLogger(__name__)

# Under a launcher, how long the processes that finished their shards wait at the barrier for the slowest one.
BARRIER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class PlannedShard:
    name: str
    items: list[tuple[str, str]]  # (video_id, path), in videos.csv order


def _source_number(path: str) -> int | None:
    """The number of the video2dataset shard a `SHARD.tar::MEMBER` video lives in (`00003.tar` -> 3), else None."""
    ref = split_ref(path)
    stem = Path(ref[0]).stem if ref else ""
    return int(stem) if stem.isdigit() else None


def plan_shards(store: str | os.PathLike, rows: list[tuple[str, str, str]], shard_size: int) -> list[PlannedShard]:
    """rows: (video_id, path, split) -> the shards still to write (module docstring). Videos inside numbered tar
    shards (`vidcap prepare webdataset`) are keyed like their source, as video2dataset derives shards: those of
    `00003.tar` in split train go to `train-000003` whatever their number (--shard-size is for the other videos),
    unless that shard is finished already (then, as the other videos, to new shards numbered after the last)."""
    done = sharded.locate(store)
    finished = set(sharded.index_names(store))
    pending = [(vid, path, split) for vid, path, split in rows if vid not in done]
    by_source: dict[str, list[tuple[str, str]]] = {}
    rest: dict[str, list[tuple[str, str]]] = {}
    for vid, path, split in pending:
        number = _source_number(path)
        name = sharded.shard_name(split, number) if number is not None else None
        if name is not None and name not in finished:
            by_source.setdefault(name, []).append((vid, path))
        else:
            rest.setdefault(split, []).append((vid, path))
    plan = [PlannedShard(name, items) for name, items in sorted(by_source.items())]
    used = [int(name.rsplit("-", 1)[1]) for name in [*finished, *by_source]]
    number = max(used, default=-1) + 1  # finished shards are never rewritten; an unfinished one is planned again
    for split in sorted(rest):
        videos = rest[split]
        for start in range(0, len(videos), shard_size):
            plan.append(PlannedShard(sharded.shard_name(split, number), videos[start : start + shard_size]))
            number += 1
    return plan


def extract_shard(store: Path, shard: PlannedShard, decoded: Iterable[_Item], extractors: dict[str, Extractor],
                  options: ExtractOptions, writer: str, device: torch.device | None = None,
                  on_failure: Callable[[str, str, str], None] | None = None,
                  tick: Callable[[], None] | None = None) -> tuple[int, list[Failure]]:
    """The core: one shard's decoded videos -> features -> the shard file and its index. Returns (videos written,
    failures); a failure is also recorded in failed/ (and the video planned again on the next run)."""
    batcher = _Batcher(extractors, options.batch_size, device)
    features: dict[str, dict[str, Any]] = {}
    failures: list[Failure] = []

    def keep(done) -> None:
        for item, feats in done:
            features[item.video_id] = assemble_features(feats, item.video.mask, item.video.times)
            if tick:
                tick()

    with torch.inference_mode():
        for item in decoded:
            if item.error is not None:
                failures.append(Failure(item.video_id, item.path, item.error))
                fs.record_failure(store, item.video_id, item.path, item.error, writer)
                if on_failure is not None:
                    on_failure(item.video_id, item.path, item.error)
                if tick:
                    tick()
                continue
            batcher.add(item)
            batcher.run()
            keep(batcher.finished())
        batcher.run(flush=True)
        keep(batcher.finished(wait=True))
    if not features:  # every video failed: no shard (its number is used again)
        return 0, failures
    samples = ((vid, sharded.encode_sample(features[vid], options.dtype)) for vid, _ in shard.items if vid in features)
    written = sharded.write_shard(store, shard.name, samples, writer)
    for vid in features:
        fs.failed_path(store, vid).unlink(missing_ok=True)
    return written, failures


# --------------------------------------------------------------------------------------------------------------------
# Setup shared by the engines


def check_engine_options(options: ExtractOptions) -> None:
    """The store and engine flags of a run that writes a sharded store (UsageError before any work)."""
    if options.store not in STORES or options.engine not in ENGINES:
        raise UsageError(f"--store must be one of {', '.join(STORES)} and --engine one of {', '.join(ENGINES)}")
    if options.store != "shards":
        raise UsageError("--engine ray writes a sharded store: add --store shards")
    if options.ray_address is not None and options.engine != "ray":
        raise UsageError("--ray-address needs --engine ray")


@dataclass
class Setup:
    """A sharded run, set up: its options (weights resolved), the rows (video_id, path, split) of videos.csv, the
    extractors, meta.json, the plan, and how many samples failed their checksum and are planned again."""

    options: ExtractOptions
    rows: list[tuple[str, str, str]]
    extractors: dict[str, Extractor]
    meta: dict[str, Any]
    planned: list[PlannedShard]
    corrupt: int = 0


def setup_sharded(data_dir: str | os.PathLike, store: Path, options: ExtractOptions, lead: bool = True) -> Setup:
    """Check the options, build the extractors (bad weights fail before any write), prepare the store, repair it
    (`repair_store`: the samples that fail their checksum are planned again) and plan. Not `lead` (a process under a
    launcher other than rank 0): no writes and no plan (rank 0's plan is every process's)."""
    if options.shard_size < 1:
        raise UsageError(f"--shard-size must be at least 1, got {options.shard_size}")
    options = options.checked()
    pairs = read_video_table(data_dir, options.splits)
    table = read_videos(data_dir)
    split_of = dict(zip(table["video_id"].astype(str), table["split"].astype(str), strict=True))
    rows = [(vid, path, split_of.get(vid, "all")) for vid, path in pairs]
    extractors = {kind: options.build(kind) for kind in options.names}
    meta = make_meta(extractors, options.num_frames, options.dtype, compute_record(options.device, options.precision))
    weights = {f"{kind}_weights": ext.weights for kind, ext in extractors.items()}
    options = replace(options, **weights)
    if not lead:
        return Setup(options, rows, extractors, meta, [])
    sharded.prepare_sharded_store(store, meta)
    sharded.clean_temp_files(store)
    corrupt = repair_store(store)
    return Setup(options, rows, extractors, meta, plan_shards(store, rows, options.shard_size), corrupt)


def _check_same_store(store: Path, meta: dict[str, Any]) -> None:
    """What every process but rank 0 checks before any work: it sees the store rank 0 prepared, and its settings
    make the same meta.json."""
    if not (store / "meta.json").is_file():
        raise UsageError(f"{store}: no meta.json here, though rank 0 wrote one: every node must see --out on a "
                         "shared file system")
    fs.check_meta(store, {**meta, "layout": sharded.LAYOUT})


def repair_store(store: Path) -> int:
    """Check every sample of the finished shards (sharded.verify) and forget the bad ones (sharded.forget), so that
    this run extracts exactly those again, into a new shard; returns how many were forgotten (a whole shard whose
    index is unreadable counts as its samples are unknown: 0)."""
    problems = sharded.verify(store)
    for problem in problems:
        logger.warning("%s/%s; extracting it again", sharded.shards_dir(store), problem)
    return sharded.forget(store, problems, f"{socket.gethostname()}:0") if problems else 0


def finish_sharded(store: Path, rows: list[tuple[str, str, str]], planned: list[PlannedShard],
                   started: float, corrupt: int = 0) -> ExtractSummary:
    """Rebuild shards.json and manifest.csv once every shard of the plan is done, and say what the run did."""
    sharded.write_summary(store)
    sharded.write_manifest(store)
    done = sharded.locate(store)
    failures = fs.read_failures(store)
    pending = {vid for shard in planned for vid, _ in shard.items}
    failed = [Failure(vid, path, failures[vid][0]) for vid, path, _ in rows if vid in failures and vid not in done]
    extracted = sum(1 for vid in pending if vid in done)
    return ExtractSummary(store, len(rows), len(rows) - len(pending), extracted, failed, time.perf_counter() - started,
                          corrupt=corrupt)


# --------------------------------------------------------------------------------------------------------------------
# The local engines: one process, `--devices N` processes, or the processes of torchrun / srun


def run_shards(job: Shard) -> int:
    """This process's shards through the core, its decoding workers feeding it shard after shard; returns the videos
    written. A decoding worker that hangs or dies: WorkerError naming its video (the finished shards are kept)."""
    from tqdm import tqdm

    options = job.options
    device = torch.device(options.device if options.device == "cpu" else f"cuda:{job.local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before anything touches CUDA: otherwise every process also uses GPU 0
    if job.extractors is None:
        extractors = {kind: options.build(kind, device) for kind in options.names}
    else:
        extractors = {kind: ext.to(device) for kind, ext in job.extractors.items()}
    mine = job.mine()
    items = [item for shard in mine for item in shard.items]
    if not items:
        return 0
    threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    shard_of = {vid: shard for shard in mine for vid, _ in shard.items}
    dataset = VideoDataset(items, {kind: ext.request for kind, ext in extractors.items()}, options)
    loader = decoding_loader(dataset, options, pin_memory=device.type == "cuda",
                             prefetch=prefetch_factor(video_bytes(extractors, options.num_frames), options.num_workers))
    writer = f"{socket.gethostname()}:{job.rank}"
    desc = "extract" if job.world_size == 1 else f"extract [{job.rank}]"
    bar = tqdm(total=len(items), unit="video", desc=desc, disable=not job.progress, position=job.local_rank,
               dynamic_ncols=True)
    written = 0
    try:
        for shard, decoded in groupby(loader, key=lambda item: shard_of[item.video_id]):
            written += extract_shard(job.store, shard, decoded, extractors, options, writer, device,
                                     on_failure=job.on_failure, tick=lambda: bar.update(1))[0]
    except (RuntimeError, ConnectionError) as error:
        failure = _stopped_worker(error, dataset.in_flight, options.worker_timeout or 0)
        if failure is None:
            raise
        raise WorkerError(f"{job.store}: {failure[0]}; the finished shards are kept: rerun to resume") from None
    finally:
        bar.close()
        torch.set_num_threads(threads)
    return written


def run_sharded_extract(data_dir: str | os.PathLike, out_dir: str | os.PathLike, options: ExtractOptions, *,
                        progress: bool = True,
                        on_failure: Callable[[str, str, str], None] | None = None) -> ExtractSummary:
    """`vidcap extract --store shards` on this machine's processes: one (the default), `--devices N` (spawned), or
    those torchrun / srun started (over any number of nodes sharing the store). Rank 0 (or the one process) repairs
    and plans; each process takes every N-th planned shard, whole, through the core; rank 0 (or the parent) writes
    shards.json and the manifest once all are done. Under a launcher every process gets the same summary."""
    check_engine_options(options)
    started = time.perf_counter()
    store = Path(out_dir)
    process = launcher.join("gloo")  # gloo, on GPUs too: only a few Python objects are exchanged
    lead = process is None or process.rank == 0
    if process is not None:
        options = replace(options, devices=launcher.devices_per_node(process, options.devices))
    setup = launcher.agree(process, lambda: setup_sharded(data_dir, store, options, lead))
    if process is not None:
        launcher.agree(process, lambda: lead or _check_same_store(store, setup.meta))
    options, rows, extractors = setup.options, setup.rows, setup.extractors
    planned = launcher.from_rank_zero(process, setup.planned)
    job = Shard(store, planned, options, progress, on_failure)
    try:
        if process is not None:
            # A process that stops (a WorkerError below, a kill, its node) never reaches the barrier: the others
            # notice at once (its connection closes) and stop too.
            run_shards(replace(job, extractors=extractors, rank=process.rank, world_size=process.world_size,
                               local_rank=process.local_rank))
            try:
                torch.distributed.monitored_barrier(timeout=BARRIER_TIMEOUT)
            except RuntimeError as error:  # torch.distributed.DistError: a process that died
                raise VidcapError(f"{store}: another process stopped before finishing its shards "
                                  f"({' '.join(str(error).split())[:200]}); the shards written are complete: rerun "
                                  "to extract the rest") from None
        elif options.devices == 1 or len(planned) <= 1:
            run_shards(replace(job, extractors=extractors))
        else:
            del extractors  # each process builds its own, on its own device
            world = min(options.devices, len(planned))
            torch.multiprocessing.spawn(spawned_shard, args=(run_shards, replace(job, world_size=world)), nprocs=world,
                                        join=True)
    except (WorkerError, torch.multiprocessing.ProcessExitedException) as error:
        sharded.write_summary(store)
        sharded.write_manifest(store)
        if isinstance(error, WorkerError):
            raise
        raise WorkerError(f"{store}: extraction process {error.error_index} stopped with exit code {error.exit_code} "
                          "(its line is above); the finished shards are kept: rerun to resume") from None
    summary = finish_sharded(store, rows, planned, started, setup.corrupt) if lead else None
    summary = launcher.from_rank_zero(process, summary)
    return summary if process is None else replace(summary, rank=process.rank)
