"""Clip windows `[start, end)` of a longer video: the reader samples inside them (decord and PyAV), `vidcap prepare
captions` reads them from start/end columns (each window its own video), extraction reads the same window."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import smooth_frames, write_video
from vidcap.cli import main
from vidcap.datasets import read_videos
from vidcap.errors import VideoError
from vidcap.features.store import check_video_id
from vidcap.video.reader import FrameRequest, open_video, read_sampled_frames, sample_frame_indices
from vidcap.video.windows import parse_time, split_window, window_id, window_ref

try:
    import decord  # noqa: F401

    HAVE_DECORD = True
except ImportError:
    HAVE_DECORD = False

BACKENDS = ["pyav", pytest.param("decord", marks=pytest.mark.skipif(not HAVE_DECORD, reason="no decord wheel"))]
FPS = 8
LENGTH = 64  # frames: 8 s at FPS


def indexed_frames(n: int, size: int = 32) -> np.ndarray:
    """(n, size, size, 3) frames whose flat grey level is 4 * index (n <= 64): a decoded frame tells its index."""
    levels = (np.arange(n) * 4).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, size, size, 3)).copy()


def index_of(frames: np.ndarray) -> np.ndarray:
    """The source index of each decoded frame (N, H, W, 3) of an `indexed_frames` video."""
    return np.rint(frames.reshape(len(frames), -1).mean(axis=1) / 4).astype(np.int64)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A folder: long.mp4 (64 indexed frames at 8 fps), a.mp4 and b.mp4 (short)."""
    root = tmp_path_factory.mktemp("windows")
    write_video(root / "long.mp4", indexed_frames(LENGTH), fps=FPS, options={"crf": "0", "g": "8"})
    write_video(root / "a.mp4", smooth_frames(12, 1), fps=FPS)
    write_video(root / "b.mp4", smooth_frames(10, 2), fps=FPS)
    return root


def test_times_refs_and_ids():
    assert parse_time("12.5") == 12.5
    assert parse_time(" 1:02.5 ") == 62.5
    assert parse_time("00:01:02.500") == 62.5
    assert parse_time("1:00:00") == 3600
    assert parse_time("-2") == -2  # parses; a window refuses it
    for bad in ("", "abc", "1:75", "1:2:3:4", "nan", "inf", "1,5"):
        with pytest.raises(ValueError):
            parse_time(bad)
    ref = window_ref("dir/long.mp4", 1.0, 2.25)
    assert ref == "dir/long.mp4#t=1,2.25"
    assert split_window(ref) == ("dir/long.mp4", (1.0, 2.25))
    assert split_window("shard.tar::000000001.mp4#t=0,3") == ("shard.tar::000000001.mp4", (0.0, 3.0))
    assert split_window("dir/long.mp4") == ("dir/long.mp4", None)
    assert split_window("dir/a#t=b.mp4") == ("dir/a#t=b.mp4", None)  # a file name, not a window
    for start, end in ((2, 1), (1, 1), (-1, 2)):
        with pytest.raises(ValueError):
            window_ref("v.mp4", start, end)
    with pytest.raises(ValueError):
        split_window("v.mp4#t=3,2")
    ids = {window_id("cooking__pasta", s, e) for s, e in ((0, 1.5), (1.5, 3), (0, 1.5004), (0.0015, 1.5))}
    assert len(ids) == 3 and "cooking__pasta_0_1.5" in ids  # distinct to the millisecond
    for video_id in ids:
        check_video_id(video_id)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_are_sampled_inside_the_window(videos, backend):
    path = videos / "long.mp4"
    whole = read_sampled_frames(path, 6, backend)
    expected, _ = sample_frame_indices(LENGTH, 6)
    assert whole.backend == backend
    np.testing.assert_array_equal(whole.indices, expected)  # the whole-video path is untouched
    np.testing.assert_array_equal(index_of(whole.frames), expected)

    requests = {"frames": FrameRequest(), "clips": FrameRequest(clip_length=5, clip_stride=4)}
    clip = read_sampled_frames(window_ref(path, 2, 5), 6, backend, requests)  # frames 16 .. 39
    inside, _ = sample_frame_indices(24, 6)
    np.testing.assert_array_equal(clip.indices, 16 + inside)
    np.testing.assert_array_equal(index_of(clip.frames), 16 + inside)  # decoded frames really come from there
    assert ((clip.times >= 2) & (clip.times < 5)).all()
    clip_frames = index_of(clip.inputs["clips"].reshape(-1, 32, 32, 3))
    assert clip_frames.min() >= 16 and clip_frames.max() <= 39 and len(set(clip_frames)) > 6

    # A window that holds fewer frames than K pads, as a short video does.
    short = read_sampled_frames(window_ref(path, 7.5, 8), 6, backend)
    assert short.mask.tolist() == [True] * 4 + [False] * 2
    np.testing.assert_array_equal(index_of(short.frames[:4]), [60, 61, 62, 63])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_window_past_the_end_is_one_video_error(videos, backend):
    ref = window_ref(videos / "long.mp4", 7.5, 12)
    with pytest.raises(VideoError, match=r"lies past the video's end \(8 s, 64 frames\)") as error:
        read_sampled_frames(ref, 4, backend)
    assert str(error.value).startswith(f"{ref}: ")
    with pytest.raises(VideoError, match="ends before it starts"):
        read_sampled_frames(f"{videos / 'long.mp4'}#t=3,2", 4, backend)


