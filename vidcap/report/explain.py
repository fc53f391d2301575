"""Attention explanations: which sampled frames each word of a caption came from (Yao et al. 2015, Fig. 4).

One PNG per video: the sampled frames as a strip, under it a words x frames heat map of the attention weights
with its columns aligned to the strip, and the caption as the title. Matplotlib's object API is used with the Agg
canvas (no pyplot), so plotting never switches a global backend and works without a display.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# Thumbnails are shrunk before plotting: a 1080p strip of 26 frames would otherwise cost ~160 MB in matplotlib.
PLOT_FRAME_HEIGHT = 120
COLORMAP = "Blues"  # white = no attention, dark blue = most attention: reads like ink on paper
HIGHLIGHT = "#e8590c"  # orange: the outline of each word's most-attended frame, visible on any blue


def thumbnails(frames: np.ndarray, height: int = PLOT_FRAME_HEIGHT) -> np.ndarray:
    """Resize frames (K, H, W, 3) uint8 to (K, h, w, 3) uint8 with h = min(H, height), keeping the aspect ratio."""
    from PIL import Image

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (K, H, W, 3) uint8, got shape {frames.shape}")
    k, h, w, _ = frames.shape
    if h <= height:
        return frames
    new_w = max(1, round(w * height / h))
    return np.stack([np.asarray(Image.fromarray(f).resize((new_w, height), Image.BILINEAR)) for f in frames])


NO_VIDEO_FILE = "no video file (features only)"


@dataclass(frozen=True)
class VideoThumbnails:
    """What `video_thumbnails` gives: the frames and their times, or none and the reason."""

    frames: np.ndarray | None  # (K, h, w, 3) uint8, the valid sampled frames at most `height` pixels high
    times: np.ndarray | None  # (K,) float64 seconds
    reason: str = ""  # why there are none: NO_VIDEO_FILE, the decoder's error, or a frame count unlike the features'


def video_thumbnails(path: str | os.PathLike | None, num_frames: int, *, height: int = PLOT_FRAME_HEIGHT,
                     expected: int | None = None, purpose: str = "") -> VideoThumbnails:
    """The thumbnails of the K frames vidcap samples from the video at PATH (vidcap.video.reader.read_sampled_frames;
    the padding of a short video dropped) and their times, for the report's cards and the TensorBoard explanation.

    None, with the reason, when there is no file (PATH empty or None), when it cannot be decoded, or when it decodes to
    another number of valid frames than `expected` (the features'; None: any); the last two log one warning line
    naming PATH and `purpose` (e.g. "for v1 in the report"), never an exception.
    """
    from vidcap.errors import VideoError
    from vidcap.video.reader import FrameRequest, read_sampled_frames

    if not path:
        return VideoThumbnails(None, None, NO_VIDEO_FILE)
    try:
        # Shrunk as they are decoded: 26 full-size frames of a long HD video would hold hundreds of MB.
        sampled = read_sampled_frames(path, num_frames, requests={"frames": FrameRequest(
            shrink=functools.partial(thumbnails, height=height))})
    except (VideoError, OSError) as error:
        reason = str(error)
    else:
        valid = int(sampled.mask.sum())
        if expected is None or valid == expected:
            return VideoThumbnails(sampled.frames[sampled.mask], sampled.times[sampled.mask].astype(np.float64))
        reason = f"the video decodes to other frames than its features ({valid} frames, the features have {expected})"
    logger.warning("%s: no pictures %s: %s", path, purpose or "of it", reason)
    return VideoThumbnails(None, None, reason)


def _time_labels(times: np.ndarray) -> list[str]:
    """Seconds as tick labels, with as many decimals as it takes to tell neighbouring frames apart (at most 3)."""
    gaps = np.diff(times)
    gap = float(gaps[gaps > 0].min()) if (gaps > 0).any() else 1.0
    decimals = int(np.clip(np.ceil(-np.log10(gap)), 1, 3))
    labels = []
    for t in times:
        if t >= 60:
            labels.append(f"{int(t // 60)}:{t % 60:0{3 + decimals}.{decimals}f}")
        else:
            labels.append(f"{t:.{decimals}f}s")
    return labels


def render_explanation(
    path: str | Path,
    frames: np.ndarray,
    times: Sequence[float] | np.ndarray,
    words: Sequence[str],
    attention: np.ndarray,
    caption: str,
    *,
    mask: Sequence[bool] | np.ndarray | None = None,
    subtitle: str | None = None,
    taken: Sequence[int] | None = None,
    dpi: int = 100,
) -> Path:
    """Write the explanation PNG of one caption to `path` and return it.

    frames: (K, H, W, 3) uint8, the sampled frames; times: (K,) seconds; words: the L decoded tokens (those the
    attention rows belong to, e.g. the caption's words and "<eos>"); attention: (L, K) float, row l = the attention
    weights used to emit words[l]; mask: (K,) bool, False on padded frames (dropped from the plot: they repeat a
    real frame and get no attention); taken: (L,) with hard attention, the frame (index into `frames`) each word
    took, outlined whatever its weight (soft attention: each word's most-attended frame is outlined when it stands
    out). Empty captions (L = 0) still get the strip.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    frames = np.asarray(frames)
    times = np.asarray(times, dtype=np.float64)
    k = frames.shape[0]
    attention = np.asarray(attention, dtype=np.float64).reshape(len(words), k)
    if times.shape != (k,):
        raise ValueError(f"frames {frames.shape} and times {times.shape} disagree on K")
    keep = np.ones(k, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if not keep.any():
        keep[0] = True  # nothing valid: show the one frame we have rather than an empty figure
    thumbs = thumbnails(frames[keep])
    times, attention = times[keep], attention[:, keep]
    k, th, tw = thumbs.shape[0], thumbs.shape[1], thumbs.shape[2]
    n_words = len(words)

    # Column width shrinks with the number of frames so that 26 frames fit a ~15 inch figure; few frames get
    # bigger thumbnails instead of a tiny picture.
    col_w = float(np.clip(13.0 / k, 0.55, 2.0))
    gap = 0.04  # fraction of a column left blank on each side of a thumbnail
    strip_h = col_w * (1 - 2 * gap) * th / tw  # keeps the frames' aspect ratio
    row_h = 0.32
    heat_h = max(row_h * n_words, 0.8) if n_words else 0.0  # a minimum so that the colour bar stays legible
    left, right, bottom = 1.3, 1.1, 0.55
    top = 0.95 if subtitle else 0.65  # inches: word labels, colour bar, title, time labels
    fig_w = left + col_w * k + right
    fig_h = top + strip_h + 0.08 + heat_h + bottom
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)

    def axes(y0: float, height: float):
        # Absolute placement in inches keeps the strip's columns exactly over the heat map's columns.
        return fig.add_axes((left / fig_w, y0 / fig_h, col_w * k / fig_w, height / fig_h))

    strip = axes(bottom + heat_h + 0.08, strip_h)
    for j in range(k):
        strip.imshow(thumbs[j], extent=(j - 0.5 + gap, j + 0.5 - gap, 0, 1), interpolation="antialiased")
    strip.set_xlim(-0.5, k - 0.5)
    strip.set_ylim(0, 1)
    strip.set_aspect("auto")
    strip.axis("off")

    fig.suptitle(f"\u201c{caption}\u201d" if caption else "(empty caption)", fontsize=15, fontweight="bold",
                 y=1 - 0.2 / fig_h, va="top")
    if subtitle:
        fig.text(0.5, 1 - 0.62 / fig_h, subtitle, ha="center", va="top", fontsize=10, color="0.35")

    if n_words:
        heat = axes(bottom, heat_h)
        vmax = max(float(attention.max()), 1e-6)
        image = heat.imshow(attention, cmap=COLORMAP, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
        heat.set_yticks(range(n_words), labels=list(words), fontsize=12)
        heat.set_xticks(range(k), labels=_time_labels(times), fontsize=8, rotation=90 if k > 14 else 0)
        heat.tick_params(length=0)
        for spine in heat.spines.values():
            spine.set_visible(False)
        # Outline the frame each word attended to most, the answer to "where did this word come from?", where the
        # answer means something: that frame got at least twice its uniform share (a flat row has no such frame).
        if taken is not None:  # hard attention: the one frame each word read
            column = np.cumsum(keep) - 1
            marks = [(row, int(column[frame])) for row, frame in enumerate(taken) if keep[frame]]
        else:
            marks = [(row, col) for row, col in enumerate(attention.argmax(axis=1)) if attention[row, col] >= 2.0 / k]
        for row, col in marks:
            heat.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor=HIGHLIGHT, linewidth=2))
        cax = fig.add_axes(((left + col_w * k + 0.25) / fig_w, bottom / fig_h, 0.15 / fig_w, heat_h / fig_h))
        bar = fig.colorbar(image, cax=cax)
        bar.ax.tick_params(labelsize=8)
        bar.set_label("attention", fontsize=9)
        # Uniform attention (1/K) is the reference level: cells darker than the line got more than their share.
        if k > 1 and 1.0 / k <= vmax:
            bar.ax.axhline(1.0 / k, color=HIGHLIGHT, linewidth=1.5)
            bar.ax.text(-0.3, 1.0 / k, "1/K", transform=bar.ax.get_yaxis_transform(), fontsize=7, ha="right",
                        va="center", color=HIGHLIGHT)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    logger.debug("wrote %s (%d words x %d frames)", path, n_words, k)
    return path
