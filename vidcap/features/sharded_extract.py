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
from itertools import groupby
from pathlib import Path
from typing import Any

import torch

from vidcap.datasets import read_videos
from vidcap.errors import UsageError, WorkerError
from vidcap.features import sharded
from vidcap.features import store as fs
from vidcap.features.extract import ExtractOptions, ExtractSummary, Failure, make_meta, read_video_table
from vidcap.features.extractors import Extractor, assemble_features
from vidcap.features.shard import (
    VideoDataset,
    _Batcher,
    _Item,
    _stopped_worker,
    decoding_loader,
    prefetch_factor,
    video_bytes,
)
from vidcap.precision import compute_record
from vidcap.video.tar_members import split_ref

logger = logging.getLogger(__name__)


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


def setup_sharded(data_dir: str | os.PathLike, store: Path, options: ExtractOptions
                  ) -> tuple[ExtractOptions, list[tuple[str, str, str]], dict[str, Extractor], list[PlannedShard]]:
    """Check the options, build the extractors (bad weights fail before any write), prepare the store, plan."""
    if options.shard_size < 1:
        raise UsageError(f"--shard-size must be at least 1, got {options.shard_size}")
    options = options.checked()
    pairs = read_video_table(data_dir, options.splits)
    table = read_videos(data_dir)
    split_of = dict(zip(table["video_id"].astype(str), table["split"].astype(str), strict=True))
    rows = [(vid, path, split_of.get(vid, "all")) for vid, path in pairs]
    extractors = {kind: options.build(kind) for kind in options.names}
    meta = make_meta(extractors, options.num_frames, options.dtype, compute_record(options.device, options.precision))
    sharded.prepare_sharded_store(store, meta)
    sharded.clean_temp_files(store)
    weights = {f"{kind}_weights": ext.weights for kind, ext in extractors.items()}
    return replace(options, **weights), rows, extractors, plan_shards(store, rows, options.shard_size)


def finish_sharded(store: Path, rows: list[tuple[str, str, str]], planned: list[PlannedShard],
                   started: float) -> ExtractSummary:
    sharded.write_summary(store)
    sharded.write_manifest(store)
    done = sharded.locate(store)
    failures = fs.read_failures(store)
    pending = {vid for shard in planned for vid, _ in shard.items}
    failed = [Failure(vid, path, failures[vid][0]) for vid, path, _ in rows if vid in failures and vid not in done]
    extracted = sum(1 for vid in pending if vid in done)
    return ExtractSummary(store, len(rows), len(rows) - len(pending), extracted, failed, time.perf_counter() - started)


# --------------------------------------------------------------------------------------------------------------------
# The single-process engine


def run_sharded_extract(data_dir: str | os.PathLike, out_dir: str | os.PathLike, options: ExtractOptions, *,
                        progress: bool = True,
                        on_failure: Callable[[str, str, str], None] | None = None) -> ExtractSummary:
    """`vidcap extract --store shards` in this process: decoding workers feed the core shard after shard."""
    from tqdm import tqdm

    from vidcap.features.options import ENGINES, STORES

    if options.store not in STORES or options.engine not in ENGINES:
        raise UsageError(f"--store must be one of {', '.join(STORES)} and --engine one of {', '.join(ENGINES)}")
    if options.store != "shards":
        raise UsageError("--engine ray writes a sharded store: add --store shards")
    if options.ray_address is not None and options.engine != "ray":
        raise UsageError("--ray-address needs --engine ray")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun's processes
        raise UsageError("--store shards does not run under torchrun or srun: use --engine ray to spread the work")
    if options.engine == "ray":
        from vidcap.features.ray_engine import run_ray_extract

        return run_ray_extract(data_dir, out_dir, options, progress=progress, on_failure=on_failure)
    started = time.perf_counter()
    store = Path(out_dir)
    if options.devices != 1:
        raise UsageError("--store shards runs in one process (--engine ray spreads it over many): leave --devices out")
    options, rows, extractors, planned = setup_sharded(data_dir, store, options)
    if not planned:
        return finish_sharded(store, rows, planned, started)
    threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    items = [item for shard in planned for item in shard.items]
    shard_of = {vid: shard for shard in planned for vid, _ in shard.items}
    dataset = VideoDataset(items, {kind: ext.request for kind, ext in extractors.items()}, options)
    loader = decoding_loader(dataset, options,
                             prefetch=prefetch_factor(video_bytes(extractors, options.num_frames), options.num_workers))
    writer = f"{socket.gethostname()}:0"
    bar = tqdm(total=len(items), unit="video", desc="extract", disable=not progress, dynamic_ncols=True)
    try:
        for shard, decoded in groupby(loader, key=lambda item: shard_of[item.video_id]):
            extract_shard(store, shard, decoded, extractors, options, writer, on_failure=on_failure,
                          tick=lambda: bar.update(1))
    except (RuntimeError, ConnectionError) as error:
        failure = _stopped_worker(error, dataset.in_flight, options.worker_timeout or 0)
        if failure is None:
            raise
        sharded.write_summary(store)
        sharded.write_manifest(store)
        raise WorkerError(f"{store}: {failure[0]}; the finished shards are kept: rerun to resume") from None
    finally:
        bar.close()
        torch.set_num_threads(threads)
    return finish_sharded(store, rows, planned, started)
