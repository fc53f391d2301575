"""Drawing and encoding the synthetic videos: `render_frames(spec)` -> uint8 frames, `write_video` -> an mp4."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from vidcap.atomic import atomic_path
from vidcap.datasets.synthetic.specs import (
    COLOURS,
    MARGIN_PX,
    OBJECT_PX,
    EventSpec,
    VideoSpec,
    scaled,
    slot_layout,
)
from vidcap.video.writer import write_frames


def _background(spec: VideoSpec) -> np.ndarray:
    """(H, W, 3) uint8, the same in every frame: a grey tone plus mild texture that says nothing about the events."""
    size = spec.size
    rng = np.random.default_rng(spec.background_seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) * 2 - 1  # [-1, 1]
    theta = rng.uniform(0, np.pi)
    along = np.cos(theta) * xx + np.sin(theta) * yy
    if spec.background == "plain":
        texture = rng.normal(0.0, 2.0, (size, size, 1))
    elif spec.background == "noise":
        texture = rng.normal(0.0, 7.0, (size, size, 1))
    elif spec.background == "gradient":
        texture = 14.0 * along[..., None]
    else:  # stripes
        period = rng.uniform(0.15, 0.45)  # in units of half the frame
        texture = 8.0 * np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi))[..., None]
    grey = spec.background_level + np.asarray(spec.background_tint, dtype=np.float32)
    return np.clip(np.rint(grey + texture), 0, 255).astype(np.uint8)


@lru_cache(maxsize=64)
def _shape_mask(shape: str, s: int) -> np.ndarray:
    """(s, s) bool, a filled shape centred in an s x s box (cached: do not modify)."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    c = s / 2
    if shape == "circle":
        return (xx - c) ** 2 + (yy - c) ** 2 <= c * c
    if shape == "square":
        # A square covers its whole box; shrink it so its area is close to the circle's.
        m = s * 0.06
        return (xx >= m) & (xx <= s - m) & (yy >= m) & (yy <= s - m)
    # Triangle, apex up: the half-width grows linearly from the apex row to the base row.
    return np.abs(xx - c) <= yy / 2


def _paste(frame: np.ndarray, mask: np.ndarray, colour: np.ndarray, cx: int, cy: int) -> None:
    s = mask.shape[0]
    x0, y0 = cx - s // 2, cy - s // 2
    h, w = frame.shape[:2]
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    sub = mask[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
    frame[fy0:fy1, fx0:fx1][sub] = colour


def _motion_step(size: int, per_slot: int) -> int:
    """Pixels between consecutive sampled frames: the largest object still fits inside the frame along the path."""
    travel = size - scaled(OBJECT_PX[1], size) - 2 * scaled(MARGIN_PX, size)
    return max(1, travel // max(1, per_slot - 1))


def _position(event: EventSpec, u: float, size: int, per_slot: int) -> tuple[int, int]:
    """Object centre (x, y) at position u among the slot's sampled frames.

    A motion is start + step * u along its axis (or start + step * (per_slot - 1 - u) for left/up): integer steps, so
    the j-th sampled frame of a motion and the (per_slot-1-j)-th of the reverse motion are pixel-identical.
    """
    centre = size // 2
    dx, dy = event.offset
    if event.action == "appears":
        return centre + dx, centre + dy
    step = _motion_step(size, per_slot)
    start = centre - (step * (per_slot - 1)) // 2
    t = u if event.action in ("right", "down") else (per_slot - 1) - u
    along = int(round(start + step * t))
    if event.action in ("left", "right"):
        return along, centre + dy
    return centre + dx, along


def render_frames(spec: VideoSpec, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """The frames of a synthetic video as written to its mp4 before compression: uint8 (N, H, W, 3) RGB.

    indices: raw frame indices to render (default all spec.num_frames); e.g. the sampled ones from `slot_layout`.
    """
    layout = slot_layout(spec.num_frames, spec.sample_frames)
    idx = np.arange(spec.num_frames) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= spec.num_frames):
        raise ValueError(f"frame indices must lie in [0, {spec.num_frames}), got {idx.min()}..{idx.max()}")
    background = _background(spec)
    masks = [_shape_mask(e.shape, e.size) for e in spec.events]
    colours = [np.clip(np.asarray(COLOURS[e.colour]) + e.shade, 0, 255).astype(np.uint8) for e in spec.events]
    out = np.empty((len(idx), spec.size, spec.size, 3), dtype=np.uint8)
    for n, f in enumerate(idx):
        out[n] = background
        slot = int(layout.slot[f])
        if slot >= 0:
            cx, cy = _position(spec.events[slot], float(layout.u[f]), spec.size, layout.per_slot)
            _paste(out[n], masks[slot], colours[slot], cx, cy)
    return out


def _encode(path: Path, frames: np.ndarray, fps: int) -> None:
    # Every frame an I-frame at a constant quantiser: a frame's decoded pixels then depend on its content alone.
    # With inter-frame coding (P-frames, CRF) the same picture decodes slightly differently depending on where it
    # sits in the stream (a mean 0.5 grey levels here), which told a model blind to frame order which event came
    # first. ultrafast and one thread: fast at this size, and the bitstream is identical from run to run.
    write_frames(path, frames, fps=fps, options={"preset": "ultrafast", "x264-params": "keyint=1:qp=18"},
                 container_format="mp4", threads=1)


def write_video(spec: VideoSpec, video_dir: Path, fps: int) -> None:
    """Render and encode one video to VIDEO_DIR/<video_id>.mp4 through a temporary name (a worker process's job)."""
    with atomic_path(video_dir / f"{spec.video_id}.mp4", suffix=".mp4") as tmp:
        _encode(tmp, render_frames(spec), fps)
