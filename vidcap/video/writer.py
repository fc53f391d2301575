"""uint8 RGB frames -> a video file, with PyAV: the synthetic dataset, `vidcap doctor`'s self-test, the tests and the
benchmarks all encode through `write_frames`."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np


def write_frames(path: str | os.PathLike, frames: Iterable[np.ndarray], *, fps: int = 25, codec: str = "libx264",
                 pix_fmt: str = "yuv420p", options: Mapping[str, str] | None = None,
                 container_format: str | None = None, threads: int | None = None) -> Path:
    """Encode `frames` (each (H, W, 3) uint8 RGB; the first gives the size; any iterable, so long videos can be
    generated frame by frame) to `path`. The container comes from the suffix unless `container_format` names it;
    `options` are the encoder's (e.g. {"crf": "0"}); `threads` its thread count (None: FFmpeg's default)."""
    import av

    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = first.shape[1]
        stream.height = first.shape[0]
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = dict(options)
        if threads is not None:
            stream.codec_context.thread_count = threads
        for frame in itertools.chain([first], frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)
