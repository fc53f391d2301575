"""Shared test helpers. Tests make their own tiny videos with PyAV; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


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


@pytest.fixture
def tiny_video(tmp_path: Path) -> Path:
    """A 16-frame 64x64 H.264 mp4 whose frame i has grey level 8 * i."""
    return write_video(tmp_path / "tiny.mp4", numbered_frames(16), codec="libx264", options={"crf": "0"})


@pytest.fixture
def one_thread():
    """torch on one thread: tiny models run faster so, and on a busy shared CPU, OpenMP threads waiting for each
    other cost far more than they give. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
