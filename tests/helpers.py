"""What test modules share (never import one test module from another), including what spawned worker processes
must import by module name: tiny videos written with PyAV, and a shrink that stalls a decoding worker."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidcap.features.extractors.base import ResizeCrop


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: int = 25,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
) -> Path:
    """Encode `frames` (N, H, W, 3) uint8 RGB to `path` with PyAV; the container comes from the suffix."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames, dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = dict(options)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def numbered_frames(n: int, height: int = 64, width: int = 64) -> np.ndarray:
    """(n, H, W, 3) uint8 frames whose flat grey level encodes the frame index (level 8 * i, i < 32)."""
    levels = (np.arange(n) * 8 % 256).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()


def moving_square(n: int, color: tuple[int, int, int], direction: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """(n, H, W, 3) frames: a 16x16 square of `color` sliding left-to-right (direction 1) or back (-1)."""
    frames = np.full((n, *size, 3), 30, dtype=np.uint8)
    for i in range(n):
        x = int(round((size[1] - 16) * (i / max(n - 1, 1))))
        x = x if direction > 0 else size[1] - 16 - x
        frames[i, 16:32, x : x + 16] = color
    return frames

# What a StallingResizeCrop does to a video of STALL_SIZE frames: "hang" (sleep until killed) or "kill" (SIGKILL
# itself, as the out-of-memory killer would). Read in the worker, which inherits the test's environment.
STALL_ENV = "VIDCAP_TEST_STALL"
STALL_SIZE = (80, 96)  # (height, width): no other test video has it


@dataclass(frozen=True)
class StallingResizeCrop(ResizeCrop):
    """An extractor's shrink (it runs in the decoding worker right after the frames decode) that hangs or kills its
    worker on the video whose frames are STALL_SIZE, while the environment asks for it; otherwise ResizeCrop."""

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        action = os.environ.get(STALL_ENV)
        if action and tuple(frames.shape[1:3]) == STALL_SIZE:
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            while True:  # "hang": a decoder stuck in a lock looks like this from outside
                time.sleep(60)
        return super().__call__(frames)
