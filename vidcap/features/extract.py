"""The extraction engine behind `vidcap extract`: DIR/videos.csv -> a feature store (vidcap/features/store.py, docs/formats.md).

`run_extract` picks the engine: the per-file store below, or a sharded store (`--store shards`) through
vidcap/features/sharded_extract.py (one process, `--devices N`, torchrun/srun) or vidcap/features/ray_engine.py
(`--engine ray`), which run one shard core. The records every engine shares (ExtractSummary, Failure, make_meta,
read_video_table) live in vidcap/features/records.py and are re-exported here.

How a per-file run goes:
- The options of a run are one ExtractOptions (vidcap/features/options.py, which both this module and the shard
  import).
- Each process (vidcap/features/shard.py) has DataLoader workers decode and resize the videos while it runs the
  networks, `batch_size` steps per forward pass across video boundaries.
- Every video is one `features/<video_id>.npz`, written through vidcap.atomic, so a SIGKILL at any moment leaves
  only complete files (and a stale temp file that the next run deletes). A failure is one small file
  `failed/<video_id>.txt`; `manifest.csv` is rebuilt from `features/` and `failed/` at the end of each run. No file
  is ever appended to by two processes.
- Resume: a video whose .npz exists and matches its recorded SHA-256 (vidcap.features.integrity) is skipped; one
  whose file no longer matches (bit rot, a truncated copy) is extracted again. Failed videos are tried again on
  the next run.
- Scale-out: the videos still to extract form one list, in videos.csv order; of N processes, rank r takes those at
  positions p with p % N == r, so no video is extracted twice. `devices > 1` starts N processes on this machine
  (one per GPU, or CPU processes) with torch.multiprocessing.spawn; the parent lists the videos, waits for all of
  them and writes the manifest. Under a launcher (`torchrun`, any --nnodes, or SLURM's `srun`; vidcap/launcher.py)
  the processes it started are the N, over any number of machines sharing the output folder: rank 0 writes (or
  checks) meta.json and lists the videos, every other process checks that its settings give the same meta.json and
  that its videos.csv has those videos, all of them stop with the first error before any work, and after a barrier
  rank 0 writes the manifest. manifest.csv's `writer` column names the process ("host:rank") that wrote each video.
  A process or node that dies leaves complete files only; a rerun, with any number of processes, lists what is
  left and completes the store.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from vidcap import launcher
from vidcap.errors import UsageError, VidcapError, WorkerError, disk_error
from vidcap.features import integrity
from vidcap.features import store as fs
from vidcap.features.extractors import Extractor
from vidcap.features.options import (
    WORKER_TIMEOUT,
    ExtractOptions,
    default_decoder_threads,
    default_num_workers,
    default_threads,
)
from vidcap.features.ray_engine import run_ray_extract
from vidcap.features.records import ExtractSummary, Failure, library_versions, make_meta, read_video_table
from vidcap.features.shard import Shard, run_shard, spawned_shard
from vidcap.features.sharded_extract import check_engine_options, run_sharded_extract
from vidcap.precision import compute_record

logger = logging.getLogger(__name__)

# Under a launcher, how long the processes that finished their share wait at the barrier for the slowest one (it may
# have hours of videos left). A process that dies is noticed at once (its connection closes).
BARRIER_TIMEOUT = timedelta(days=7)


# --------------------------------------------------------------------------------------------------------------------
# The public entry point


def run_extract(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: ExtractOptions,
    *,
    progress: bool = True,
    on_failure: Callable[[str, str, str], None] | None = None,
) -> ExtractSummary:
    """Extract features for the videos in DIR/videos.csv into the store `out_dir` (see the module docstring).

    on_failure(video_id, path, reason) is called for each video that cannot be decoded (in the process that met it).
    Under a launcher every process calls it (module docstring) and gets the same summary. Raises UsageError for bad
    settings (on every process, before any work, when one of them has them).
    """
    if options.store == "shards" or options.engine != "local" or options.ray_address is not None:
        check_engine_options(options)
        engine = run_ray_extract if options.engine == "ray" else run_sharded_extract
        return engine(data_dir, out_dir, options, progress=progress, on_failure=on_failure)
    started = time.perf_counter()
    store = Path(out_dir)
    process = launcher.join("gloo")  # gloo, on GPUs too: only a few Python objects are exchanged
    lead = process is None or process.rank == 0

    def setup() -> tuple[ExtractOptions, list[tuple[str, str]], dict[str, Extractor], dict[str, Any]]:
        checked = options if process is None else replace(
            options, devices=launcher.devices_per_node(process, options.devices))
        checked = checked.checked()
        rows = read_video_table(data_dir, checked.splits)
        # Build here first: bad weights fail before anything is written, and meta.json gets the descriptions.
        extractors = {kind: checked.build(kind) for kind in checked.names}
        meta = make_meta(extractors, checked.num_frames, checked.dtype,
                         compute_record(checked.device, checked.precision))
        if lead:
            fs.prepare_store(store, meta)
        return checked, rows, extractors, meta

    options, rows, extractors, meta = launcher.agree(process, setup)
    if lead:
        fs.clean_temp_files(store)
    pending, corrupt = _pending(store, rows) if lead else (None, 0)
    pending = launcher.from_rank_zero(process, pending)
    paths = dict(rows)
    if process is not None:
        launcher.agree(process, lambda: lead or _check_same_run(store, meta, data_dir, paths, pending))
        if process.local_rank == 0 and not lead:
            fs.clean_temp_files(store)  # this host's, which only a process here can tell from a live writer's
    skipped = len(rows) - len(pending)
    if skipped and lead:
        logger.info("%s: %d of %d videos already extracted; skipping them", store, skipped, len(rows))
    # Spawned processes rebuild the extractors from the resolved weights (a file path made absolute).
    weights = {f"{kind}_weights": ext.weights for kind, ext in extractors.items()}
    shard = Shard(store, [(vid, paths[vid]) for vid in pending], replace(options, **weights), progress, on_failure)
    if process is not None:
        if pending:
            _disk_checked(store, pending, lambda: run_shard(replace(
                shard, extractors=extractors, rank=process.rank, world_size=process.world_size,
                local_rank=process.local_rank)))
        try:
            torch.distributed.monitored_barrier(timeout=BARRIER_TIMEOUT)
        except RuntimeError as error:  # torch.distributed.DistError: a process that died (its node, a kill)
            raise VidcapError(f"{store}: another process stopped before finishing its share "
                              f"({' '.join(str(error).split())[:200]}); the files written are complete: rerun to "
                              "extract the rest") from None
    elif pending:
        try:
            if options.devices == 1:
                _disk_checked(store, pending, lambda: run_shard(replace(shard, extractors=extractors)))
            else:
                del extractors  # each process builds its own, on its own device
                torch.multiprocessing.spawn(spawned_shard, args=(run_shard, replace(shard, world_size=options.devices)),
                                            nprocs=options.devices, join=True)
        except (WorkerError, torch.multiprocessing.ProcessExitedException) as error:
            fs.write_manifest(store)  # the stopped video is listed as failed, with its reason
            if isinstance(error, WorkerError):
                raise
            raise WorkerError(f"{store}: extraction process {error.error_index} stopped with exit code "
                              f"{error.exit_code} (its line is above); the videos finished are kept: rerun to "
                              "resume") from None
    summary = replace(_disk_checked(store, pending, lambda: _summarise(store, rows, pending, started)),
                      corrupt=corrupt) if lead else None
    summary = launcher.from_rank_zero(process, summary)
    return summary if process is None else replace(summary, rank=process.rank)


def _disk_checked(store: Path, pending: list[str], work: Callable[[], Any]) -> Any:
    """work(), with a full disk or a read-only store as one DiskError (exit code 1 when some videos were written:
    they are complete; a rerun once there is room extracts the rest)."""
    try:
        return work()
    except OSError as error:
        written = sum(1 for vid in pending if fs.feature_path(store, vid).exists())
        disk = disk_error(error, done=written > 0,
                          hint=f"{written} of {len(pending)} videos were written by this run and are complete")
        if disk is None:
            raise
        raise disk from None


def _pending(store: Path, rows: list[tuple[str, str]]) -> tuple[list[str], int]:
    """(the videos to extract, in table order; how many of them had a corrupt file): those without a feature file,
    and those whose file fails its recorded checksum, which is deleted (a video whose extraction then fails is
    listed as failed, not left with a corrupt file)."""
    existing = [vid for vid, _ in rows if fs.feature_path(store, vid).exists()]
    corrupt = integrity.failing_files(store, existing, fs.read_meta(store))
    for vid, reason in corrupt.items():
        logger.warning("%s: %s; extracting it again", fs.feature_path(store, vid), reason)
        fs.feature_path(store, vid).unlink(missing_ok=True)
    have = set(existing) - set(corrupt)
    return [vid for vid, _ in rows if vid not in have], len(corrupt)


def _check_same_run(store: Path, meta: dict[str, Any], data_dir: str | os.PathLike, paths: dict[str, str],
                    pending: list[str]) -> None:
    """What every process but rank 0 checks before any work: it sees the store rank 0 prepared, its settings make
    the same meta.json, and its videos.csv lists the videos rank 0 listed (paths may differ: mounts can)."""
    if not (store / "meta.json").is_file():
        raise UsageError(f"{store}: no meta.json here, though rank 0 wrote one: every node must see --out on a "
                         "shared file system")
    fs.check_meta(store, meta)
    missing = [vid for vid in pending if vid not in paths]
    if missing:
        raise UsageError(f"{Path(data_dir) / 'videos.csv'}: lacks {len(missing)} of the videos rank 0 lists (e.g. "
                         f"{missing[0]}); every node must read the same videos.csv")


def _summarise(store: Path, rows: list[tuple[str, str]], pending: list[str], started: float) -> ExtractSummary:
    """Rebuild manifest.csv once every process is done, and say what the run did."""
    fs.write_manifest(store)
    failures = fs.read_failures(store)
    failed = [
        Failure(vid, path, failures[vid][0])
        for vid, path in rows
        if vid in failures and not fs.feature_path(store, vid).exists()
    ]
    extracted = sum(1 for vid in pending if fs.feature_path(store, vid).exists())
    skipped = len(rows) - len(pending)
    return ExtractSummary(store, len(rows), skipped, extracted, failed, time.perf_counter() - started)


__all__ = [
    "ExtractOptions",
    "ExtractSummary",
    "Failure",
    "WORKER_TIMEOUT",
    "default_decoder_threads",
    "default_num_workers",
    "default_threads",
    "library_versions",
    "make_meta",
    "read_video_table",
    "run_extract",
]
