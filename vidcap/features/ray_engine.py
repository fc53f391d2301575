"""`vidcap extract --store shards --engine ray`: the sharded extraction on a Ray cluster (or a local Ray, the default).

The driver (this process) plans the shards as the single-process engine does (vidcap/features/sharded_extract.py)
and hands them, one at a time, to a pool of extractor actors (`--devices` of them: one GPU each with `--device
cuda`, else CPU actors of `--threads` cores). When an actor takes a shard, each of the shard's videos becomes a Ray
task that decodes it on any free CPU of the cluster; the actor runs the shared core (`extract_shard`) on them in plan
order and writes the shard into the store, which every node must see at the same path (a shared file system).
Ray retries a decode task whose worker dies (3 times) and restarts a dead actor (twice, retrying its shard; a shard
is written atomically, so a retried one is whole). A slow node only holds back its own shard, and the rest of the
queue goes to the others.

Ray Core rather than Ray Data's `map_batches`: a shard is the unit of work and of resume, and the core must see a
shard's videos in plan order for every engine to make the same batches (the same features, checked by the tests);
Ray Data re-batches rows across blocks freely.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from vidcap.errors import UsageError
from vidcap.features.options import ExtractOptions
from vidcap.features.records import ExtractSummary, Failure
from vidcap.features.shard import VideoDataset, _Item
from vidcap.features.sharded_extract import (
    PlannedShard,
    check_engine_options,
    extract_shard,
    finish_sharded,
    setup_sharded,
)

logger = logging.getLogger(__name__)

DECODE_RETRIES = 3
ACTOR_RESTARTS = 2


def connect(address: str | None) -> bool:
    """ray.init on `address` ("auto", "HOST:PORT") or, for None, a local Ray with this machine's CPUs; True when this
    call started Ray (the caller shuts it down). An address that cannot be reached is a UsageError (one line)."""
    import ray

    if ray.is_initialized():
        return False
    if address not in (None, "auto"):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--ray-address {address!r}: expected auto or HOST:PORT")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise UsageError(f"--ray-address {address}: no Ray cluster answers there ({exc})") from None
    try:
        ray.init(address=address, num_cpus=None if address else os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"--ray-address {address}: cannot join the Ray cluster ({' '.join(str(exc).split())[:200]})"
                         ) from None
    return True


# For the tests of Ray's retries: "VIDEO_ID=MARKER_FILE" makes the first task that decodes that video end its worker
# process (as a node that dies would), once: the marker file records that it happened.
DIE_ONCE = "VIDCAP_TEST_RAY_DIE_ONCE"


def _die_once(video_id: str) -> None:
    target, _, marker = os.environ.get(DIE_ONCE, "").partition("=")
    if target != video_id or not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(1)


def _decode(item: tuple[str, str], requests, options: ExtractOptions) -> _Item:
    """A Ray task: one video decoded and shrunk exactly as a decoding worker of the local engine does it."""
    import torch

    _die_once(item[0])
    torch.set_num_threads(1)
    return VideoDataset([item], requests, options)[0]


class _ShardActor:
    """A Ray actor holding the extractors; `run` processes one planned shard through the shared core."""

    def __init__(self, store: Path, options: ExtractOptions, index: int):
        import torch

        torch.set_num_threads(options.threads or 1)
        # Ray gives each GPU actor one device, visible as cuda:0.
        self.device = torch.device("cuda:0" if options.device == "cuda" else "cpu")
        self.store, self.options = store, options
        self.extractors = {kind: options.build(kind, self.device) for kind in options.names}
        self.writer = f"{socket.gethostname()}:ray{index}"

    def run(self, shard: PlannedShard, decoded: list) -> tuple[str, int, list[Failure]]:
        import ray

        items = (ray.get(ref) for ref in decoded)  # in plan order, decoded in parallel by the tasks
        written, failures = extract_shard(self.store, shard, items, self.extractors, self.options, self.writer,
                                          self.device)
        return shard.name, written, failures


def run_ray_extract(data_dir: str | os.PathLike, out_dir: str | os.PathLike, options: ExtractOptions, *,
                    progress: bool = True,
                    on_failure: Callable[[str, str, str], None] | None = None) -> ExtractSummary:
    """Extract DIR/videos.csv into the sharded store `out_dir` on Ray (module docstring); same result, meta.json and
    manifest as the single-process engine."""
    import ray
    from ray.util import ActorPool
    from tqdm import tqdm

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun's processes: Ray spreads the work itself
        raise UsageError("--engine ray does not run under torchrun or srun: start it once, on a node of the cluster")
    started = time.perf_counter()
    store = Path(out_dir).resolve()  # the actors may run in another working directory
    check_engine_options(options)
    setup = setup_sharded(data_dir, store, options)
    options, rows, planned, corrupt = setup.options, setup.rows, setup.planned, setup.corrupt
    if not planned:
        return finish_sharded(store, rows, planned, started, setup.corrupt)
    requests = {kind: ext.request for kind, ext in setup.extractors.items()}
    del setup  # each actor builds its own extractors, on its own device
    started_ray = connect(options.ray_address)
    try:
        decode = ray.remote(num_cpus=1, max_retries=DECODE_RETRIES)(_decode)
        actor = ray.remote(num_cpus=options.threads or 1, num_gpus=1 if options.device == "cuda" else 0,
                           max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)(_ShardActor)
        pool = ActorPool([actor.remote(store, options, i) for i in range(options.devices)])
        shared = ray.put(requests), ray.put(options)

        def submit(worker, shard: PlannedShard):
            return worker.run.remote(shard, [decode.remote(item, *shared) for item in shard.items])

        total = sum(len(shard.items) for shard in planned)
        with tqdm(total=total, unit="video", desc="extract [ray]", disable=not progress, dynamic_ncols=True) as bar:
            sizes = {shard.name: len(shard.items) for shard in planned}
            for name, _written, failures in pool.map_unordered(submit, planned):
                for failure in failures:
                    if on_failure is not None:
                        on_failure(failure.video_id, failure.path, failure.reason)
                bar.update(sizes[name])
    finally:
        if started_ray:
            ray.shutdown()
    return finish_sharded(store, rows, planned, started, corrupt)
