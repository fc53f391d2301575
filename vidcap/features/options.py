"""The options of an extraction run (`ExtractOptions`, which `vidcap extract`'s flags fill) and the defaults that depend
on the machine. The engine (vidcap/features/extract.py) and one process's share of it (vidcap/features/shard.py) both
read them; this module imports neither.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from vidcap.errors import UsageError
from vidcap.features.extractors import Extractor, build_extractor, spec_for

DTYPES = ("float16", "float32")
DEVICES = ("cpu", "cuda")  # where the extractors run
STORES = ("files", "shards")  # the store layouts: one .npz per video, or tar shards (vidcap/features/sharded.py)
ENGINES = ("local", "ray")  # who runs the work: this process (or --devices, torchrun, srun), or a Ray cluster
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
    num_workers >= 1). store: "files" or "shards" (STORES); shard_size: videos per shard; engine: "local" or "ray"
    (ENGINES, ray needs store="shards"); ray_address: the Ray cluster ("auto", "HOST:PORT"; None: a local one).
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
    store: str = "files"
    shard_size: int = 1000
    engine: str = "local"
    ray_address: str | None = None

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
            spec = spec_for(name)  # UsageError for an unknown name (timm:<model>: naming the closest)
            if spec.kind != kind:
                raise UsageError(f"{name} is a {spec.kind} extractor, not a {kind} one")
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


__all__ = [
    "DEVICES",
    "DTYPES",
    "ENGINES",
    "STORES",
    "ExtractOptions",
    "WORKER_TIMEOUT",
    "default_decoder_threads",
    "default_num_workers",
    "default_threads",
]
