"""Per-file feature store vs sharded store at web scale, and Ray vs single-process extraction (docs/sharded.md).

    python benchmarks/bench_store.py [--sizes 100000,1000000] [--files-max 100000] [--width 16] [--root /tmp]
                                     [--loader-samples 20000] [--ray-videos 24] [--stages stores,ray]
                                     [--layouts shards,files] [--keep]

stores: for each size N (clips), random float16 features with small widths so that 1M clips fit on this disk
(K = 26 steps, global D = --width, no local; about 1.3 KB a clip: a real store is 100x bigger per clip, which
changes bytes and read throughput, not file counts or setup), from a pool of 64 random clips, each clip encoded
through the store's own writer:
- per-file: vidcap.features.store.save_features (one .npz per clip, atomic: temp name, fsync, rename); only up to
  --files-max clips (two files a clip: at a million clips that is 2 M files and about 40 min on an idle local disk,
  hours on a busy or shared one);
- sharded: vidcap.features.sharded.write_shard, 1000 clips a shard, then shards.json.
Measured for each: build time, files, bytes (on disk: du's blocks), verify (every clip read and checked: per-file
loads each .npz, where `vidcap verify` would also hash it against its checksum file; sharded reads each shard once
and checks each sample's sha256), setup (the store's part of `setup('fit')`: listing features/ for the
per-file store, reading shards.json and making the ShardStream for the sharded one; time and tracemalloc peak), and
loader samples/s from a cold page cache (posix_fadvise DONTNEED on every file first) over --loader-samples clips,
one process: per-file in random order as the shuffled DataLoader reads it (load_features + collate), sharded through
ShardStream (shards shuffled, buffer 1000, batches of 64).
ray: the same --ray-videos synthetic videos extracted into a sharded store by the single-process engine and by
`--engine ray` (local Ray, this machine's CPUs), efficientnet_lite0 random weights at 64 px, K = 8, 1 torch thread;
Ray's time with and without its start-up (measured separately: ray.init + shutdown).
Prints one JSON line per measurement and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidcap.features import sharded  # noqa: E402
from vidcap.features import store as fs  # noqa: E402

K = 26


def _pool(width: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"global": rng.standard_normal((K, width)).astype(np.float16), "mask": np.ones(K, bool),
             "times": np.arange(K, dtype=np.float32)} for _ in range(64)]


def _meta(width: int) -> dict:
    return {"format": fs.FORMAT, "num_frames": K, "dtype": "float16", "global": {"name": "random", "dim": width},
            "local": None}


def _du(path: Path) -> tuple[int, int]:
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True).stdout
    files = int(subprocess.run(f"find {path} -type f | wc -l", shell=True, capture_output=True, text=True).stdout)
    return files, int(out.split()[0])


def _evict(paths) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _timed(step):
    start = time.perf_counter()
    value = step()
    return time.perf_counter() - start, value


def _setup_cost(step) -> tuple[float, float]:
    tracemalloc.start()
    seconds, _ = _timed(step)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2**20


def _captions(ids: list[str]):
    """A SplitCaptions of one caption per clip (what web data has), built without the text pipeline."""
    from vidcap.training.data import SplitCaptions

    n = len(ids)
    return SplitCaptions(video_ids=ids, references=["a clip"] * n, reference_offsets=np.arange(n + 1),
                         token_ids=np.full(2 * n, 4, dtype=np.int32), token_offsets=np.arange(0, 2 * n + 1, 2),
                         caption_offsets=np.arange(n + 1), caption_reference=np.arange(n))


def bench_files(root: Path, n: int, width: int, loader_samples: int) -> dict:
    from vidcap.training.data import collate

    store, pool = root / f"files_{n}", _pool(width)
    fs.prepare_store(store, _meta(width))
    ids = [f"clip{i:08d}" for i in range(n)]
    build, _ = _timed(lambda: [fs.save_features(store, vid, pool[i % 64]) for i, vid in enumerate(ids)])
    files, size = _du(store)
    verify, _ = _timed(lambda: [fs.load_features(store, vid) for vid in ids])
    setup, memory = _setup_cost(lambda: set(fs.list_features(store)))
    sample = random.Random(0).sample(ids, min(loader_samples, n))
    _evict(fs.feature_path(store, vid) for vid in sample)

    def read():
        for start in range(0, len(sample), 64):
            collate([{**fs.load_features(store, vid), "local": None, "video_id": vid, "references": ["a clip"],
                      "tokens": [[4, 2]]} for vid in sample[start : start + 64]])

    loader, _ = _timed(read)
    return {"layout": "files", "clips": n, "build_s": build, "files": files, "bytes": size, "verify_s": verify,
            "setup_s": setup, "setup_mb": memory, "loader_per_s": len(sample) / loader}


def bench_shards(root: Path, n: int, width: int, loader_samples: int) -> dict:
    from vidcap.training.streaming import ShardStream

    store, pool = root / f"shards_{n}", _pool(width)
    sharded.prepare_sharded_store(store, _meta(width))
    size = sharded.SHARD_SIZE

    def build():
        for k, start in enumerate(range(0, n, size)):
            sharded.write_shard(store, sharded.shard_name("train", k),
                                ((f"clip{i:08d}", sharded.encode_sample(pool[i % 64])) for i in
                                 range(start, min(n, start + size))))
        sharded.write_summary(store)

    build_s, _ = _timed(build)
    files, nbytes = _du(store)
    verify, problems = _timed(lambda: sharded.verify(store))
    assert not problems
    ids = [f"clip{i:08d}" for i in range(n)]
    captions = _captions(ids)
    setup, memory = _setup_cost(lambda: ShardStream(store, sharded.read_summary(store), captions, 64))
    stream = ShardStream(store, sharded.read_summary(store), captions, 64, seed=1)
    _evict(sharded.shards_dir(store).iterdir())
    start, seen = time.perf_counter(), 0
    for batch in stream:
        seen += len(batch["video_ids"])
        if seen >= min(loader_samples, n):
            break
    loader = seen / (time.perf_counter() - start)
    return {"layout": "shards", "clips": n, "build_s": build_s, "files": files, "bytes": nbytes, "verify_s": verify,
            "setup_s": setup, "setup_mb": memory, "loader_per_s": loader}


def bench_ray(root: Path, videos: int) -> dict:
    import ray

    from tests.helpers import make_video_dataset
    from vidcap.features.extract import ExtractOptions, run_extract

    data = root / "videos"
    make_video_dataset(data, videos, broken=False)
    options = ExtractOptions(global_name="efficientnet_lite0", global_weights="random", num_frames=8, batch_size=32,
                             image_sizes={"global": 64}, threads=1, num_workers=1, store="shards", shard_size=8)
    single, one = _timed(lambda: run_extract(data, root / "single", options, progress=False))
    start_s, _ = _timed(lambda: (ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False),
                                 ray.shutdown()))
    from dataclasses import replace

    on_ray, two = _timed(lambda: run_extract(data, root / "ray", replace(options, engine="ray"), progress=False))
    same = all(
        [(e.video_id, e.sha256) for e in sharded.read_index(root / "single", name)]
        == [(e.video_id, e.sha256) for e in sharded.read_index(root / "ray", name)]
        for name in sharded.read_summary(root / "single"))
    return {"videos": videos, "single_s": single, "ray_s": on_ray, "ray_start_s": start_s,
            "extracted": [one.extracted, two.extracted], "identical": same}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--files-max", type=int, default=100000)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--loader-samples", type=int, default=20000)
    parser.add_argument("--ray-videos", type=int, default=24)
    parser.add_argument("--stages", default="stores,ray")
    parser.add_argument("--layouts", default="shards,files", help="which stores the stores stage builds")
    parser.add_argument("--root", default=tempfile.gettempdir())
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench_store_", dir=args.root))
    rows, ray_row = [], None
    try:
        if "stores" in args.stages:
            for n in [int(s) for s in args.sizes.split(",")]:
                layouts = [bench for name, bench in (("shards", bench_shards), ("files", bench_files))
                           if name in args.layouts and (name == "shards" or n <= args.files_max)]
                for bench in layouts:
                    row = bench(root, n, args.width, args.loader_samples)
                    row["load_avg_1m"] = round(os.getloadavg()[0], 2)  # the machine's load when the row ended
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    if not args.keep:
                        shutil.rmtree(root / f"{row['layout']}_{n}")
        if "ray" in args.stages:
            ray_row = bench_ray(root, args.ray_videos)
            print(json.dumps(ray_row), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("\n| layout | clips | build s | files | MB | verify s | setup s | setup MB | loader samples/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['layout']} | {r['clips']:,} | {r['build_s']:.1f} | {r['files']:,} | {r['bytes'] / 2**20:.0f} | "
              f"{r['verify_s']:.1f} | {r['setup_s']:.4f} | {r['setup_mb']:.2f} | {r['loader_per_s']:.0f} |")
    if ray_row:
        print(f"\nray vs single process, {ray_row['videos']} videos: single {ray_row['single_s']:.1f} s, ray "
              f"{ray_row['ray_s']:.1f} s (start-up {ray_row['ray_start_s']:.1f} s), identical: {ray_row['identical']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
