"""MSR-VTT and VATEX loaders on generated files in the official formats, full size (tests/fixtures_captions.py)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.fixtures_captions import (
    VATEX_SIZES,
    caption,
    msrvtt_json,
    msrvtt_release,
    vatex_clip,
    vatex_entries,
    vatex_release,
    write_json,
)
from tests.helpers import write_video
from vidcap.cli import main
from vidcap.datasets import msrvtt, read_captions, read_videos, registry, vatex
from vidcap.errors import UsageError

# a few clips per split have a video (the first and last of each split); all others are missing
MSRVTT_WITH_VIDEO = {"train": ["video0", "video6512"], "val": ["video6513", "video7009"],
                     "test": ["video7010", "video9999"]}


def _load(module, annotations, videos) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    return module.load(Path("unused"), annotations=[str(p) for p in annotations], videos=[str(v) for v in videos])


def _videos(folder: Path, clips) -> Path:
    """Tiny real videos (4 frames of 32x32 H.264) for `clips`."""
    frames = np.full((4, 32, 32, 3), 128, dtype=np.uint8)
    for clip in clips:
        write_video(folder / f"{clip}.mp4", frames)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _msrvtt_sentences(video_id: str, per_video: int = 20) -> list[str]:
    """The generated sentences of a video, in file order (fixtures_captions.msrvtt_json's layout)."""
    index = int(video_id[5:])
    first, count, offset = (0, 7010, index) if index < 7010 else (20 * 7010, 2990, index - 7010)
    return [caption(first + offset + count * k) for k in range(per_video)]


# -- MSR-VTT ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["two files, two folders", "merged file, one folder"])
def test_msrvtt_full_size_gives_the_official_split(tmp_path, caplog, layout):
    annotations = msrvtt_release(tmp_path, merged=layout == "merged file, one folder")
    if layout == "two files, two folders":
        folders = [_videos(tmp_path / "TrainValVideo", MSRVTT_WITH_VIDEO["train"] + MSRVTT_WITH_VIDEO["val"]),
                   _videos(tmp_path / "TestVideo", MSRVTT_WITH_VIDEO["test"])]
    else:
        folders = [_videos(tmp_path / "all", sum(MSRVTT_WITH_VIDEO.values(), []))]

    with caplog.at_level(logging.WARNING):
        captions, videos, report = _load(msrvtt, annotations, folders)

    assert caplog.text == ""  # official sizes, nothing skipped
    assert report["clips_in_annotations"] == {"train": 6513, "val": 497, "test": 2990}
    assert report["captions_in_annotations"] == {"train": 130260, "val": 9940, "test": 59800}
    assert report["missing_videos"] == {"train": 6511, "val": 495, "test": 2988}
    assert set(report["skipped"].values()) == {0}
    # clips by split then byte order; each clip's 20 sentences in file order, though spread over the file
    assert videos["video_id"].tolist() == ["video0", "video6512", "video6513", "video7009", "video7010", "video9999"]
    assert videos["split"].tolist() == ["train", "train", "val", "val", "test", "test"]
    assert all(Path(p).is_file() and Path(p).stem == v for v, p in zip(videos["video_id"], videos["path"], strict=True))
    assert list(captions.columns) == ["video_id", "split", "caption"]
    assert captions["video_id"].tolist() == [v for v in videos["video_id"] for _ in range(20)]
    assert captions["caption"].tolist() == sum((_msrvtt_sentences(v) for v in videos["video_id"]), [])
    assert captions["split"].tolist() == [s for s in videos["split"] for _ in range(20)]
    json.dumps(report)


def test_msrvtt_other_sizes_are_a_warning_and_a_file_may_name_videos_of_another(tmp_path, caplog):
    videos = [("video1", "train"), ("video2", "validate"), ("video3", "test")]
    first = write_json(tmp_path / "a.json", msrvtt_json(videos[:2], per_video=2))
    second = msrvtt_json(videos[2:], per_video=2, first_sen_id=4)
    second["sentences"].append({"caption": "A late sentence about video1.", "video_id": "video1", "sen_id": 99})
    second = write_json(tmp_path / "b.json", second)
    folder = _videos(tmp_path / "videos", ["video1", "video2", "video3"])
    with caplog.at_level(logging.WARNING):
        captions, _, report = _load(msrvtt, [first, second], [folder])
    assert "msrvtt: the annotations hold 1/1/1 clips and 3/2/2 captions (train/val/test), not the official " \
           "6513/497/2990 and 130260/9940/59800" in caplog.text
    assert captions.loc[captions["video_id"] == "video1", "caption"].tolist()[-1] == "A late sentence about video1."
    assert captions["split"].value_counts().to_dict() == {"train": 3, "val": 2, "test": 2}


def test_msrvtt_bad_entries_are_counted_by_reason_in_one_line(tmp_path, caplog):
    data = msrvtt_json([("video1", "train"), ("video2", "validate"), ("video3", "test")], per_video=2)
    data["videos"] += [
        {"video_id": "video3", "split": "train"},  # conflicting split: video3 stays in train
        {"video_id": "video2", "split": "validate"},  # duplicate, same split
        {"video_id": "../video4", "split": "train"},  # not a usable file stem
        {"split": "train"},
        "video5",
        {"video_id": "video6", "split": "dev"},
    ]
    data["sentences"] += [
        {"caption": "About a video nobody lists.", "video_id": "video404", "sen_id": 100},
        {"caption": "  \n ", "video_id": "video1", "sen_id": 101},
        {"caption": None, "video_id": "video1", "sen_id": 102},
        ["not", "an", "object"],
        dict(data["sentences"][0]),  # the very same sentence again
        {**data["sentences"][0], "sen_id": 103},  # the same words, another annotator: kept
    ]
    annotations = write_json(tmp_path / "videodatainfo_2017.json", data)
    broken = tmp_path / "test_videodatainfo.json"
    broken.write_text('{"videos": [{"video_id": "video7", "split": "te')  # a truncated download
    folder = _videos(tmp_path / "videos", ["video1", "video2", "video3"])

    with caplog.at_level(logging.WARNING):
        captions, videos, report = _load(msrvtt, [annotations, broken], [folder])

    assert report["skipped"] == {
        "malformed_json_file": 1, "malformed_video": 3, "unknown_split": 1, "video_in_two_splits": 1,
        "duplicate_video": 1, "malformed_sentence": 2, "unknown_video": 1, "empty_caption": 1,
        "duplicate_sentence": 1,
    }
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("msrvtt: skipped")]
    assert summary == ["msrvtt: skipped malformed json file 1, malformed video 3, unknown split 1, video in two "
                       "splits 1, duplicate video 1, malformed sentence 2, unknown video 1, empty caption 1, "
                       "duplicate sentence 1"]
    assert f"{broken}: not valid JSON" in caplog.text
    split_of = dict(zip(videos["video_id"], videos["split"], strict=True))
    assert split_of == {"video1": "train", "video3": "train", "video2": "val"}  # video3 was also listed as test
    assert captions.groupby("video_id").size().to_dict() == {"video1": 3, "video2": 2, "video3": 2}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", r'not an MSR-VTT annotation file \(expected a JSON object with "videos" and "sentences" lists'),
        ('{"videos": [], "annotations": []}', "not an MSR-VTT annotation file"),
        ('[{"videoID": "x_000001_000002", "enCap": ["A cat."]}]', "not an MSR-VTT annotation file"),
    ],
)
def test_msrvtt_a_file_of_another_format_is_a_usage_error_naming_it(tmp_path, content, message):
    path = tmp_path / "train_val_videodatainfo.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message) as error:
        _load(msrvtt, [path], [tmp_path])
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_msrvtt_missing_inputs_are_usage_errors(tmp_path):
    path = write_json(tmp_path / "MSRVTT_data.json", msrvtt_json([("video1", "train")], per_video=1))
    with pytest.raises(UsageError, match="nowhere.json: annotation file not found"):
        _load(msrvtt, [tmp_path / "nowhere.json"], [tmp_path])
    with pytest.raises(UsageError, match="TestVideo: video folder not found"):
        _load(msrvtt, [path], [tmp_path / "TestVideo"])
    with pytest.raises(UsageError, match=r"none of the 1 msrvtt clips has a video file \(expected files like "
                                         r"video1.mp4"):
        _load(msrvtt, [path], [tmp_path])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UsageError, match="bad.json: no usable msrvtt clip in the annotations"):
        _load(msrvtt, [tmp_path / "bad.json"], [tmp_path])


