"""A procedurally generated dataset whose captions depend on *when* things happen.

Every video shows two events in sequence, each in its own time slot: a coloured shape (4 colours x 3 shapes) that
appears (static) or moves left/right/up/down across the frame, on a grey-ish background that carries no information.
The captions ("a red ball appears and then a blue box moves left", "... after ...") come from a small grammar, and
`parse_caption` maps any of them (and best-effort, whatever a model writes) back to the two events in temporal order,
so that `content_metrics` can say whether a model got the objects, their order and the directions right.

Temporal design (issue 7). The model sees K frames sampled with the paper's rule (`vidcap.video.sample_frame_indices`:
the first frame of each of K `np.array_split` chunks). Slot 1 is sampled frames 0..K//2-1, slot 2 the last K//2 (an odd
K leaves the middle sampled frame empty), and every raw frame belongs to the slot of its chunk. So both events cover the
same number of sampled frames, and a motion's position at the j-th sampled frame of its slot is a symmetric function of
j: swapping the two events, or reversing a motion (left <-> right, up <-> down), gives exactly the same *set* of
sampled frames. Order and direction can then only come from the temporal arrangement: a model that pools over time
cannot tell them apart. (Raw frames between sampled frames interpolate the position inside their chunk. With 64 frames
and K=26 the chunks of slot 1 are mostly 3 frames long and those of slot 2 are 2 frames long, so a motion is 1.5x
faster per raw frame in slot 2: only clip-based local features can see that.)

Public API: `generate` (writes the videos and events.csv, returns the tables), `video_specs` and `render_frames`
(the same content without files, for tests), `slot_layout`, `parse_caption`, `read_events`, `content_metrics`,
`reversal_changed`.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from vidcap.errors import UsageError
from vidcap.video import sample_frame_indices

logger = logging.getLogger(__name__)

# Bumped whenever the pixels or captions for a given seed change, so a rerun into an old folder is refused instead of
# silently mixing two generations.
GENERATOR_VERSION = 2  # 2: intra-only constant-QP encoding (1 leaked the time slot through inter-frame coding)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (45, 185, 65),
    "blue": (45, 90, 225),
    "yellow": (235, 210, 45),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down")
ACTIONS = ("appears",) + MOTIONS
BACKGROUNDS = ("plain", "noise", "gradient", "stripes")
SPLITS = ("train", "val", "test")

# The caption grammar. Colour words are always exact; shapes and actions have synonyms.
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
}
ACTION_PHRASES: dict[str, tuple[str, ...]] = {
    "appears": ("appears", "shows up", "pops up"),
    "left": ("moves left", "slides to the left", "goes left"),
    "right": ("moves right", "slides to the right", "goes right"),
    "up": ("moves up", "slides up", "goes up"),
    "down": ("moves down", "slides down", "goes down"),
}
# {a} is the first event in time, {b} the second; half of the wordings put them in the other textual order.
TEMPLATES = (
    "{a} and then {b}",
    "first {a}, then {b}",
    "{a} then {b}",
    "{a} and later {b}",
    "{a} before {b}",
    "{b} after {a}",
    "after {a}, {b}",
    "before {b}, {a}",
)

# Sizes below are in pixels of a 112-pixel frame and scale with the frame size.
_REF_SIZE = 112
_OBJECT_PX = (24, 32)  # side / diameter, inclusive
_APPEAR_JITTER_PX = 6  # an appearing object sits near the centre, within this offset
_CROSS_JITTER_PX = 16  # a moving object's path is off-centre by up to this, across the motion
_MARGIN_PX = 4


class Event(NamedTuple):
    """One event of a video: colour, shape (canonical names) and action (`appears|left|right|up|down`).

    Fields are None where a parsed caption did not say.
    """

    colour: str | None
    shape: str | None
    action: str | None


_EMPTY_EVENT = Event(None, None, None)


@dataclass(frozen=True)
class EventSpec:
    """How one event is drawn: the event plus its rendering parameters (pixels of the video's frame size)."""

    colour: str
    shape: str
    action: str
    size: int  # object side / diameter
    offset: tuple[int, int]  # (dx, dy) from the frame centre; a motion uses only the component across its axis
    shade: int  # added to the colour's RGB, so objects of one colour are not all identical

    @property
    def event(self) -> Event:
        return Event(self.colour, self.shape, self.action)


@dataclass(frozen=True)
class VideoSpec:
    """Everything about one synthetic video except its pixels, which `render_frames` draws from it."""

    video_id: str
    split: str
    events: tuple[EventSpec, EventSpec]  # in temporal order
    background: str  # one of BACKGROUNDS
    background_level: int  # grey level
    background_tint: tuple[int, int, int]
    background_seed: int
    captions: tuple[str, ...]
    num_frames: int = 64
    size: int = 112
    sample_frames: int = 26


# ----------------------------------------------------------------------------------------------------------------
# Temporal layout


class SlotLayout(NamedTuple):
    """Which raw frame shows which event.

    slot: (num_frames,) int, 0 or 1 for the event shown, -1 for background only (the middle chunk when K is odd).
    u: (num_frames,) float, position among the slot's sampled frames: exactly j at the slot's j-th sampled frame,
      interpolated in between, at most per_slot - 1.
    sampled: (K,) int64, the sampled frame indices (the paper's rule).
    per_slot: number of sampled frames in each slot (K // 2).
    """

    slot: np.ndarray
    u: np.ndarray
    sampled: np.ndarray
    per_slot: int


def slot_layout(num_frames: int = 64, sample_frames: int = 26) -> SlotLayout:
    """Assign raw frames to the two event slots along the boundaries of the sampled frames' chunks."""
    k = sample_frames
    if k < 2 or num_frames < k:
        raise UsageError(f"synthetic: need 2 <= sample_frames <= num_frames, got {k} and {num_frames}")
    starts, _ = sample_frame_indices(num_frames, k)
    lengths = np.diff(np.append(starts, num_frames))
    frames = np.arange(num_frames)
    chunk = np.searchsorted(starts, frames, side="right") - 1
    half = k // 2
    slot = np.where(chunk < half, 0, np.where(chunk >= k - half, 1, -1))
    j = np.where(slot == 0, chunk, chunk - (k - half))
    u = j + (frames - starts[chunk]) / lengths[chunk]
    u = np.where(slot >= 0, np.minimum(u, half - 1), 0.0)
    return SlotLayout(slot=slot, u=u, sampled=starts, per_slot=half)


# ----------------------------------------------------------------------------------------------------------------
# Specs: events, backgrounds and captions from the seed


def _scaled(px: int, size: int) -> int:
    return max(1, int(round(px * size / _REF_SIZE)))


def _split_counts(num_videos: int, splits: Sequence[float]) -> tuple[int, int, int]:
    if len(splits) != 3 or any(p < 0 for p in splits) or sum(splits) <= 0:
        raise UsageError(f"synthetic: splits must be three non-negative train/val/test fractions, got {tuple(splits)}")
    total = float(sum(splits))
    n_train = int(round(num_videos * splits[0] / total))
    n_val = min(num_videos - n_train, int(round(num_videos * splits[1] / total)))
    return n_train, n_val, num_videos - n_train - n_val


def _make_captions(a: Event, b: Event, rng: np.random.Generator, k: int) -> tuple[str, ...]:
    """Up to k distinct captions: round-robin over the templates in a random order, random synonyms in each."""

    def clauses(event: Event) -> list[str]:
        return [
            f"a {event.colour} {shape} {verb}"
            for shape, verb in product(SHAPE_WORDS[event.shape], ACTION_PHRASES[event.action])
        ]

    per_template = []
    for t in rng.permutation(len(TEMPLATES)):
        options = [TEMPLATES[t].format(a=x, b=y) for x, y in product(clauses(a), clauses(b))]
        per_template.append([options[i] for i in rng.permutation(len(options))])
    out: list[str] = []
    for round_ in range(max(len(o) for o in per_template)):
        for options in per_template:
            if len(out) < k and round_ < len(options):
                out.append(options[round_])
    return tuple(out)


def _make_spec(index: int, split: str, seed: int, num_frames: int, size: int, sample_frames: int,
               captions_per_video: int) -> VideoSpec:
    # One generator per (seed, index): video i is the same whatever num_videos is, so a bigger run reuses the files.
    rng = np.random.default_rng([seed, index])
    first = int(rng.integers(12))
    second = (first + 1 + int(rng.integers(11))) % 12  # a different object, so the caption can say which came first
    colours = list(COLOURS)
    events = []
    for obj in (first, second):
        action = ACTIONS[int(rng.integers(len(ACTIONS)))]
        jitter = _scaled(_APPEAR_JITTER_PX if action == "appears" else _CROSS_JITTER_PX, size)
        events.append(EventSpec(
            colour=colours[obj // 3],
            shape=SHAPES[obj % 3],
            action=action,
            size=_scaled(int(rng.integers(_OBJECT_PX[0], _OBJECT_PX[1] + 1)), size),
            offset=(int(rng.integers(-jitter, jitter + 1)), int(rng.integers(-jitter, jitter + 1))),
            shade=int(rng.integers(-20, 21)),
        ))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    level = int(rng.integers(80, 176))
    tint = tuple(int(t) for t in rng.integers(-8, 9, size=3))
    background_seed = int(rng.integers(2**31))
    caption_rng = np.random.default_rng([seed, index, 1])
    captions = _make_captions(events[0].event, events[1].event, caption_rng, captions_per_video)
    return VideoSpec(
        video_id=f"syn{index:05d}", split=split, events=(events[0], events[1]), background=background,
        background_level=level, background_tint=tint, background_seed=background_seed, captions=captions,
        num_frames=num_frames, size=size, sample_frames=sample_frames,
    )


def _check_options(num_videos: int, num_frames: int, size: int, sample_frames: int, fps: int,
                   captions_per_video: int) -> None:
    if num_videos < 1:
        raise UsageError(f"synthetic: --num-videos must be >= 1, got {num_videos}")
    if size < 16 or size % 2:
        raise UsageError(f"synthetic: the frame size must be even and >= 16 (H.264 yuv420p), got {size}")
    if sample_frames < 2 or num_frames < sample_frames:
        raise UsageError(
            f"synthetic: need 2 <= sample_frames <= num_frames, got sample_frames={sample_frames} num_frames={num_frames}")
    if fps < 1:
        raise UsageError(f"synthetic: fps must be >= 1, got {fps}")
    if captions_per_video < 1:
        raise UsageError(f"synthetic: captions per video must be >= 1, got {captions_per_video}")


def video_specs(num_videos: int = 900, seed: int = 0, num_frames: int = 64, size: int = 112,
                sample_frames: int = 26, splits: Sequence[float] = (0.667, 0.111, 0.222),
                captions_per_video: int = 8) -> list[VideoSpec]:
    """The specs of the videos `generate` writes with the same arguments, without rendering anything.

    Video ids are `syn00000`, `syn00001`, ...; the first ones are train, then val, then test (the events are i.i.d.,
    so contiguous blocks are as good as a shuffle, and video i does not depend on num_videos).
    """
    _check_options(num_videos, num_frames, size, sample_frames, 1, captions_per_video)
    counts = _split_counts(num_videos, splits)
    split_of = [name for name, n in zip(SPLITS, counts, strict=True) for _ in range(n)]
    return [_make_spec(i, split_of[i], seed, num_frames, size, sample_frames, captions_per_video)
            for i in range(num_videos)]


# ----------------------------------------------------------------------------------------------------------------
# Rendering


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
    travel = size - _scaled(_OBJECT_PX[1], size) - 2 * _scaled(_MARGIN_PX, size)
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
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # Every frame an I-frame at a constant quantiser: a frame's decoded pixels then depend on its content alone.
        # With inter-frame coding (P-frames, CRF) the same picture decodes slightly differently depending on where it
        # sits in the stream (a mean 0.5 grey levels here), which told a model blind to frame order which event came
        # first. ultrafast and one thread: fast at this size, and the bitstream is identical from run to run.
        stream.options = {"preset": "ultrafast", "x264-params": "keyint=1:qp=18"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_video(spec: VideoSpec, video_dir: Path, fps: int) -> None:
    """Render and encode one video to VIDEO_DIR/<video_id>.mp4 through a temporary name (a worker process's job)."""
    path = video_dir / f"{spec.video_id}.mp4"
    tmp = video_dir / f".{spec.video_id}.{os.getpid()}.tmp.mp4"
    try:
        _encode(tmp, render_frames(spec), fps)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# The dataset on disk

EVENT_COLUMNS = ("event1_colour", "event1_shape", "event1_action", "event2_colour", "event2_shape", "event2_action")


def _events_frame(specs: Sequence[VideoSpec]) -> pd.DataFrame:
    rows = []
    for spec in specs:
        e1, e2 = spec.events
        rows.append({
            "video_id": spec.video_id, "split": spec.split,
            "event1_colour": e1.colour, "event1_shape": e1.shape, "event1_action": e1.action,
            "event2_colour": e2.colour, "event2_shape": e2.shape, "event2_action": e2.action,
            "background": spec.background, "background_level": spec.background_level,
        })
    return pd.DataFrame(rows)


def generate(out_dir: str | Path, num_videos: int = 900, seed: int = 0, num_frames: int = 64, size: int = 112,
             sample_frames: int = 26, fps: int = 16, splits: Sequence[float] = (0.667, 0.111, 0.222),
             captions_per_video: int = 8, progress: bool = True, workers: int = 1) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Write the synthetic videos to OUT/videos/<video_id>.mp4 and OUT/events.csv; return the tables.

    Returns (captions: DataFrame[video_id, split, caption] with up to `captions_per_video` rows per video,
    videos: DataFrame[video_id, split, path] with paths relative to out_dir, report: dict of counts and options).
    Each video is encoded to a temporary name and renamed; a video whose file exists is skipped, so an interrupted run
    resumes. Reusing a folder generated with other content options (seed, frames, size, K) raises UsageError.
    Deterministic: the same arguments give the same tables and the same pixels, whatever `workers` is.
    workers: processes that render and encode (x264 is the bottleneck; 2 halves the time on 2 cores).
    """
    _check_options(num_videos, num_frames, size, sample_frames, fps, captions_per_video)
    if workers < 1:
        raise UsageError(f"synthetic: workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    video_dir = out_dir / "videos"
    try:
        video_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{video_dir}: cannot create the output folder: {error.strerror}") from error
    specs = video_specs(num_videos, seed, num_frames, size, sample_frames, splits, captions_per_video)
    content = {"generator_version": GENERATOR_VERSION, "seed": seed, "num_frames": num_frames, "size": size,
               "sample_frames": sample_frames, "fps": fps}
    stamp = video_dir / "generator.json"
    if stamp.exists():
        try:
            previous = json.loads(stamp.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UsageError(f"{stamp}: unreadable ({error}); delete {video_dir} or use another output folder") from error
        if previous != content:
            changed = ", ".join(f"{k} {previous.get(k)} -> {v}" for k, v in content.items() if previous.get(k) != v)
            raise UsageError(f"{stamp}: these videos were generated with other options ({changed}); "
                             f"use another output folder or delete {video_dir}")
    else:
        _write_atomic_text(stamp, json.dumps(content, indent=2) + "\n")

    todo = [spec for spec in specs if not (video_dir / f"{spec.video_id}.mp4").exists()]
    existing, written = len(specs) - len(todo), 0
    bar = tqdm(total=len(specs), initial=existing, desc="synthetic videos", unit="video", disable=not progress)
    with bar:
        if workers <= 1 or len(todo) < 2:
            for spec in todo:
                _write_video(spec, video_dir, fps)
                written += 1
                bar.update()
        else:
            # spawn, not fork: the caller (the demo) may already hold torch's threads, which fork can deadlock.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                jobs = pool.map(_write_video, todo, [video_dir] * len(todo), [fps] * len(todo), chunksize=8)
                for _ in jobs:
                    written += 1
                    bar.update()
    logger.info("synthetic: %d videos written, %d already there, in %s", written, existing, video_dir)

    events = _events_frame(specs)
    tmp_events = out_dir / f".events.csv.{os.getpid()}.tmp"
    events.to_csv(tmp_events, index=False)
    os.replace(tmp_events, out_dir / "events.csv")

    captions = pd.DataFrame(
        [(s.video_id, s.split, c) for s in specs for c in s.captions], columns=["video_id", "split", "caption"])
    videos = pd.DataFrame(
        [(s.video_id, s.split, f"videos/{s.video_id}.mp4") for s in specs], columns=["video_id", "split", "path"])
    report = {
        "dataset": "synthetic",
        "options": {"num_videos": num_videos, "seed": seed, "num_frames": num_frames, "size": size,
                    "sample_frames": sample_frames, "fps": fps, "splits": list(splits),
                    "captions_per_video": captions_per_video},
        "kept": {"videos": len(videos), "captions": len(captions),
                 **{f"{name}_videos": int((videos["split"] == name).sum()) for name in SPLITS}},
        "skipped": {},
        "videos_written": written,
        "videos_already_there": existing,
    }
    return captions, videos, report


def read_events(data_dir: str | Path) -> dict[str, tuple[Event, Event]]:
    """The ground truth of a generated dataset: DIR/events.csv -> {video_id: (event 1, event 2)} in temporal order."""
    path = Path(data_dir) / "events.csv"
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError as error:
        raise UsageError(f"{path}: not found (is {data_dir} a synthetic dataset from `prepare synthetic`?)") from error
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"{path}: cannot read: {error}") from error
    if not rows or not {"video_id", *EVENT_COLUMNS} <= set(rows[0]):
        raise UsageError(f"{path}: expected the columns video_id,{','.join(EVENT_COLUMNS)}")
    return {
        row["video_id"]: (
            Event(row["event1_colour"], row["event1_shape"], row["event1_action"]),
            Event(row["event2_colour"], row["event2_shape"], row["event2_action"]),
        )
        for row in rows
    }


# ----------------------------------------------------------------------------------------------------------------
# Parsing captions back to events, and the content metrics

_SHAPE_OF = {word: shape for shape, words in SHAPE_WORDS.items() for word in words}
_APPEAR_WORDS = {"appears", "appear", "appeared", "appearing"}
_UP_PARTICLE_VERBS = {"shows", "show", "pops", "pop"}  # "shows up" / "pops up" mean appears, not a motion up
_BOUNDARIES = {"a", "an", "and", "then", "first", "later", "after", "before"}


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", str(text).lower()).split()


def parse_caption(text: str) -> tuple[Event, Event] | None:
    """Map a caption to (event 1, event 2) in temporal order; None when it mentions no colour, shape or action.

    Exact for every caption of the grammar (including "B after A" and "before B, A"). Best effort for anything else,
    clause by clause: repeated words are ignored, a new clause starts at an article or connective or when a colour or
    shape arrives for a clause that already has one, and fields a clause does not mention are None; captions with
    more than two clauses keep the first two, one clause gives (event, Event(None, None, None)).
    """
    clauses: list[dict] = []
    current: dict = {}
    marker: tuple[str, bool] | None = None  # (after|before, whether it came before any clause)
    absorb_up = False
    previous = None

    def flush() -> None:
        nonlocal current
        if current:
            clauses.append(current)
        current = {}

    for word in _words(text):
        if word == previous:
            continue
        previous = word
        if absorb_up and word == "up":
            absorb_up = False
            continue
        absorb_up = False
        if word in _BOUNDARIES:
            prefix = not clauses and not current
            flush()
            if word in ("after", "before") and marker is None:
                marker = (word, prefix)
        elif word in COLOURS:
            if current:
                flush()
            current["colour"] = word
        elif word in _SHAPE_OF:
            if "shape" in current or "action" in current:
                flush()
            current["shape"] = _SHAPE_OF[word]
        elif word in _APPEAR_WORDS or word in _UP_PARTICLE_VERBS:
            current.setdefault("action", "appears")
            absorb_up = word in _UP_PARTICLE_VERBS
        elif word in MOTIONS:
            current.setdefault("action", word)
    flush()
    if not clauses:
        return None
    events = [Event(c.get("colour"), c.get("shape"), c.get("action")) for c in clauses[:2]]
    if len(events) == 1:
        events.append(_EMPTY_EVENT)
    # "B after A" and "before B, A" name the later event first; "after A, B" and "A before B" do not.
    if marker in (("after", False), ("before", True)):
        events.reverse()
    return events[0], events[1]


def _truth(events: Mapping[str, tuple[Event, Event]], video_id: str) -> tuple[Event, Event]:
    try:
        return events[video_id]
    except KeyError as error:
        raise UsageError(f"content metrics: no ground-truth events for video {video_id!r}") from error


def content_metrics(predictions: Mapping[str, str], events: Mapping[str, tuple[Event, Event]]) -> dict[str, float]:
    """Scores of predicted captions against the true events, over the videos in `predictions` (fractions in 0..1).

    objects_order_acc: both objects (colour and shape) right, in the right order.
    order_given_objects_acc: among predictions naming the true two objects (in either order), the share in the right
      order (0.0 when no prediction names both objects).
    colour_acc / shape_acc / direction_acc: per event slot, the predicted colour / shape / action equals the truth,
      averaged over both slots (direction_acc counts "appears" as an action like the four directions).
    """
    if not predictions:
        raise UsageError("content metrics: no predictions to score")
    n = len(predictions)
    objects_order = matched = matched_in_order = 0
    field_hits = {"colour": 0, "shape": 0, "action": 0}
    for video_id, caption in predictions.items():
        truth = _truth(events, video_id)
        parsed = parse_caption(caption) or (_EMPTY_EVENT, _EMPTY_EVENT)
        for p, t in zip(parsed, truth, strict=True):
            for field in field_hits:
                field_hits[field] += getattr(p, field) is not None and getattr(p, field) == getattr(t, field)
        pred_objects = [(p.colour, p.shape) for p in parsed]
        true_objects = [(t.colour, t.shape) for t in truth]
        in_order = pred_objects == true_objects
        objects_order += in_order
        if None not in (x for obj in pred_objects for x in obj) and sorted(pred_objects) == sorted(true_objects):
            matched += 1
            matched_in_order += in_order
    return {
        "objects_order_acc": objects_order / n,
        "order_given_objects_acc": matched_in_order / matched if matched else 0.0,
        "colour_acc": field_hits["colour"] / (2 * n),
        "shape_acc": field_hits["shape"] / (2 * n),
        "direction_acc": field_hits["action"] / (2 * n),
    }


def reversal_changed(predictions: Mapping[str, str], reversed_predictions: Mapping[str, str]) -> float:
    """Share of the videos in `predictions` whose caption changes when the frames are fed in reverse order.

    Captions are compared as lower-case words without punctuation. A model blind to frame order scores exactly 0.
    """
    if not predictions:
        raise UsageError("reversal test: no predictions to compare")
    missing = [v for v in predictions if v not in reversed_predictions]
    if missing:
        raise UsageError(f"reversal test: no reversed-frame caption for {len(missing)} videos, e.g. {missing[0]!r}")
    changed = sum(_words(predictions[v]) != _words(reversed_predictions[v]) for v in predictions)
    return changed / len(predictions)