def test_pyav_seeks_to_a_window_far_from_the_start(tmp_path):
    path = write_video(tmp_path / "long.mp4", smooth_frames(300, 3), fps=25, options={"g": "10"})
    with open_video(window_ref(path, 10, 11), backend="pyav") as reader:
        first, stop = reader.window_frames()
        assert (first, stop) == (250, 275)
        reader.get_frames(np.arange(first, stop, 3))
        assert reader.frames_decoded <= stop - first + 10  # from the keyframe before frame 250, not from frame 0


def _prepare(videos: Path, tmp_path: Path, rows: str, capsys, *extra: str):
    """`vidcap prepare captions` of the table `rows`: exit code, data folder, what it printed (out, err)."""
    table = tmp_path / "table.csv"
    table.write_text(rows, encoding="utf-8")
    data = tmp_path / "data"
    code = main(["prepare", "captions", "--table", str(table), "--videos", str(videos), "--min-count", "1",
                 "--out", str(data), *extra])
    return code, data, capsys.readouterr()


@pytest.mark.slow  # about 9 s per backend on 2 shared cores: two extraction runs
@pytest.mark.parametrize("backend", BACKENDS)
def test_prepare_with_windows_then_extract_reads_inside_them(videos, tmp_path, capsys, backend):
    rows = ("clip,text,from,to\n"
            "long.mp4,the first clip,0,2\n"
            "long.mp4,the first clip again,00:00:00,00:00:02.000\n"
            "long.mp4,the second clip,2.5,00:06\n"
            "a.mp4,a whole video,,\n"
            "b.mp4,another whole video,,\n"
            "long.mp4,not a time,soon,3\n"
            "long.mp4,half a window,3,\n"
            "long.mp4,negative,-1,2\n"
            "long.mp4,reversed,4,3\n"
            "long.mp4,past the end,6,30\n"
            "long.mp4,between two frames,1.01,1.02\n")
    code, data, out = _prepare(videos, tmp_path, rows, capsys, "--video-column", "clip", "--caption-column", "text",
                               "--start-column", "from", "--end-column", "to", "--split", "0.34,0.33,0.33")
    assert code == 0
    assert ("rows skipped: window unparsable 2, window negative 1, window reversed 1, window without frames 1, "
            "window past end 1") in out.out
    report = json.loads((data / "prepare.json").read_text())
    assert report["skipped_rows"]["window_past_end"] == 1
    table = pd.read_csv(data / "videos.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == ["video_id", "split", "path", "start", "end"]
    windows = {v: (s, e) for v, s, e in zip(table["video_id"], table["start"], table["end"], strict=True)}
    assert windows == {"long_0_2": ("0", "2"), "long_2.5_6": ("2.5", "6"), "a": ("", ""), "b": ("", "")}
    split = dict(zip(table["video_id"], table["split"], strict=True))
    assert split["long_0_2"] == split["long_2.5_6"]  # two clips of one video: one video of the split
    assert len(set(split.values())) == 3
    captions = pd.read_csv(data / "captions.csv", dtype=str, keep_default_na=False)
    assert captions.groupby("video_id").size().to_dict() == {"a": 1, "b": 1, "long_0_2": 2, "long_2.5_6": 1}

    feats = tmp_path / "feats"
    assert main(["extract", "--data", str(data), "--out", str(feats), "--global", "efficientnet_lite0",
                 "--global-weights", "random", "--global-size", "32", "--frames", "4", "--num-workers", "0",
                 "--backend", backend, "--no-progress"]) == 0
    for video_id, (start, end) in windows.items():
        with np.load(feats / "features" / f"{video_id}.npz", allow_pickle=False) as arrays:
            times = arrays["times"]
        if start:
            assert (times >= float(start)).all() and (times < float(end)).all(), (video_id, times)
        else:
            assert times[0] == 0

    # A window past the end of what decodes, written into videos.csv by hand: one skipping line, exit 1.
    # The store keeps the videos it has: only this one is decoded.
    table.loc[len(table)] = ["long_9_10", split["long_0_2"], table.set_index("video_id").loc["long_0_2", "path"], "9", "10"]
    table.to_csv(data / "videos.csv", index=False)
    path = read_videos(data).set_index("video_id").loc["long_9_10", "path"]
    capsys.readouterr()
    assert main(["extract", "--data", str(data), "--out", str(feats), "--global", "efficientnet_lite0",
                 "--global-weights", "random", "--global-size", "32", "--frames", "4", "--num-workers", "0",
                 "--backend", backend, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"skipping {path}: window 9-10 s lies past the video's end (8 s, 64 frames)" in err.splitlines()
    assert "Traceback" not in err
    assert (feats / "failed" / "long_9_10.txt").is_file()


def test_window_columns_go_together_and_tables_without_them_are_unchanged(videos, tmp_path, capsys):
    code, _, printed = _prepare(videos, tmp_path, "video,caption,start\nlong.mp4,a clip,1\n", capsys)
    assert code == 2
    assert "column 'start' found without 'end'" in printed.err
    rows = "video,caption,split\nlong.mp4,one,train\na.mp4,two,val\nb.mp4,three,test\n"
    code, data, _ = _prepare(videos, tmp_path, rows, capsys)
    assert code == 0
    assert (data / "videos.csv").read_text().splitlines()[0] == "video_id,split,path"
    assert set(json.loads((data / "prepare.json").read_text())["skipped_rows"]) == {
        "empty_caption", "unknown_split", "video_not_found", "video_in_two_splits"}


def test_report_pictures_and_training_thumbnails_read_the_window(videos, tmp_path):
    from vidcap.report.explain import video_thumbnails
    from vidcap.training.callbacks import _sampled_frames

    (tmp_path / "videos.csv").write_text(f"video_id,split,path,start,end\nlong_2_5,test,{videos / 'long.mp4'},2,5\n"
                                         f"a,test,{videos / 'a.mp4'},,\n", encoding="utf-8")
    paths = dict(zip(*read_videos(tmp_path)[["video_id", "path"]].to_numpy().T, strict=True))
    assert paths == {"long_2_5": f"{videos / 'long.mp4'}#t=2,5", "a": str(videos / "a.mp4")}
    times = video_thumbnails(paths["long_2_5"], 4).times
    np.testing.assert_allclose(times, (16 + sample_frame_indices(24, 4)[0]) / FPS)
    frames, times = _sampled_frames(tmp_path, "long_2_5", np.ones(4, dtype=bool), 4)
    np.testing.assert_allclose(times, (16 + sample_frame_indices(24, 4)[0]) / FPS)
    whole = video_thumbnails(paths["a"], 4).times
    np.testing.assert_allclose(whole, sample_frame_indices(12, 4)[0] / FPS)
