"""The synthetic dataset's content: objects, actions, the caption grammar, the temporal layout and the per-video specs.

Everything here is decided by the seed alone, without drawing a pixel (`render.py` draws, `__init__.py` writes files).
The temporal design is explained in the package docstring (vidcap/datasets/synthetic/__init__.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import NamedTuple

import numpy as np

from vidcap.errors import UsageError
from vidcap.video.reader import sample_frame_indices

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
OBJECT_PX = (24, 32)  # side / diameter, inclusive
_APPEAR_JITTER_PX = 6  # an appearing object sits near the centre, within this offset
_CROSS_JITTER_PX = 16  # a moving object's path is off-centre by up to this, across the motion
MARGIN_PX = 4


class Event(NamedTuple):
    """One event of a video: colour, shape (canonical names) and action (`appears|left|right|up|down`).

    Fields are None where a parsed caption did not say.
    """

    colour: str | None
    shape: str | None
    action: str | None


EMPTY_EVENT = Event(None, None, None)


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


def scaled(px: int, size: int) -> int:
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
        jitter = scaled(_APPEAR_JITTER_PX if action == "appears" else _CROSS_JITTER_PX, size)
        events.append(EventSpec(
            colour=colours[obj // 3],
            shape=SHAPES[obj % 3],
            action=action,
            size=scaled(int(rng.integers(OBJECT_PX[0], OBJECT_PX[1] + 1)), size),
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


def check_options(num_videos: int, num_frames: int, size: int, sample_frames: int, fps: int,
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
    check_options(num_videos, num_frames, size, sample_frames, 1, captions_per_video)
    counts = _split_counts(num_videos, splits)
    split_of = [name for name, n in zip(SPLITS, counts, strict=True) for _ in range(n)]
    return [_make_spec(i, split_of[i], seed, num_frames, size, sample_frames, captions_per_video)
            for i in range(num_videos)]