# -- VATEX ------------------------------------------------------------------------------------------------------
def test_vatex_full_size_keeps_the_clips_with_videos(tmp_path, caplog):
    files = vatex_release(tmp_path)
    firsts = dict(zip(VATEX_SIZES, np.cumsum([0, *VATEX_SIZES.values()])[:-1].tolist(), strict=True))
    with_video = {split: [vatex_clip(firsts[split]), vatex_clip(firsts[split] + n - 1)]
                  for split, n in VATEX_SIZES.items()}
    folder = _videos(tmp_path / "videos", sum(with_video.values(), []))
    (folder / "someone_else_000001_000011.mp4").write_bytes(b"")  # a video no file names

    with caplog.at_level(logging.WARNING):
        captions, videos, report = _load(vatex, reversed(files.values()), [folder])  # order of the files is free

    assert caplog.text == ""
    assert report["file_splits"] == {path.name: split for split, path in reversed(files.items())}
    assert report["clips_in_annotations"] == VATEX_SIZES
    assert report["captions_in_annotations"] == {"train": 259910, "val": 30000, "test": 60000}
    assert report["missing_videos"] == {split: n - 2 for split, n in VATEX_SIZES.items()}
    assert report["videos_not_in_annotations"] == 1
    assert videos["video_id"].tolist() == [c for s in VATEX_SIZES for c in sorted(with_video[s], key=str.encode)]
    assert videos["split"].tolist() == [s for s in VATEX_SIZES for _ in range(2)]
    assert captions["split"].value_counts().to_dict() == {"train": 20, "val": 20, "test": 20}
    # all ten English captions are references, in file order; no Chinese, no blind-test clip
    first = vatex_clip(0)
    assert captions.loc[captions["video_id"] == first, "caption"].tolist() == [caption(k) for k in range(10)]
    assert captions["caption"].str.isascii().all()
    assert set(captions["video_id"]) == set(videos.loc[videos["split"] != "blindtest", "video_id"])
    json.dumps(report)


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("vatex_training_v1.0.json", "train"),
        ("vatex_validation_v1.0.json", "val"),
        ("vatex_public_test_english_v1.1.json", "test"),
        ("vatex_private_test_without_annotations.json", "blindtest"),
        ("VATEX-Train.json", "train"),
        ("val.json", "val"),
    ],
)
def test_vatex_split_of_a_file_comes_from_its_name(name, split):
    assert vatex.split_of_file(Path("/data") / name) == split


