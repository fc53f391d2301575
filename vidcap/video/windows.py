"""Clip windows: a stretch `[start, end)` seconds of a longer video, named `PATH#t=START,END` wherever vidcap takes a
video path (videos.csv's `path` as read back by vidcap.datasets.read_videos, `vidcap caption --start/--end`).

The `#t=START,END` suffix is the temporal form of the W3C Media Fragments URI syntax (seconds). The reader
(vidcap.video.reader) splits it off, samples its K frames inside the window instead of the whole video, and decodes
from near START (decord's random access; PyAV's keyframe seek for a window far from the start). `parse_time` reads
the times a captions table may hold: seconds (`12.5`) or `[HH:]MM:SS(.fff)` (`00:01:02.500`).
"""

from __future__ import annotations

import math
import os
import re

MARK = "#t="


class PastEnd(ValueError):
    """A window that lies past the end of its video."""

_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)$")
# What follows MARK in a window: two times. Anything else (a file that happens to be named `a#t=b.mp4`) is a plain path.
_TIMES = re.compile(r"^\s*[-+]?[\d.:]+\s*,\s*[-+]?[\d.:]+\s*$")


def parse_time(text: str) -> float:
    """Seconds of `12.5`, `1:02.5` or `00:01:02.500` (negative numbers parse: check_window refuses them). ValueError
    for anything else, NaN or an infinite time."""
    text = str(text).strip()
    clock = _CLOCK.match(text)
    if clock:
        hours, minutes, seconds = clock.groups()
        if int(minutes) >= 60 or float(seconds) >= 60:
            raise ValueError(f"{text!r}: minutes and seconds must be below 60")
        value = int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
    else:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a time (seconds, or HH:MM:SS.fff)") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite time")
    return value


def check_window(start: float, end: float) -> None:
    """ValueError unless 0 <= start < end (both finite)."""
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"window {start:g}-{end:g} s is not finite")
    if start < 0 or end < 0:
        raise ValueError(f"window {start:g}-{end:g} s has a negative time")
    if end <= start:
        raise ValueError(f"window {start:g}-{end:g} s ends before it starts")


def format_time(seconds: float) -> str:
    """Shortest exact-enough text of a time: millisecond precision, no trailing zeros (`12.5`, `3`)."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def window_ref(path: str | os.PathLike, start: float, end: float) -> str:
    """`PATH#t=START,END`: the clip `[start, end)` seconds of `path`. ValueError for a window that is not 0 <= start
    < end."""
    check_window(start, end)
    return f"{os.fspath(path)}{MARK}{format_time(start)},{format_time(end)}"


def split_window(ref: str | os.PathLike) -> tuple[str, tuple[float, float] | None]:
    """(path, (start, end)) of `PATH#t=START,END`; (ref, None) for a path without a window (or whose `#t=` is not
    followed by two numbers: part of a file name). ValueError for times that do not parse or are not 0 <= start < end."""
    text = os.fspath(ref)
    path, sep, times = text.rpartition(MARK)
    if not sep or not path or not _TIMES.match(times):
        return text, None
    first, _, second = times.partition(",")
    start, end = parse_time(first), parse_time(second)
    check_window(start, end)
    return path, (start, end)


def window_id(video_id: str, start: float, end: float) -> str:
    """The id of the clip `[start, end)` of video `video_id`: `ID_START_END` (`pasta_12.5_20`), a valid file name
    when `video_id` is one; distinct windows of one video get distinct ids (to the millisecond)."""
    return f"{video_id}_{format_time(start)}_{format_time(end)}"


def frame_range(start: float, end: float, fps: float, num_frames: int) -> tuple[int, int]:
    """[first, stop) indices of the frames whose time index / fps lies in [start, end), cut at the video's end.
    PastEnd when the window starts at or after the video's end (`num_frames` / `fps` s) or ends more than one frame
    period past it (rounding of the end time is forgiven, a longer overshoot is a wrong window); ValueError when the
    video has no frame rate or no frame time falls inside the window."""
    if fps <= 0:
        raise ValueError("the video has no frame rate, so a time window cannot be placed in it")
    duration = num_frames / fps
    # 1e-6: a time written to the millisecond lands on its frame despite float rounding (0.12 * 25 = 3.0000000000000004)
    first = max(0, math.ceil(start * fps - 1e-6))
    stop = math.ceil(end * fps - 1e-6)
    if first >= num_frames or stop > num_frames + 1:
        raise PastEnd(f"window {format_time(start)}-{format_time(end)} s lies past the video's end "
                         f"({format_time(duration)} s, {num_frames} frames)")
    stop = min(stop, num_frames)
    if stop <= first:
        raise ValueError(f"window {format_time(start)}-{format_time(end)} s holds no frame at {fps:g} fps")
    return first, stop


__all__ = ["MARK", "PastEnd", "check_window", "format_time", "frame_range", "parse_time", "split_window", "window_id",
           "window_ref"]
