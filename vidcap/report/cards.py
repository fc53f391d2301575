"""The report's cards from what vidcap computes: an evaluation of a split, or `vidcap caption` results.

    write_evaluation_report(result, data_dir, "runs/eval/report", paper=paper_row("msvd", "global"))
    write_report("captions/report", [caption_card(result) for result in results], title="vidcap caption")

An evaluation's thumbnails are decoded from the video files named in DIR/videos.csv (the K frames the features
were sampled at, vidcap.report.explain.video_thumbnails); a feature-only store gets cards without pictures and a note, and
a video that cannot be read gets the same plus one warning line, never a failed report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vidcap.report.explain import NO_VIDEO_FILE as NO_FILE
from vidcap.report.explain import video_thumbnails
from vidcap.report.page import SPRITE_HEIGHT, Card, frames_to_sprite, per_video_scores, write_report

log = logging.getLogger(__name__)

NO_VIDEO_FILE = f"no pictures: {NO_FILE}"


def _pictures(card: Card, path: str | None, num_frames: int) -> None:
    """Give `card` its thumbnails and their times, or a note saying why it has none."""
    expected = None if card.attention is None else np.shape(card.attention)[-1]
    thumbs = video_thumbnails(path, num_frames, height=SPRITE_HEIGHT, expected=expected,
                              purpose=f"for {card.video_id} in the report")
    if thumbs.frames is None:
        card.note = f"no pictures: {thumbs.reason}"
        return
    card.sprite, card.frame_times = frames_to_sprite(thumbs.frames, SPRITE_HEIGHT), thumbs.times


def evaluation_cards(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    scores: Mapping[str, Mapping[str, float]] | None = None,
    nbest: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    reversed_predictions: Mapping[str, str] | None = None,
    attention: Mapping[str, tuple[Sequence[str], np.ndarray]] | None = None,
    events: Mapping[str, tuple[Any, Any]] | None = None,
    videos: Mapping[str, str] | None = None,
    num_frames: int = 0,
) -> list[Card]:
    """One card per predicted video, in id order.

    nbest: EvaluationResult.nbest ({id: [{"caption", "log_prob", ...}, ...]}). attention: {id: (words, (L, K)
    weights over the video's valid frames)}. events: the synthetic dataset's true events (read_events). videos:
    {id: video file path, "" for none} (DIR/videos.csv); None: no pictures at all. num_frames: K.
    """
    cards = []
    for video_id in sorted(predictions):
        words, weights = (attention or {}).get(video_id, ((), None))
        card = Card(
            video_id=video_id, caption=predictions[video_id], words=list(words), attention=weights,
            references=list(references.get(video_id, ())), scores=dict((scores or {}).get(video_id, {})),
            nbest=[(h["caption"], float(h["log_prob"])) for h in (nbest or {}).get(video_id, ())],
            events=(events or {}).get(video_id),
            reversed_caption=None if reversed_predictions is None else reversed_predictions.get(video_id),
        )
        if videos is not None:
            _pictures(card, videos.get(video_id), num_frames)
        cards.append(card)
    return cards


def write_evaluation_report(result: Any, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                            paper: Mapping[str, float] | None = None) -> Path:
    """OUT_DIR/index.html for a vidcap.evaluation.EvaluationResult of DIR's split: per-video scores (needs Java),
    the attention of each best caption (result.attention), thumbnails from DIR/videos.csv, synthetic events from
    DIR/events.csv; `paper`: the paper's row to compare with."""
    from vidcap.datasets import read_captions, read_videos
    from vidcap.report.table import local_feature_name, model_label

    data_dir = Path(data_dir)
    captions = read_captions(data_dir)
    captions = captions[(captions["split"] == result.split) & captions["video_id"].isin(list(result.predictions))]
    references = {str(v): [str(c) for c in group["caption"]] for v, group in captions.groupby("video_id")}
    events = None
    if (data_dir / "events.csv").is_file():
        from vidcap.datasets.synthetic import read_events

        events = read_events(data_dir)
    videos = {}  # a feature-only data directory: every card says why it has no pictures
    if (data_dir / "videos.csv").is_file():
        table = read_videos(data_dir)
        videos = dict(zip(table["video_id"], table["path"], strict=True))
    cards = evaluation_cards(
        result.predictions, references, scores=per_video_scores(references, result.predictions),
        nbest=result.nbest, reversed_predictions=result.reversed_predictions, attention=result.attention, events=events,
        videos=videos, num_frames=int(result.features.get("num_frames") or 0),
    )
    table = [(model_label(result.model, local_feature_name(result.features)), result.metrics)]
    if paper:
        table.append(("Yao et al. 2015 (paper)", paper))
    info = {"checkpoint": result.checkpoint, "dataset": result.dataset or data_dir.name,
            "split": f"{result.split} ({len(cards)} videos)", "decoding": result.options}
    return write_report(out_dir, cards, title=f"vidcap evaluate: {info['dataset']} {result.split}", table=table,
                        info=info)


def caption_card(result: Any) -> Card:
    """The card of a vidcap.caption.CaptionResult (its thumbnails when captioned `with_frames=True`)."""
    return Card(
        video_id=str(result.path), caption=result.caption, words=list(result.words), attention=result.attention,
        frame_times=result.frame_times, sprite=None if result.frames is None else frames_to_sprite(result.frames),
        nbest=list(result.alternatives), scores={"log_prob": result.score},
    )