@pytest.mark.parametrize("name", ["vatex_v1.0.json", "vatex_train_val.json", "trainval.json"])
def test_vatex_a_name_without_one_split_is_a_usage_error_listing_the_names(tmp_path, name):
    path = write_json(tmp_path / name, vatex_entries(0, 2))
    with pytest.raises(UsageError, match=f"{name}: cannot tell its VATEX split from the name .*"
                                         "vatex_private_test_without_annotations.json"):
        _load(vatex, [path], [tmp_path])


def test_vatex_bad_entries_are_counted_by_reason_in_one_line(tmp_path, caplog):
    train = vatex_entries(0, 3)
    train[1]["enCap"][3] = " "  # an empty English caption: the clip keeps its 9 others
    train[2]["enCap"][0] = 42
    train += [
        {"videoID": vatex_clip(9), "chCap": ["只有中文。"]},  # no English caption at all
        {"videoID": vatex_clip(10), "enCap": ["", "  "]},
        {"videoID": "../etc_000001_000002", "enCap": ["A path."]},
        {"enCap": ["No id."]},
        "just a string",
        dict(train[0]),  # the same clip twice in one file
    ]
    val = vatex_entries(3, 2) + vatex_entries(0, 1)  # clip 0 is also in train: it stays there
    files = [write_json(tmp_path / "vatex_training_v1.0.json", train),
             write_json(tmp_path / "vatex_validation_v1.0.json", val),
             tmp_path / "vatex_public_test_english_v1.1.json"]
    files[2].write_text('[{"videoID": "abc_000001_0000')
    folder = _videos(tmp_path / "videos", [vatex_clip(i) for i in range(5)])

    with caplog.at_level(logging.WARNING):
        captions, videos, report = _load(vatex, files, [folder])

    assert report["skipped"] == {"malformed_json_file": 1, "malformed_entry": 3, "no_english_caption": 2,
                                 "malformed_caption": 1, "empty_caption": 3, "clip_in_two_splits": 1,
                                 "duplicate_clip": 1}
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("vatex: skipped")]
    assert len(summary) == 1 and summary[0].startswith("vatex: skipped malformed json file 1, malformed entry 3")
    assert dict(zip(videos["video_id"], videos["split"], strict=True)) == {
        **{vatex_clip(i): "train" for i in range(3)}, **{vatex_clip(i): "val" for i in (3, 4)}}
    assert captions.groupby("video_id").size().to_dict() == {
        vatex_clip(0): 10, vatex_clip(1): 9, vatex_clip(2): 9, vatex_clip(3): 10, vatex_clip(4): 10}
    assert report["missing_videos"] == {"train": 0, "val": 0, "test": 0, "blindtest": 0}


