"""The synthetic dataset: temporal layout, frame-set symmetry, files, captions, parser and content metrics."""

from __future__ import annotations

import dataclasses
import re
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vidcap.datasets import synthetic as syn
from vidcap.datasets.synthetic import Event, parse_caption, reversal_changed, score_events
from vidcap.datasets.synthetic.events import write_events
from vidcap.datasets.synthetic.render import _motion_step, write_video
from vidcap.datasets.synthetic.specs import _make_captions
from vidcap.errors import UsageError

# Small settings for file tests: 16 frames of 32x32, K=8 (two slots of 4 sampled frames).
SMALL = {"num_frames": 16, "size": 32, "sample_frames": 8}


def _object_colour(event: syn.EventSpec) -> np.ndarray:
    return np.clip(np.asarray(syn.COLOURS[event.colour]) + event.shade, 0, 255).astype(np.uint8)


def _centroid(frame: np.ndarray, colour: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero(np.all(frame == colour, axis=-1))
    return (xs.mean(), ys.mean()) if len(xs) else None


def _as_multiset(frames: np.ndarray) -> list[bytes]:
    return sorted(frame.tobytes() for frame in frames)


def _decode_pyav(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


# ---------------------------------------------------------------------------------------------------------------
# Temporal layout


def test_slot_layout_for_64_frames_and_26_samples():
    layout = syn.slot_layout(64, 26)
    expected_sampled = list(range(0, 36, 3)) + list(range(36, 64, 2))
    assert layout.sampled.tolist() == expected_sampled
    assert layout.per_slot == 13
    # Slot 1 is the chunks of sampled frames 0..12 (raw 0..37), slot 2 those of sampled frames 13..25 (raw 38..63).
    assert layout.slot.tolist() == [0] * 38 + [1] * 26
    assert layout.slot[layout.sampled].tolist() == [0] * 13 + [1] * 13
    assert layout.u[layout.sampled].tolist() == list(range(13)) * 2
    assert layout.u.max() == 12


@pytest.mark.parametrize(("num_frames", "k"), [(64, 26), (20, 7), (240, 26), (16, 8), (30, 30)])
def test_slot_layout_follows_the_paper_sampling_chunks(num_frames, k):
    from vidcap.video.reader import sample_frame_indices

    layout = syn.slot_layout(num_frames, k)
    chunks = np.array_split(np.arange(num_frames), k)
    assert layout.sampled.tolist() == [int(c[0]) for c in chunks]
    assert layout.sampled.tolist() == sample_frame_indices(num_frames, k)[0].tolist()
    half = k // 2
    for j, chunk in enumerate(chunks):  # every raw frame takes the slot of its chunk
        expected = 0 if j < half else (1 if j >= k - half else -1)
        assert set(layout.slot[chunk].tolist()) == {expected}
    assert (layout.slot[layout.sampled] == 0).sum() == (layout.slot[layout.sampled] == 1).sum() == half
    assert (layout.slot[layout.sampled] == -1).sum() == k % 2  # odd K: the middle sampled frame is empty


def test_slot_layout_rejects_too_few_frames():
    with pytest.raises(UsageError, match="sample_frames"):
        syn.slot_layout(10, 26)


# ---------------------------------------------------------------------------------------------------------------
# Rendering: the sampled frames do not give away order or direction


@pytest.mark.parametrize("options", [{}, {"num_frames": 40, "sample_frames": 11, "size": 64}])
def test_swapping_events_or_reversing_motions_gives_the_same_set_of_sampled_frames(options):
    spec = syn.video_specs(1, seed=3, **options)[0]
    sampled = syn.slot_layout(spec.num_frames, spec.sample_frames).sampled
    first, second = spec.events
    pairs = [("left", "right"), ("up", "down"), ("appears", "appears")]
    checked = 0
    for (a1, a2), (b1, b2) in product(pairs, pairs):
        forward = dataclasses.replace(spec, events=(dataclasses.replace(first, action=a1),
                                                    dataclasses.replace(second, action=b1)))
        variants = [
            dataclasses.replace(spec, events=(forward.events[1], forward.events[0])),  # events swapped
            dataclasses.replace(spec, events=(dataclasses.replace(first, action=a2),  # motions reversed
                                              dataclasses.replace(second, action=b2))),
            dataclasses.replace(spec, events=(dataclasses.replace(second, action=b2),  # both
                                              dataclasses.replace(first, action=a2))),
        ]
        frames = syn.render_frames(forward, sampled)
        for variant in variants:
            other = syn.render_frames(variant, sampled)
            assert _as_multiset(other) == _as_multiset(frames)
            if variant.events != forward.events:  # the same set, in another order
                assert not np.array_equal(other, frames)
            checked += 1
    assert checked == 27


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_swapped_events_decode_to_the_same_set_of_sampled_frames(tmp_path, backend):
    """Through the real encoder and decoder: a picture must decode the same wherever it sits in the stream, or the
    frames themselves tell a model blind to order which event came first (inter-frame coding did)."""
    from vidcap.video.reader import read_sampled_frames

    spec = syn.video_specs(1, seed=5)[0]
    first, second = spec.events
    swapped = dataclasses.replace(spec, video_id="swapped", events=(dataclasses.replace(second, action="left"),
                                                                    dataclasses.replace(first, action="right")))
    forward = dataclasses.replace(spec, events=(dataclasses.replace(first, action="left"),
                                                dataclasses.replace(second, action="right")))
    sampled = []
    for video in (forward, swapped):
        write_video(video, tmp_path, fps=16)
        sampled.append(read_sampled_frames(tmp_path / f"{video.video_id}.mp4", spec.sample_frames, backend).frames)
    assert _as_multiset(sampled[0]) == _as_multiset(sampled[1])
    assert not np.array_equal(sampled[0], sampled[1])


def test_each_object_is_visible_only_in_its_slot_and_moves_the_right_way():
    spec = syn.video_specs(1, seed=0)[0]
    base = spec.events[0]
    layout = syn.slot_layout(spec.num_frames, spec.sample_frames)
    step = _motion_step(spec.size, layout.per_slot)
    assert step == 6  # 112 px, 13 sampled frames per slot: the centre travels 72 px
    # (dx, dy) of the centre per sampled frame in image coordinates (y grows downwards).
    for action, (dx, dy) in {"right": (step, 0), "left": (-step, 0), "down": (0, step), "up": (0, -step),
                             "appears": (0, 0)}.items():
        red = dataclasses.replace(base, colour="red", shape="square", action=action)
        blue = dataclasses.replace(spec.events[1], colour="blue", shape="circle", action="appears")
        frames = syn.render_frames(dataclasses.replace(spec, events=(red, blue)))
        red_c, blue_c = _object_colour(red), _object_colour(blue)
        for f, frame in enumerate(frames):
            shows_red, shows_blue = _centroid(frame, red_c) is not None, _centroid(frame, blue_c) is not None
            assert (shows_red, shows_blue) == ((True, False) if layout.slot[f] == 0 else (False, True)), f
        centres = np.array([_centroid(frames[f], red_c) for f in layout.sampled[:13]])
        assert np.round(np.diff(centres, axis=0), 6).tolist() == [[dx, dy]] * 12, action


def test_render_frames_shapes_and_indices():
    spec = syn.video_specs(1, **SMALL)[0]
    frames = syn.render_frames(spec)
    assert frames.shape == (16, 32, 32, 3) and frames.dtype == np.uint8
    assert np.array_equal(syn.render_frames(spec, [3, 0, 15]), frames[[3, 0, 15]])
    with pytest.raises(ValueError):
        syn.render_frames(spec, [16])


# ---------------------------------------------------------------------------------------------------------------
# Specs and captions


def test_video_specs_splits_events_and_captions():
    specs = syn.video_specs(900)
    assert [s.video_id for s in specs[:2]] == ["syn00000", "syn00001"]
    assert pd.Series([s.split for s in specs]).value_counts().to_dict() == {"train": 600, "val": 100, "test": 200}
    for spec in specs:
        first, second = (e.event for e in spec.events)
        assert (first.colour, first.shape) != (second.colour, second.shape)
        assert len(spec.captions) == len(set(spec.captions)) == 8
        for caption in spec.captions:
            assert re.fullmatch(r"[a-z]+(,? [a-z]+)*", caption), caption
            assert len(caption.split()) <= 16
    # Every object, action and template shows up.
    events = [e.event for s in specs for e in s.events]
    assert {e.colour for e in events} == set(syn.COLOURS)
    assert {e.shape for e in events} == set(syn.SHAPES)
    assert {e.action for e in events} == set(syn.ACTIONS)


def test_video_specs_are_deterministic_and_do_not_depend_on_the_number_of_videos():
    a = syn.video_specs(20, seed=5)
    assert a == syn.video_specs(20, seed=5)
    assert [(s.events, s.captions) for s in syn.video_specs(7, seed=5)] == [(s.events, s.captions) for s in a[:7]]
    assert [s.events for s in syn.video_specs(20, seed=6)] != [s.events for s in a]


def test_fewer_captions_per_video():
    specs = syn.video_specs(5, captions_per_video=3)
    assert all(len(set(s.captions)) == len(s.captions) == 3 for s in specs)


# ---------------------------------------------------------------------------------------------------------------
# Parser


def test_every_generated_reference_parses_back_to_the_true_events():
    specs = syn.video_specs(300, seed=11)
    count = 0
    for spec in specs:
        truth = tuple(e.event for e in spec.events)
        for caption in spec.captions:
            assert parse_caption(caption) == truth, caption
            count += 1
    assert count == 2400


def test_every_wording_of_the_grammar_parses_back():
    a, b = Event("yellow", "triangle", "up"), Event("green", "circle", "appears")
    c, d = Event("red", "square", "left"), Event("blue", "square", "down")
    for first, second in [(a, b), (b, a), (c, d), (d, c), (a, c), (b, d)]:
        captions = _make_captions(first, second, np.random.default_rng(0), 10_000)
        # all templates x shape synonyms x verb synonyms
        n = len(syn.TEMPLATES)
        for event in (first, second):
            n *= len(syn.SHAPE_WORDS[event.shape]) * len(syn.ACTION_PHRASES[event.action])
        assert len(set(captions)) == n
        for caption in captions:
            assert parse_caption(caption) == (first, second), caption


@pytest.mark.parametrize(("caption", "expected"), [
    ("a blue box shows up after a red ball moves up", (("red", "circle", "up"), ("blue", "square", "appears"))),
    ("before a blue box pops up, a red ball goes down", (("red", "circle", "down"), ("blue", "square", "appears"))),
    ("after a red ball slides to the left, a blue box appears",
     (("red", "circle", "left"), ("blue", "square", "appears"))),
    # repeated and missing words, no article, no connective
    ("a a red red ball ball appears and then then a blue box moves left left",
     (("red", "circle", "appears"), ("blue", "square", "left"))),
    ("red ball appears blue box left", (("red", "circle", "appears"), ("blue", "square", "left"))),
    ("a red ball shows up up and then a blue box goes up",
     (("red", "circle", "appears"), ("blue", "square", "up"))),
    # more than two clauses: the first two
    ("a red ball appears then a blue box moves left then a blue box moves left",
     (("red", "circle", "appears"), ("blue", "square", "left"))),
    # partial information
    ("a red thing appears and then a box moves", (("red", None, "appears"), (None, "square", None))),
    ("a yellow triangle moves right", (("yellow", "triangle", "right"), (None, None, None))),
    ("a green ball appears after", ((None, None, None), ("green", "circle", "appears"))),
    ("<unk> <unk> a red", (("red", None, None), (None, None, None))),
    ("", None),
    ("the cat sat on the mat", None),
])
def test_parse_imperfect_captions(caption, expected):
    parsed = parse_caption(caption)
    assert (None if parsed is None else tuple(tuple(e) for e in parsed)) == expected


# ---------------------------------------------------------------------------------------------------------------
# Content metrics


def test_content_metrics_on_hand_made_predictions():
    events = {
        "v1": (Event("red", "circle", "appears"), Event("blue", "square", "left")),
        "v2": (Event("green", "triangle", "up"), Event("green", "circle", "down")),
        "v3": (Event("yellow", "square", "right"), Event("red", "square", "appears")),
        "v4": (Event("blue", "circle", "left"), Event("red", "triangle", "right")),
        "unused": (Event("blue", "circle", "left"), Event("red", "triangle", "right")),
    }
    predictions = {
        # all right (reversed wording)
        "v1": "a blue box moves left after a red ball appears",
        # objects right but in the wrong order; actions wrong in both slots
        "v2": "a green circle moves down and then a green triangle moves up",
        # slot 1 right; slot 2 wrong colour (red -> blue), right shape and action
        "v3": "a yellow square moves right and then a blue square appears",
        # nothing parseable
        "v4": "hello world",
    }
    metrics = score_events(predictions, events)
    assert metrics == {
        "objects_order_acc": 1 / 4,  # v1
        "order_given_objects_acc": 1 / 2,  # v1 and v2 name both true objects; v1 in order
        "colour_acc": 5 / 8,  # v1: 2, v2: 2 (green, green), v3: 1, v4: 0
        "shape_acc": 4 / 8,  # v1: 2, v2: 0, v3: 2, v4: 0
        "direction_acc": 4 / 8,  # v1: 2, v2: 0, v3: 2, v4: 0
    }


def test_score_events_edge_cases():
    events = {"v": (Event("red", "circle", "appears"), Event("blue", "square", "left"))}
    assert score_events({"v": "nothing"}, events)["order_given_objects_acc"] == 0.0
    with pytest.raises(UsageError, match="'w'"):
        score_events({"w": "a red ball appears"}, events)
    with pytest.raises(UsageError):
        score_events({}, events)


def test_the_content_metrics_hook_reads_events_csv_and_compares_reversed_captions(tmp_path):
    """What `vidcap.datasets.content_metrics` calls for a data directory prepared from the synthetic dataset."""
    specs = syn.video_specs(2, seed=1)
    write_events(tmp_path / "events.csv", specs)
    predictions = {s.video_id: s.captions[0] for s in specs}
    perfect = {"objects_order_acc": 1.0, "order_given_objects_acc": 1.0, "colour_acc": 1.0, "shape_acc": 1.0,
               "direction_acc": 1.0}
    assert syn.content_metrics(tmp_path, predictions, None) == perfect
    reversed_ = {**predictions, specs[0].video_id: "something else"}
    assert syn.content_metrics(tmp_path, predictions, reversed_) == {"reversal_changed": 0.5, **perfect}
    assert syn.content_metrics(tmp_path, {}, None) == {}
    with pytest.raises(UsageError, match="events.csv: not found"):
        syn.content_metrics(tmp_path / "elsewhere", predictions, None)


def test_reversal_changed():
    predictions = {"a": "A red ball appears", "b": "a blue box moves left", "c": "x", "d": "y"}
    reversed_ = {"a": "a red ball appears.", "b": "a blue box moves right", "c": "x", "d": "z"}
    assert reversal_changed(predictions, reversed_) == 2 / 4
    assert reversal_changed(predictions, predictions) == 0.0
    with pytest.raises(UsageError, match="'d'"):
        reversal_changed(predictions, {k: v for k, v in reversed_.items() if k != "d"})


# ---------------------------------------------------------------------------------------------------------------
# Files


def test_generate_writes_real_videos_tables_and_events(tmp_path):
    import decord

    captions, videos, report = syn.generate(tmp_path, num_videos=3, seed=2, progress=False)
    specs = syn.video_specs(3, seed=2)
    assert list(captions.columns) == ["video_id", "split", "caption"]
    assert captions["caption"].tolist() == [c for s in specs for c in s.captions]
    assert list(videos.columns) == ["video_id", "split", "path"]
    assert videos["path"].tolist() == ["videos/syn00000.mp4", "videos/syn00001.mp4", "videos/syn00002.mp4"]
    assert videos["split"].tolist() == ["train", "train", "test"]
    assert report["kept"] == {"videos": 3, "captions": 24, "train_videos": 2, "val_videos": 0, "test_videos": 1}
    assert report["videos_written"] == 3 and report["videos_already_there"] == 0
    assert syn.read_events(tmp_path) == {s.video_id: tuple(e.event for e in s.events) for s in specs}
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [
        "generator.json", "syn00000.mp4", "syn00001.mp4", "syn00002.mp4"]
    for spec in specs:
        path = tmp_path / "videos" / f"{spec.video_id}.mp4"
        decoded = _decode_pyav(path)
        assert decoded.shape == (64, 112, 112, 3)
        reader = decord.VideoReader(str(path))
        assert len(reader) == 64 and reader.get_avg_fps() == 16
        assert np.array_equal(reader.get_batch(list(range(64))).asnumpy(), decoded)
        # Lossy, but close to the rendered frames, and each object keeps its colour.
        rendered = syn.render_frames(spec)
        assert np.abs(decoded.astype(int) - rendered).mean() < 4
        layout = syn.slot_layout()
        for slot, event in enumerate(spec.events):
            f = layout.sampled[slot * 13 + 6]
            inside = np.all(rendered[f] == _object_colour(event), axis=-1)
            assert np.abs(np.median(decoded[f][inside], axis=0) - _object_colour(event)).max() < 20


def test_generate_is_deterministic_and_resumable(tmp_path):
    first = syn.generate(tmp_path / "a", num_videos=4, seed=1, progress=False, **SMALL)
    second = syn.generate(tmp_path / "b", num_videos=4, seed=1, progress=False, **SMALL)
    for x, y in zip(first[:2], second[:2], strict=True):
        pd.testing.assert_frame_equal(x, y)
    names = [f"syn{i:05d}.mp4" for i in range(4)]
    for name in names:
        assert (tmp_path / "a/videos" / name).read_bytes() == (tmp_path / "b/videos" / name).read_bytes()
    assert (tmp_path / "a/events.csv").read_bytes() == (tmp_path / "b/events.csv").read_bytes()

    # Resume: only the missing video is written again, the others are left alone.
    video_dir = tmp_path / "a/videos"
    kept = {n: (video_dir / n).stat().st_mtime_ns for n in names[1:]}
    (video_dir / names[0]).unlink()
    _, _, report = syn.generate(tmp_path / "a", num_videos=4, seed=1, progress=False, **SMALL)
    assert (report["videos_written"], report["videos_already_there"]) == (1, 3)
    assert {n: (video_dir / n).stat().st_mtime_ns for n in names[1:]} == kept
    assert (video_dir / names[0]).read_bytes() == (tmp_path / "b/videos" / names[0]).read_bytes()
    assert not [p for p in video_dir.iterdir() if p.name.startswith(".")]

    # More videos into the same folder reuses the first ones; other content options are refused.
    _, videos, report = syn.generate(tmp_path / "a", num_videos=6, seed=1, progress=False, **SMALL)
    assert (report["videos_written"], report["videos_already_there"]) == (2, 4)
    with pytest.raises(UsageError, match=r"generator\.json.*seed 1 -> 2"):
        syn.generate(tmp_path / "a", num_videos=4, seed=2, progress=False, **SMALL)


@pytest.mark.ddp
def test_generate_with_worker_processes_writes_the_same_files(tmp_path):
    syn.generate(tmp_path / "one", num_videos=4, seed=4, progress=False, **SMALL)
    syn.generate(tmp_path / "two", num_videos=4, seed=4, progress=False, workers=2, **SMALL)
    for i in range(4):
        name = f"videos/syn{i:05d}.mp4"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


@pytest.mark.parametrize(("options", "message"), [
    ({"size": 33}, "even"),
    ({"num_frames": 10, "sample_frames": 26}, "sample_frames"),
    ({"num_videos": 0}, "num-videos"),
    ({"splits": (0.5, 0.5)}, "splits"),
    ({"workers": 0}, "workers"),
])
def test_generate_rejects_bad_options(tmp_path, options, message):
    with pytest.raises(UsageError, match=message):
        syn.generate(tmp_path, progress=False, **{"num_videos": 2, **options})
    assert not (tmp_path / "videos").exists() or not any((tmp_path / "videos").glob("*.mp4"))


def test_read_events_errors(tmp_path):
    with pytest.raises(UsageError, match="events.csv: not found"):
        syn.read_events(tmp_path)
    (tmp_path / "events.csv").write_text("video_id,colour\nv,red\n")
    with pytest.raises(UsageError, match="expected the columns"):
        syn.read_events(tmp_path)
