"""Benchmark: sampling 26 frames from a 5 s window of a 60 s video vs from the whole video, decord and PyAV.

    python benchmarks/bench_windows.py [--seconds 60] [--start 50] [--end 55] [--repeats 3]

Writes one 320x240, 25 fps H.264 video (x264's defaults: a keyframe every 250 frames, B-frames) to a temporary
folder, then times `vidcap.video.reader.read_sampled_frames` on the whole video and on `VIDEO#t=START,END`
(vidcap.video.windows) per backend, one decoding thread, best of the rounds, and counts the frames each decodes
(PyAV counts every frame its decoder outputs; decord counts the frames asked for). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from vidcap.video.reader import open_video, read_sampled_frames
from vidcap.video.windows import window_ref
from vidcap.video.writer import write_frames

FPS = 25


def _frames(n: int, height: int = 240, width: int = 320) -> np.ndarray:
    """A smooth pattern drifting over time: the encoder does real motion-compensated work."""
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for t in range(n):
        base = (np.sin((x + 3 * t) / 9.0) + np.cos((y - 2 * t) / 7.0)) * 60 + 128
        out[t] = np.stack([base, np.roll(base, 5, axis=1), 255 - base], axis=-1).clip(0, 255)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--start", type=float, default=50)
    parser.add_argument("--end", type=float, default=55)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = write_frames(Path(folder) / "long.mp4", _frames(args.seconds * FPS), fps=FPS)
        ref = window_ref(path, args.start, args.end)
        for backend in ("pyav", "decord"):
            for label, video in (("whole video", str(path)), (f"window {args.start:g}-{args.end:g} s", ref)):
                best = float("inf")
                for _ in range(args.repeats):
                    began = time.perf_counter()
                    sampled = read_sampled_frames(video, 26, backend, threads=1)
                    best = min(best, time.perf_counter() - began)
                with open_video(video, backend, threads=1) as reader:
                    reader.get_frames(sampled.indices)
                    decoded = reader.frames_decoded
                print(f"{backend:7s} {label:18s} {best * 1000:8.1f} ms  {decoded:5d} frames decoded  "
                      f"indices {sampled.indices[0]}..{sampled.indices[-1]}")


if __name__ == "__main__":
    main()