def test_vatex_a_captioned_split_without_english_says_which_file_to_use(tmp_path, caplog):
    path = write_json(tmp_path / "vatex_public_test_without_annotations.json", vatex_entries(0, 3, english=False))
    train = write_json(tmp_path / "vatex_training_v1.0.json", vatex_entries(3, 1))
    folder = _videos(tmp_path / "videos", [vatex_clip(i) for i in range(4)])
    with caplog.at_level(logging.WARNING):
        _, videos, report = _load(vatex, [path, train], [folder])
    assert f"{path}: no entry has English captions (enCap)" in caplog.text
    assert report["skipped"]["no_english_caption"] == 3 and videos["split"].tolist() == ["train"]


@pytest.mark.parametrize(
    "content", ['{"videos": [], "sentences": []}', "[1, 2, 3]", '[{"video_id": "video1", "caption": "A cat."}]']
)
def test_vatex_a_file_of_another_format_is_a_usage_error_naming_it(tmp_path, content):
    path = tmp_path / "vatex_validation_v1.0.json"
    path.write_text(content)
    with pytest.raises(UsageError, match='not a VATEX annotation file \\(expected a JSON list of objects with '
                                         '"videoID"') as error:
        _load(vatex, [path], [tmp_path])
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


# -- through `vidcap prepare` -----------------------------------------------------------------------------------
def test_both_are_registered_without_a_row_of_the_paper():
    assert registry()["msrvtt"] is msrvtt and registry()["vatex"] is vatex
    assert msrvtt.PAPER_DATASET is None and vatex.PAPER_DATASET is None


@pytest.mark.java  # prepare looks for Java first
@pytest.mark.skipif(shutil.which("java") is None, reason="needs java")
@pytest.mark.parametrize("dataset", ["msrvtt", "vatex"])
def test_cli_wrong_format_exits_2_with_one_line(tmp_path, capsys, dataset):
    path = tmp_path / "vatex_training_v1.0.json"
    path.write_text('"just a string"')
    code = main(["prepare", dataset, "--annotations", str(path), "--videos", str(tmp_path), "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(path) in err[0] and "annotation file" in err[0]


@pytest.mark.java
@pytest.mark.skipif(shutil.which("java") is None, reason="needs java")
def test_cli_prepare_msrvtt_and_vatex_write_the_split_table(tmp_path, capsys):
    videos = [("video0", "train"), ("video1", "train"), ("video2", "validate"), ("video3", "test")]
    msrvtt_file = write_json(tmp_path / "MSRVTT_data.json", msrvtt_json(videos, per_video=3))
    folder = _videos(tmp_path / "videos", ["video0", "video2", "video3", *(vatex_clip(i) for i in (0, 2, 3, 5))])
    vatex_files = [
        write_json(tmp_path / "vatex_training_v1.0.json", vatex_entries(0, 2)),
        write_json(tmp_path / "vatex_validation_v1.0.json", vatex_entries(2, 1)),
        write_json(tmp_path / "vatex_public_test_english_v1.1.json", vatex_entries(3, 2, chinese=False)),
        write_json(tmp_path / "vatex_private_test_without_annotations.json", vatex_entries(5, 2, english=False)),
    ]
    for dataset, files, table in [
        ("msrvtt", [msrvtt_file], {"train": [1, 3, 1], "val": [1, 3, 0], "test": [1, 3, 0]}),
        ("vatex", vatex_files, {"train": [1, 10, 1], "val": [1, 10, 0], "test": [1, 10, 1], "blindtest": [1, 0, 1]}),
    ]:
        out = tmp_path / dataset
        code = main(["prepare", dataset, "--annotations", *map(str, files), "--videos", str(folder),
                     "--out", str(out), "--min-count", "1"])
        assert code == 0
        printed = capsys.readouterr().out
        assert f"prepared {dataset}" in printed
        report = json.loads((out / "prepare.json").read_text())
        assert {split: list(row.values()) for split, row in report["splits"].items()} == table
        assert report["dataset"] == dataset
        captions = read_captions(out)
        assert captions["tokens"].iloc[0] == captions["caption"].iloc[0].lower().rstrip(".")
        assert read_videos(out)["split"].tolist() == list(table)
