"""A procedurally generated dataset whose captions depend on *when* things happen.

Every video shows two events in sequence, each in its own time slot: a coloured shape (4 colours x 3 shapes) that
appears (static) or moves left/right/up/down across the frame, on a grey-ish background that carries no information.
The captions ("a red ball appears and then a blue box moves left", "... after ...") come from a small grammar, and
`parse_caption` maps any of them (and best-effort, whatever a model writes) back to the two events in temporal order,
so that `content_metrics` can say whether a model got the objects, their order and the directions right.

Temporal design (issue 7). The model sees K frames sampled with the paper's rule (`vidcap.video.reader.sample_frame_indices`:
the first frame of each of K `np.array_split` chunks). Slot 1 is sampled frames 0..K//2-1, slot 2 the last K//2 (an odd
K leaves the middle sampled frame empty), and every raw frame belongs to the slot of its chunk. So both events cover the
same number of sampled frames, and a motion's position at the j-th sampled frame of its slot is a symmetric function of
j: swapping the two events, or reversing a motion (left <-> right, up <-> down), gives exactly the same *set* of
sampled frames. Order and direction can then only come from the temporal arrangement: a model that pools over time
cannot tell them apart. (Raw frames between sampled frames interpolate the position inside their chunk. With 64 frames
and K=26 the chunks of slot 1 are mostly 3 frames long and those of slot 2 are 2 frames long, so a motion is 1.5x
faster per raw frame in slot 2: only clip-based local features can see that.)

Modules: `specs` (objects, grammar, temporal layout, the per-video specs from the seed), `render` (pixels and the
mp4 files), `events` (events.csv, captions parsed back to events, the content metrics); this one writes the dataset
(`generate`) and implements the dataset protocol of vidcap.datasets (`load`, `content_metrics`).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from vidcap.atomic import write_json
from vidcap.datasets.options import positive_int
from vidcap.datasets.synthetic.events import (
    parse_caption,
    read_events,
    reversal_changed,
    score_events,
    write_events,
)
from vidcap.datasets.synthetic.render import render_frames, write_video
from vidcap.datasets.synthetic.specs import (
    ACTION_PHRASES,
    ACTIONS,
    COLOURS,
    SHAPE_WORDS,
    SHAPES,
    SPLITS,
    TEMPLATES,
    Event,
    EventSpec,
    VideoSpec,
    check_options,
    slot_layout,
    video_specs,
)
from vidcap.errors import UsageError

__all__ = [
    "ACTIONS", "ACTION_PHRASES", "COLOURS", "SHAPES", "SHAPE_WORDS", "TEMPLATES", "Event", "EventSpec", "VideoSpec",
    "content_metrics", "generate", "load", "parse_caption", "read_events", "render_frames", "reversal_changed",
    "score_events", "slot_layout", "video_specs",
]

logger = logging.getLogger(__name__)

NAME = "synthetic"
HELP = "procedurally generated videos with captions (mp4/H.264), for demos and tests"
EXAMPLE = """
  vidcap prepare synthetic --out data/synth --num-videos 120 --seed 0
"""
PAPER_DATASET = None

# Bumped whenever the pixels or captions for a given seed change, so a rerun into an old folder is refused instead of
# silently mixing two generations.
GENERATOR_VERSION = 2  # 2: intra-only constant-QP encoding (1 leaked the time slot through inter-frame coding)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-videos", type=positive_int, default=900, metavar="N", help="number of videos (default 900)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    parser.add_argument("--num-frames", type=positive_int, default=64, metavar="F",
                        help="frames per video (default 64)")
    parser.add_argument("--frame-size", type=positive_int, default=112, metavar="PX",
                        help="frame width and height in pixels, even (default 112)")
    parser.add_argument("--workers", type=positive_int, default=1, metavar="N",
                        help="processes that render and encode videos (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load(out: Path, *, num_videos: int, seed: int, num_frames: int, frame_size: int, workers: int,
         no_progress: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The dataset protocol (vidcap.datasets.catalog): `generate` into `out`."""
    return generate(out, num_videos=num_videos, seed=seed, num_frames=num_frames, size=frame_size, workers=workers,
                    progress=not no_progress)


def content_metrics(data_dir: Path, predictions: Mapping[str, str],
                    reversed_predictions: Mapping[str, str] | None) -> dict[str, float]:
    """The dataset protocol's hook: `reversal_changed` when captions of the reversed frames exist, and the content
    metrics of `score_events` against DIR/events.csv."""
    metrics = {}
    if reversed_predictions is not None:
        metrics["reversal_changed"] = reversal_changed(predictions, reversed_predictions)
    if predictions:
        metrics.update(score_events(predictions, read_events(data_dir)))
    return metrics


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
    check_options(num_videos, num_frames, size, sample_frames, fps, captions_per_video)
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
        write_json(stamp, content)

    todo = [spec for spec in specs if not (video_dir / f"{spec.video_id}.mp4").exists()]
    existing, written = len(specs) - len(todo), 0
    bar = tqdm(total=len(specs), initial=existing, desc="synthetic videos", unit="video", disable=not progress)
    with bar:
        if workers <= 1 or len(todo) < 2:
            for spec in todo:
                write_video(spec, video_dir, fps)
                written += 1
                bar.update()
        else:
            # spawn, not fork: the caller (the demo) may already hold torch's threads, which fork can deadlock.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                jobs = pool.map(write_video, todo, [video_dir] * len(todo), [fps] * len(todo), chunksize=8)
                for _ in jobs:
                    written += 1
                    bar.update()
    logger.info("synthetic: %d videos written, %d already there, in %s", written, existing, video_dir)

    write_events(out_dir / "events.csv", specs)

    captions = pd.DataFrame(
        [(s.video_id, s.split, c) for s in specs for c in s.captions], columns=["video_id", "split", "caption"])
    videos = pd.DataFrame(
        [(s.video_id, s.split, f"videos/{s.video_id}.mp4") for s in specs], columns=["video_id", "split", "path"])
    report = {
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
