"""Extraction from tar shards vs the same videos as files, side by side in one run (a script, not a test).

    python benchmarks/bench_shards.py [--videos 16] [--seconds 10] [--per-shard 8] [--repeats 2] [--size 224]

Writes `--videos` synthetic 320x240 H.264 videos (benchmarks/bench_extract.py's generator), packs them into
video2dataset-shaped shards (`<key>.mp4`, `<key>.txt`, `<key>.json`, `--per-shard` samples each), and prepares two
data folders whose videos.csv list the same videos as files and as `SHARD::MEMBER`. Then, alternating the two so that
machine load hits both alike:
  (a) decoding alone: read_sampled_frames of 26 frames per video, files vs members;
  (b) `vidcap extract` end to end (run_extract, EfficientNet-Lite0 with random weights at --size px, one decoding
      worker), into a fresh store each time.
Prints the median videos/s of each and the ratio shards / files (target >= 0.9 for (b)), and the disk one clip takes
in the feature store: the default store (26 x 1280 float16, measured on the store just written) and a 512-d store
(CLIP ViT-B/32's embedding size: one feature file of that shape written through vidcap's store), with each multiplied
to a million clips. Wall-clock numbers on a shared machine are noisy: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_extract import make_videos  # noqa: E402

from vidcap.features import store as fs  # noqa: E402
from vidcap.features.extract import ExtractOptions, run_extract  # noqa: E402
from vidcap.video.reader import read_sampled_frames  # noqa: E402
from vidcap.video.tar_members import member_ref  # noqa: E402


def pack_shards(videos: list[Path], folder: Path, per_shard: int) -> list[str]:
    """video2dataset-shaped shards of `videos`; returns the SHARD::MEMBER of each video, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    refs = []
    for start in range(0, len(videos), per_shard):
        shard = folder / f"{start // per_shard:05d}.tar"
        with tarfile.open(shard, "w") as tar:
            for i, video in enumerate(videos[start : start + per_shard]):
                key = f"{start // per_shard:05d}{i:04d}"
                members = {f"{key}.mp4": video.read_bytes(), f"{key}.txt": b"a moving pattern",
                           f"{key}.json": json.dumps({"key": key, "status": "success"}).encode()}
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                refs.append(member_ref(shard, f"{key}.mp4"))
    return refs


def data_folder(folder: Path, paths: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"v{i:04d},train,{p}\n" for i, p in enumerate(paths))
    (folder / "videos.csv").write_text("video_id,split,path\n" + rows)
    return folder


def time_decode(paths: list[str]) -> float:
    start = time.perf_counter()
    for path in paths:
        read_sampled_frames(path, 26)
    return len(paths) / (time.perf_counter() - start)


def time_extract(data: Path, store: Path, size: int) -> float:
    shutil.rmtree(store, ignore_errors=True)
    options = ExtractOptions(global_name="efficientnet_lite0", global_weights="random", num_workers=1,
                             image_sizes={"global": size})
    summary = run_extract(data, store, options, progress=False)
    assert not summary.failed, summary.failed
    return summary.extracted / summary.seconds


def bytes_per_clip(store: Path) -> float:
    files = list((store / "features").glob("*.npz"))
    return sum(f.stat().st_size for f in files) / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--per-shard", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=224, help="extractor input size (default 224, its own)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "files").mkdir()
        videos = make_videos(root / "files", args.videos, args.seconds)
        refs = pack_shards(videos, root / "shards", args.per_shard)
        files = [str(v) for v in videos]
        data = {"files": data_folder(root / "data-files", files), "shards": data_folder(root / "data-shards", refs)}
        sources = {"files": files, "shards": refs}
        print(f"{args.videos} videos of {args.seconds:g} s (320x240, 25 fps) in {len(set(r.split('::')[0] for r in refs))}"
              f" shards; load average before: {os.getloadavg()[0]:.2f}")
        decode: dict[str, list[float]] = {"files": [], "shards": []}
        extract: dict[str, list[float]] = {"files": [], "shards": []}
        for repeat in range(args.repeats):
            order = ("files", "shards") if repeat % 2 == 0 else ("shards", "files")
            for kind in order:
                decode[kind].append(time_decode(sources[kind]))
            for kind in order:
                extract[kind].append(time_extract(data[kind], root / f"store-{kind}", args.size))
        print(f"{'':<28} {'files':>10} {'shards':>10} {'shards/files':>13}")
        for name, runs in (("(a) decode 26 frames", decode), (f"(b) extract, {args.size} px", extract)):
            f, s = statistics.median(runs["files"]), statistics.median(runs["shards"])
            print(f"{name + ' (videos/s)':<28} {f:>10.2f} {s:>10.2f} {s / f:>12.2f}x")
        print(f"load average after: {os.getloadavg()[0]:.2f}")

        default = bytes_per_clip(root / "store-shards")
        clip_store = root / "store-512"
        (clip_store / "features").mkdir(parents=True)
        fs.save_features(clip_store, "v0000", {"global": np.random.default_rng(0).normal(size=(26, 512)),
                                               "mask": np.ones(26, bool), "times": np.arange(26, dtype=np.float32)})
        clip = bytes_per_clip(clip_store)
        for name, size in (("efficientnet_lite0 (26 x 1280 float16)", default),
                           ("512-d, e.g. CLIP ViT-B/32 (26 x 512 float16)", clip)):
            print(f"feature store, {name}: {size / 1e3:.1f} kB per clip, {size * 1e6 / 1e9:.1f} GB per million clips")


if __name__ == "__main__":
    main()
