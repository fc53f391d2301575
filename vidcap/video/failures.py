"""What every decoder backend shares: the interface and how a backend says it failed.

Each backend exposes name, num_frames, fps, height, width, frames_decoded, decode(sorted indices) -> uint8
(N, H, W, 3) and close(), and raises DecodeFailed (the reason, without the path) when it cannot open or decode a file.
"""

from __future__ import annotations

import re


class DecodeFailed(Exception):
    """Internal: a backend could not open or decode a file; the message is the reason (no path)."""


def one_line(exc: BaseException) -> str:
    """A decoder's exception as a short reason: FFmpeg's error text, or decord's first line without its source prefix."""
    text = getattr(exc, "strerror", None) or str(exc)  # av.FFmpegError: strerror omits the errno and the path
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = _DECORD_PREFIX.sub("", text)
    return " ".join(text.split()) or type(exc).__name__


# decord prefixes its messages with "[08:54:58] /github/workspace/src/video/video_reader.cc:151: ".
_DECORD_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")
