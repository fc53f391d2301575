"""The synthetic dataset's ground truth and its scoring: events.csv, captions parsed back to events, the content
metrics and the frame-reversal test."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from vidcap.atomic import atomic_path
from vidcap.datasets.synthetic.specs import COLOURS, EMPTY_EVENT, MOTIONS, SHAPE_WORDS, Event, VideoSpec
from vidcap.errors import UsageError

EVENT_COLUMNS = ("event1_colour", "event1_shape", "event1_action", "event2_colour", "event2_shape", "event2_action")


def write_events(path: Path, specs: Sequence[VideoSpec]) -> None:
    """Write the true events of `specs` to `path` (events.csv) atomically."""
    rows = []
    for spec in specs:
        e1, e2 = spec.events
        rows.append({
            "video_id": spec.video_id, "split": spec.split,
            "event1_colour": e1.colour, "event1_shape": e1.shape, "event1_action": e1.action,
            "event2_colour": e2.colour, "event2_shape": e2.shape, "event2_action": e2.action,
            "background": spec.background, "background_level": spec.background_level,
        })
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)



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
        events.append(EMPTY_EVENT)
    # "B after A" and "before B, A" name the later event first; "after A, B" and "A before B" do not.
    if marker in (("after", False), ("before", True)):
        events.reverse()
    return events[0], events[1]


def _truth(events: Mapping[str, tuple[Event, Event]], video_id: str) -> tuple[Event, Event]:
    try:
        return events[video_id]
    except KeyError as error:
        raise UsageError(f"content metrics: no ground-truth events for video {video_id!r}") from error


# The content metrics, in the order they are printed and stored: score_events' keys, then the reversal test's.
CONTENT_METRIC_KEYS = ("objects_order_acc", "order_given_objects_acc", "colour_acc", "shape_acc", "direction_acc")
REVERSAL_KEY = "reversal_changed"


def score_events(predictions: Mapping[str, str], events: Mapping[str, tuple[Event, Event]]) -> dict[str, float]:
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
        parsed = parse_caption(caption) or (EMPTY_EVENT, EMPTY_EVENT)
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
    values = (objects_order / n, matched_in_order / matched if matched else 0.0, field_hits["colour"] / (2 * n),
              field_hits["shape"] / (2 * n), field_hits["action"] / (2 * n))
    return dict(zip(CONTENT_METRIC_KEYS, values, strict=True))


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
