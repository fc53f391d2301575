"""Benchmark (a) of issue 3: sampling 26 frames per video with decord vs PyAV on the same generated videos.

    python benchmarks/bench_video.py [--videos 4] [--seconds 10] [--repeats 5] [--long]

Writes MSVD-like clips to a temporary folder (320x240 at 25 fps: H.264 in MP4 with x264's defaults, keyframe
every 250 frames and B-frames; MPEG-4 part 2 "Xvid" in AVI with B-frames, as MSVD ships), then times
`vidcap.video.reader.read_sampled_frames` per backend (the function `vidcap extract` and `vidcap caption` call to sample,
decode and retry truncated files), plus a naive baseline that decodes and converts every frame with
PyAV. `--long` adds one 2-minute 640x360 H.264 clip (keyframe every 2 s) where PyAV seeks instead of decoding
everything. Prints milliseconds per video (best of the rounds, backends interleaved so that other load on the
machine hits them alike) and the ratios. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vidcap.errors import VideoError
from vidcap.video.reader import read_sampled_frames
from vidcap.video.writer import write_frames


def _frames(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """A textured scene panning over time, so that the codecs do real motion-compensated work."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, size=(height, width * 2, 3), dtype=np.uint8)
    texture = ((texture.astype(np.uint16) + np.roll(texture, 1, axis=1)) // 2).astype(np.uint8)  # less noise
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for i in range(n):
        shift = (2 * i) % width
        out[i] = texture[:, shift : shift + width]
        out[i, :, :, 0] = (out[i, :, :, 0].astype(np.uint16) + 3 * i) % 256
    return out


def _write(path: Path, frames: np.ndarray, codec: str, options: dict[str, str], fps: int = 25) -> Path:
    return write_frames(path, frames, fps=fps, codec=codec, options=options)


def _naive_pyav(path: Path, k: int) -> np.ndarray:
    """What a simple script does: decode and convert every frame, then pick K."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    idx = [int(c[0]) for c in np.array_split(np.arange(len(frames)), k)]
    return np.stack([frames[i] for i in idx])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4, help="clips per format (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10 s)")
    parser.add_argument("--frames", type=int, default=26, help="K sampled frames (default 26)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the best time per clip is kept")
    parser.add_argument("--long", action="store_true", help="add a 2-minute 640x360 clip (seeking)")
    args = parser.parse_args(argv)

    n = int(round(args.seconds * 25))
    with tempfile.TemporaryDirectory(prefix="bench_video_") as tmp:
        sets: dict[str, list[Path]] = {"mp4/h264 320x240": [], "avi/mpeg4 320x240": []}
        print(f"writing {args.videos} clips per format ({n} frames each) ...", file=sys.stderr)
        for i in range(args.videos):
            frames = _frames(n, 240, 320, seed=i)
            sets["mp4/h264 320x240"].append(
                _write(Path(tmp, f"clip{i}.mp4"), frames, "libx264", {"preset": "veryfast"})
            )
            sets["avi/mpeg4 320x240"].append(
                _write(Path(tmp, f"clip{i}.avi"), frames, "mpeg4", {"qscale": "4", "bf": "2", "g": "250"})
            )
        if args.long:
            frames = _frames(120 * 25, 360, 640, seed=99)
            sets["mp4/h264 640x360 2 min"] = [
                _write(Path(tmp, "long.mp4"), frames, "libx264", {"preset": "ultrafast", "g": "50"})
            ]
            del frames

        methods = ("decord", "pyav", "auto", "naive")
        print(
            f"\nsampling K={args.frames} frames, ms per video (best of {args.repeats}, methods interleaved)"
        )
        print(
            f"{'videos':26s} {'decord':>8s} {'pyav':>8s} {'auto':>8s} {'naive':>8s}  decord/pyav  naive/pyav"
        )
        for name, paths in sets.items():
            best = {(m, p): float("inf") for m in methods for p in paths}
            for repeat in range(args.repeats + 1):  # the first round warms the page cache and the libraries
                for path in paths:
                    for method in methods:
                        start = time.perf_counter()
                        try:
                            if method == "naive":
                                _naive_pyav(path, args.frames)
                            else:
                                read_sampled_frames(path, args.frames, backend=method)
                        except VideoError as exc:
                            print(f"  {method}: {exc}", file=sys.stderr)
                            best[method, path] = float("nan")
                            continue
                        if repeat > 0:
                            best[method, path] = min(best[method, path], time.perf_counter() - start)
            row = {m: 1000 * sum(best[m, p] for p in paths) / len(paths) for m in methods}
            print(
                f"{name:26s} {row['decord']:8.1f} {row['pyav']:8.1f} {row['auto']:8.1f} {row['naive']:8.1f}"
                f"  {row['decord'] / row['pyav']:10.2f}x  {row['naive'] / row['pyav']:9.2f}x"
            )
        print(
            "\nauto = what vidcap uses: decord for H.264/HEVC/VP8/VP9/AV1 in MP4/MOV/MKV/WebM without open GOPs"
            " and MJPEG, PyAV elsewhere (decord returns wrong frames for MPEG-4 with B-frames, H.264 in AVI,"
            " open-GOP HEVC). naive = decode every frame to RGB with PyAV, then pick K."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
