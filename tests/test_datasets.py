"""The dataset layer on fixtures written in the real file formats (MSVD CSV / txt, LSMDC tsv), the registry, and
`vidcap prepare` (which stores coco-caption's PTB tokens)."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

import vidcap.datasets
from vidcap.cli import main
from vidcap.datasets import (
    PROTOCOL,
    byte_order,
    content_metrics,
    dataset_module,
    lsmdc,
    msvd,
    prepare,
    read_captions,
    read_videos,
    registry,
    split_sizes,
    split_table,
    standard_split,
    write_tables,
    write_vocab,
)
from vidcap.errors import UsageError
from vidcap.text.metrics import TOKENIZER_JAR
from vidcap.text.vocab import Vocabulary


def needs_java(test):
    """`prepare` tokenises with coco-caption's PTB tokenizer, which runs on Java."""
    return pytest.mark.java(pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")(test))


MSVD_HEADER = "VideoID,Start,End,WorkerID,Source,AnnotationTime,Language,Description"

# The real CSV quotes a field only when it must; descriptions may hold commas, doubled quotes and line breaks.
MSVD_CSV = (
    MSVD_HEADER + "\r\n"
    "mv89psg6zh4,33,46,1,clean,24,English,A bird is bathing in a sink.\r\n"
    'mv89psg6zh4,33,46,2,clean,17,English,"A bird, a sink, and some water."\r\n'
    "mv89psg6zh4,33,46,3,clean,11,Spanish,Un p\u00e1jaro se ba\u00f1a.\r\n"
    '-4wsuPCjDBc,5,15,4,unverified,30,English,"He says ""hello"" to the camera."\r\n'
    "-4wsuPCjDBc,5,15,5,clean,12,German,Ein Mann spricht.\r\n"
    "_0nX-El-ySo,83,93,6,clean,20,English,\"A woman is slicing\nan onion,\r\nslowly.\"\r\n"
    "_0nX-El-ySo,83,93,7,clean,21,English,\r\n"
    '_0nX-El-ySo,83,93,8,clean,22,English,"   "\r\n'
    "ZZtop123abc,0,10,9,clean,14,English,A band plays music.\r\n"
    "aaa111bbb22,1,4,10,clean,9,English,A cat is eating.\r\n"
    "aaa111bbb22,1,4,11,clean,9,Chinese,\u4e00\u53ea\u732b\u5728\u5403\u4e1c\u897f\u3002\r\n"
    "noVideo0000,7,9,12,clean,5,English,A clip whose video disappeared.\r\n"
    "broken,x,9,13,clean,5,English,Start is not a number.\r\n"
)
MSVD_TXT = (
    "# Microsoft Research Video Description Corpus: English descriptions\n"
    "# VideoID_Start_End Description\n"
    "mv89psg6zh4_33_46 A bird is bathing in a sink.\n"
    "mv89psg6zh4_33_46 A bird, a sink, and some water.\n"
    '-4wsuPCjDBc_5_15 He says "hello" to the camera.\n'
    "_0nX-El-ySo_83_93 A woman is slicing an onion, slowly.\n"
    "ZZtop123abc_0_10 A band plays music.\n"
    "aaa111bbb22_1_4 A cat is eating.\n"
    "noVideo0000_7_9 A clip whose video disappeared.\n"
    "not-a-clip-id some words\n"
)
MSVD_CLIPS = ["mv89psg6zh4_33_46", "-4wsuPCjDBc_5_15", "_0nX-El-ySo_83_93", "ZZtop123abc_0_10", "aaa111bbb22_1_4"]


def _touch_videos(folder: Path, clips, ext: str = ".avi") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        (folder / f"{clip}{ext}").write_bytes(b"")  # prepare only checks that the file exists
    return folder


@pytest.fixture
def msvd_files(tmp_path):
    annotations = tmp_path / "MSR Video Description Corpus.csv"
    annotations.write_bytes(MSVD_CSV.encode("utf-8"))
    videos = _touch_videos(tmp_path / "YouTubeClips", MSVD_CLIPS[:4])
    (videos / f"{MSVD_CLIPS[4]}.mp4").write_bytes(b"")  # no .avi for this one: another container is accepted
    (videos / "notes.txt").write_text("not a video")
    (videos / "orphan_1_2.avi").write_bytes(b"")  # a video nobody describes
    return annotations, videos


# --------------------------------------------------------------------------------------------------------------
def test_byte_order_and_standard_split_sizes():
    ids = ["b", "_a", "-c", "A", "0", "b"]
    assert byte_order(ids) == ["-c", "0", "A", "_a", "b"]
    assert split_sizes(1970) == (1200, 100, 670)
    assert split_sizes(10) == (6, 1, 3)
    assert split_sizes(3) == (1, 1, 1)
    with pytest.raises(UsageError, match="at least 3"):
        split_sizes(2)


def test_standard_split_is_proportional_for_other_sizes_and_says_so(caplog):
    clips = [f"c{i:02d}" for i in range(10)]
    with caplog.at_level(logging.WARNING, logger="vidcap.datasets"):
        split = standard_split(reversed(clips))
    assert [split[c] for c in clips] == ["train"] * 6 + ["val"] + ["test"] * 3
    assert "10 clips instead of the standard 1970: split proportionally" in caplog.text


def test_msvd_csv_keeps_english_non_empty_rows_of_clips_with_videos(msvd_files):
    annotations, videos_dir = msvd_files
    captions, videos, report = msvd.read_tables(annotations, videos_dir)
    assert list(captions.columns) == ["video_id", "split", "caption", "source", "language"]
    # byte order: '-' < 'Z' < '_' < 'a' < 'm'; 5 clips -> 2 train, 1 val, 2 test (1200:100:670, none empty)
    assert list(videos["video_id"]) == ["-4wsuPCjDBc_5_15", "ZZtop123abc_0_10", "_0nX-El-ySo_83_93",
                                        "aaa111bbb22_1_4", "mv89psg6zh4_33_46"]
    assert list(videos["split"]) == ["train", "train", "val", "test", "test"]
    assert videos["path"].iloc[3] == str((videos_dir / "aaa111bbb22_1_4.mp4").resolve())
    assert captions.values.tolist() == [
        ["-4wsuPCjDBc_5_15", "train", 'He says "hello" to the camera.', "unverified", "English"],
        ["ZZtop123abc_0_10", "train", "A band plays music.", "clean", "English"],
        ["_0nX-El-ySo_83_93", "val", "A woman is slicing an onion, slowly.", "clean", "English"],
        ["aaa111bbb22_1_4", "test", "A cat is eating.", "clean", "English"],
        ["mv89psg6zh4_33_46", "test", "A bird is bathing in a sink.", "clean", "English"],
        ["mv89psg6zh4_33_46", "test", "A bird, a sink, and some water.", "clean", "English"],
    ]
    assert report["format"] == "csv"
    assert report["rows_read"] == 13
    assert report["skipped_rows"] == {"non_english": 3, "empty_description": 2, "malformed": 1}
    assert report["clips_in_annotations"] == 6
    assert report["clips_without_video"] == 1
    assert report["videos_not_in_annotations"] == 1
    assert report["clips_kept"] == 5
    assert split_table(captions, videos, report["missing_videos"]) == {
        "train": {"clips": 2, "captions": 2, "missing_videos": 0}, "val": {"clips": 1, "captions": 1, "missing_videos": 0},
        "test": {"clips": 2, "captions": 3, "missing_videos": 0}, "unassigned": {"clips": 0, "captions": 0,
                                                                                 "missing_videos": 1}}
    assert report["split_rule"].startswith("proportional")


def test_msvd_txt_gives_the_same_captions_as_the_csv(msvd_files, tmp_path):
    annotations, videos_dir = msvd_files
    txt = tmp_path / "AllVideoDescriptions.txt"
    txt.write_text(MSVD_TXT, encoding="utf-8")
    from_csv = msvd.read_tables(annotations, videos_dir)
    from_txt = msvd.read_tables(txt, videos_dir)
    columns = ["video_id", "split", "caption"]
    assert from_txt[0][columns].values.tolist() == from_csv[0][columns].values.tolist()
    assert from_txt[1].values.tolist() == from_csv[1].values.tolist()
    assert from_txt[2]["format"] == "txt"
    assert from_txt[2]["rows_read"] == 8
    assert from_txt[2]["skipped_rows"] == {"non_english": 0, "empty_description": 0, "malformed": 1}


def test_msvd_invalid_utf8_bytes_are_replaced_and_counted(msvd_files):
    annotations, videos_dir = msvd_files
    data = annotations.read_bytes().replace("Un p\u00e1jaro".encode(), b"Un p\xe1jaro")  # a latin-1 byte
    annotations.write_bytes(b"\xef\xbb\xbf" + data)  # and a byte-order mark
    captions, _, report = msvd.read_tables(annotations, videos_dir)
    assert report["undecodable_characters"] == 1
    assert len(captions) == 6 and report["skipped_rows"]["non_english"] == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("just some text\nmore text\n", "not an MSVD annotation file"),
        ("VideoID,Start,Description\nabc,1,hi\n", "CSV header lacks column(s) End, Language"),
        ("", "not an MSVD annotation file"),
    ],
)
def test_msvd_wrong_format_is_a_usage_error_naming_the_file(tmp_path, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(content, encoding="utf-8")
    _touch_videos(tmp_path / "v", ["x_1_2"])
    with pytest.raises(UsageError, match=re.escape(message)) as info:
        msvd.read_tables(bad, tmp_path / "v")
    assert str(bad) in str(info.value)


def test_msvd_without_any_video_is_an_empty_result(msvd_files, tmp_path):
    annotations, _ = msvd_files
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="none of the 6 clips .* has a video here"):
        msvd.read_tables(annotations, empty)


def _youtube_ids(rng: random.Random, n: int) -> list[str]:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    ids = {"-" + "".join(rng.choice(alphabet) for _ in range(10)) for _ in range(40)}
    ids |= {"_" + "".join(rng.choice(alphabet) for _ in range(10)) for _ in range(40)}
    while len(ids) < n:
        ids.add("".join(rng.choice(alphabet) for _ in range(11)))
    return sorted(ids)


@needs_java
def test_full_size_msvd_gives_the_standard_split(tmp_path, capsys):
    """~2,100 described clips, 1970 of them with a video: exactly 1200/100/670 in byte order."""
    rng = random.Random(7)
    words = "man woman dog cat is are playing cooking riding a the guitar horse car ball on in with".split()
    clips = [f"{vid}_{rng.randint(0, 200)}_{rng.randint(201, 400)}" for vid in _youtube_ids(rng, 2100)]
    assert len(set(clips)) == 2100
    path = tmp_path / "MSR Video Description Corpus.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MSVD_HEADER.split(","))
        for i, clip in enumerate(rng.sample(clips, len(clips))):
            vid, start, end = clip.rsplit("_", 2)
            for k in range(3):
                text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 8))) + rng.choice([".", "", ", ok"])
                writer.writerow([vid, start, end, i * 3 + k, "clean", 10, "English", text])
            writer.writerow([vid, start, end, -1, "clean", 10, "French", "un homme"])
    with_video = rng.sample(clips, 1970)
    videos_dir = _touch_videos(tmp_path / "YouTubeClips", with_video)
    out = tmp_path / "data"

    assert main(["prepare", "msvd", "--annotations", str(path), "--videos", str(videos_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"unassigned +0 +0 +130\n", printed), printed
    videos = read_videos(out)
    counts = videos["split"].value_counts().to_dict()
    assert counts == {"train": 1200, "val": 100, "test": 670}
    ordered = sorted(with_video, key=lambda c: c.encode())
    assert ordered != sorted(with_video, key=str.lower)  # the fixture can tell byte order from others
    assert videos.loc[videos["split"] == "train", "video_id"].tolist() == ordered[:1200]
    assert videos.loc[videos["split"] == "val", "video_id"].tolist() == ordered[1200:1300]
    assert videos.loc[videos["split"] == "test", "video_id"].tolist() == ordered[1300:]
    assert videos["video_id"].iloc[0] == min(with_video, key=lambda c: c.encode())
    captions = read_captions(out)
    assert len(captions) == 3 * 1970
    assert set(captions["video_id"]) == set(with_video)
    report = json.loads((out / "prepare.json").read_text())
    assert report["split_rule"] == "standard: byte order, 1200/100/670"
    assert report["skipped_rows"]["non_english"] == 2100
    assert report["clips_without_video"] == 130
    vocab = Vocabulary.load(out / "vocab.json")
    assert {"man", "guitar", "ok"} <= set(vocab.itos) and "homme" not in vocab


# --------------------------------------------------------------------------------------------------------------
JUMP = "3001_21_JUMP_STREET"
BEAUTY = "0001_American_Beauty"


def _row(clip: str, sentence: str | None = "SOMEONE walks.", times: tuple[str, ...] | None = None) -> str:
    start, end = clip.rsplit("_", 1)[1].split("-")
    times = times or (start, end, start, end)
    return "\t".join([clip, *times] + ([] if sentence is None else [sentence]))


LSMDC_TRAIN = [
    _row(f"{JUMP}_00.02.55.644-00.02.56.718", "SOMEONE runs to the car."),
    _row(f"{JUMP}_00.02.55.644-00.02.56.718", "He opens the door, then stops."),  # repeated id: a second caption
    _row(f"{JUMP}_00.03.10.000-00.03.12.500", "SOMEONE says \"stop\" and 'waits'.\tEXTRA"),  # seven columns
    _row(f"{JUMP}_00.03.20.000-00.03.22.500", 'SOMEONE says "stop"; she\'s "fine".'),
    _row(f"{BEAUTY}_00.00.51.926-00.00.54.129", "SOMEONE looks out of the window."),
    _row(f"{JUMP}_00.04.00.000-00.04.01.000", None),  # five columns outside the blind test
    "\t".join([JUMP, "00.04.00.000", "00.04.01.000", "00.04.00.000", "00.04.01.000", "No time in the id."]),
    _row(f"{JUMP}_00.05.00.000-00.05.01.000", "Bad times.", ("0.5.00", "00.05.01.000", "x", "y")),
    _row(f"{JUMP}_00.06.00.000-00.06.01.000", "   "),
    _row(f"{JUMP}_00.07.00.000-00.07.01.000", "A clip whose video is missing."),
    "",
]
LSMDC_VAL = [_row("3002_21_JUMP_STREET_00.10.00.000-00.10.02.000", "SOMEONE smiles.")]
LSMDC_BLIND = [
    _row("3003_ZOOTOPIA_00.01.00.000-00.01.02.000", None),
    _row("3003_ZOOTOPIA_00.01.05.000-00.01.07.000", ""),
]
LSMDC_WITH_VIDEO = [
    f"{JUMP}_00.02.55.644-00.02.56.718", f"{JUMP}_00.03.20.000-00.03.22.500", f"{JUMP}_00.03.10.000-00.03.12.500",
    f"{BEAUTY}_00.00.51.926-00.00.54.129", "3002_21_JUMP_STREET_00.10.00.000-00.10.02.000",
    "3003_ZOOTOPIA_00.01.00.000-00.01.02.000", "3003_ZOOTOPIA_00.01.05.000-00.01.07.000",
]


@pytest.fixture
def lsmdc_files(tmp_path):
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    for part, rows in (("training", LSMDC_TRAIN), ("val", LSMDC_VAL), ("blindtest", LSMDC_BLIND)):
        (annotations / f"LSMDC16_annos_{part}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    videos = tmp_path / "videos"
    for clip in LSMDC_WITH_VIDEO:
        _touch_videos(videos / lsmdc.movie_of(clip), [clip])
    return annotations, videos


def test_movie_and_source_of_a_clip_id():
    assert lsmdc.movie_of(f"{JUMP}_00.02.55.644-00.02.56.718") == JUMP
    assert lsmdc.movie_of("no_timestamp") is None
    assert [lsmdc.source_of(c) for c in ("3001_X", "0001_Y", "1054_Z", "9_W")] == ["mvad", "mpii", "mpii", "other"]


def test_lsmdc_keeps_well_formed_rows_and_counts_the_rest(lsmdc_files):
    annotations, videos_dir = lsmdc_files
    captions, videos, report = lsmdc.read_tables(annotations, videos_dir)
    assert captions.values.tolist() == [
        [f"{BEAUTY}_00.00.51.926-00.00.54.129", "train", "SOMEONE looks out of the window.", "mpii"],
        [f"{JUMP}_00.02.55.644-00.02.56.718", "train", "SOMEONE runs to the car.", "mvad"],
        [f"{JUMP}_00.02.55.644-00.02.56.718", "train", "He opens the door, then stops.", "mvad"],
        [f"{JUMP}_00.03.20.000-00.03.22.500", "train", 'SOMEONE says "stop"; she\'s "fine".', "mvad"],
        ["3002_21_JUMP_STREET_00.10.00.000-00.10.02.000", "val", "SOMEONE smiles.", "mvad"],
    ]
    assert videos[["video_id", "split"]].values.tolist() == [
        [f"{BEAUTY}_00.00.51.926-00.00.54.129", "train"],
        [f"{JUMP}_00.02.55.644-00.02.56.718", "train"],
        [f"{JUMP}_00.03.20.000-00.03.22.500", "train"],
        ["3002_21_JUMP_STREET_00.10.00.000-00.10.02.000", "val"],
        ["3003_ZOOTOPIA_00.01.00.000-00.01.02.000", "blindtest"],
        ["3003_ZOOTOPIA_00.01.05.000-00.01.07.000", "blindtest"],
    ]
    clip = f"{JUMP}_00.02.55.644-00.02.56.718"
    assert videos["path"].iloc[1] == str((videos_dir / JUMP / f"{clip}.avi").resolve())
    assert report["files_missing"] == ["LSMDC16_annos_test.csv"]
    assert report["rows_read"] == {"LSMDC16_annos_training.csv": 10, "LSMDC16_annos_val.csv": 1,
                                   "LSMDC16_annos_blindtest.csv": 2}
    assert report["skipped_rows"] == {"wrong_column_count": 2, "bad_clip_id": 1, "bad_timestamp": 1,
                                      "empty_sentence": 1, "clip_in_two_splits": 0}
    assert report["rows_per_source"] == {"mvad": 7, "mpii": 1, "other": 0}
    assert report["clips_without_video"] == 1
    assert videos["split"].value_counts().to_dict() == {"train": 3, "val": 1, "blindtest": 2}
    assert captions["split"].value_counts().to_dict() == {"train": 4, "val": 1}


@pytest.mark.parametrize(("source", "kept", "dropped"), [("mvad", 3, 1), ("mpii", 1, 7)])
def test_lsmdc_source_filter_is_counted(lsmdc_files, source, kept, dropped):
    annotations, videos_dir = lsmdc_files
    captions, videos, report = lsmdc.read_tables(annotations, videos_dir, source=source)
    assert set(captions["source"]) == {source}
    assert len(captions) == (4 if source == "mvad" else 1)
    assert len(videos[videos["split"] != "blindtest"]) == kept
    assert report["skipped_rows"][f"not_{source}"] == dropped


def test_lsmdc_without_annotation_files_or_videos_is_a_usage_error(lsmdc_files, tmp_path):
    annotations, videos_dir = lsmdc_files
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(UsageError, match="none of the LSMDC annotation files is here"):
        lsmdc.read_tables(empty, videos_dir)
    with pytest.raises(UsageError, match="none of the 7 clips has a video here"):
        lsmdc.read_tables(annotations, empty)
    with pytest.raises(UsageError, match="annotation folder not found"):
        lsmdc.read_tables(tmp_path / "missing", videos_dir)


# --------------------------------------------------------------------------------------------------------------
def test_tables_round_trip_with_awkward_captions(tmp_path):
    captions = pd.DataFrame({
        "video_id": ["v1", "v1", "v2", "v3"],
        "split": ["train", "train", "val", "test"],
        "caption": ['a "quoted", comma', "NA", "null", "x\ty"],
        "tokens": ["a quoted comma", "na", "null", "x y"],
        "source": ["clean", "", "clean", "clean"],
    })
    videos = pd.DataFrame({"video_id": ["v1", "v2", "v3"], "split": ["train", "val", "test"],
                           "path": ["videos/v1.avi", str(tmp_path / "abs.mp4"), "v3.avi"]})
    paths = write_tables(tmp_path / "out", captions, videos, {"dataset": "unit", "n": 3})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["captions.csv", "prepare.json", "videos.csv"]
    assert json.loads(paths["prepare"].read_text()) == {"dataset": "unit", "n": 3}
    back = read_captions(tmp_path / "out")
    assert back.values.tolist() == captions.values.tolist()
    resolved = read_videos(tmp_path / "out")["path"].tolist()
    base = (tmp_path / "out").resolve()
    assert resolved == [str(base / "videos/v1.avi"), str(tmp_path / "abs.mp4"), str(base / "v3.avi")]


def test_read_tables_reject_missing_files_columns_and_splits(tmp_path):
    with pytest.raises(UsageError, match=r"captions\.csv: not found"):
        read_captions(tmp_path)
    (tmp_path / "captions.csv").write_text("video_id,caption,tokens\nv1,hi,hi\n")
    with pytest.raises(UsageError, match="missing column"):
        read_captions(tmp_path)
    (tmp_path / "captions.csv").write_text("video_id,split,caption\nv1,train,hi\n")  # before the tokens column
    with pytest.raises(UsageError, match=r"captions\.csv: no tokens column .*rerun `vidcap prepare`"):
        read_captions(tmp_path)
    (tmp_path / "videos.csv").write_text("video_id,split,path\nv1,training,v1.avi\n")
    with pytest.raises(UsageError, match="unknown split"):
        read_videos(tmp_path)


def test_write_vocab_uses_the_train_split_only(tmp_path):
    captions = pd.DataFrame({"video_id": ["a", "a", "b", "c"], "split": ["train", "train", "val", "test"],
                             "caption": ["A red ball!", "A red cube.", "A red secret.", "Secret, secret."],
                             "tokens": ["a red ball", "a red cube", "a red secret", "secret secret"]})
    vocab = write_vocab(tmp_path, captions, min_count=1)
    assert Vocabulary.load(tmp_path / "vocab.json") == vocab
    assert vocab.itos[4:] == ["a", "red", "ball", "cube"]
    with pytest.raises(UsageError, match="no train captions"):
        write_vocab(tmp_path, captions[captions["split"] != "train"])


# --------------------------------------------------------------------------------------------------------------
def _one_line_error(capsys, code: int) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert lines[0].startswith("vidcap prepare: error: ")
    return lines[0]


@needs_java
def test_cli_prepare_msvd_writes_every_file(msvd_files, tmp_path, capsys):
    annotations, videos_dir = msvd_files
    out = tmp_path / "data"
    code = main(["prepare", "msvd", "--annotations", str(annotations), "--videos", str(videos_dir),
                 "--out", str(out), "--min-count", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "prepared msvd: 5 clips with videos, 6 captions kept" in printed
    assert "rows skipped: non english 3, empty description 2, malformed 1" in printed
    assert sorted(p.name for p in out.iterdir()) == ["captions.csv", "prepare.json", "videos.csv", "vocab.json"]
    report = json.loads((out / "prepare.json").read_text())
    assert report["options"]["min_count"] == 1 and report["vocab_size"] == len(Vocabulary.load(out / "vocab.json"))
    assert all(Path(p).is_file() for p in read_videos(out)["path"])


@needs_java
def test_cli_prepare_lsmdc_reports_missing_files(lsmdc_files, tmp_path, capsys):
    annotations, videos_dir = lsmdc_files
    code = main(["prepare", "lsmdc", "--annotations", str(annotations), "--videos", str(videos_dir),
                 "--out", str(tmp_path / "out"), "--source", "all"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "annotation files missing: LSMDC16_annos_test.csv" in printed
    assert re.search(r"blindtest +2 +0 +0\n", printed), printed
    assert read_videos(tmp_path / "out")["split"].tolist().count("blindtest") == 2


@needs_java
def test_cli_missing_annotation_file_exits_2_with_one_line(tmp_path, capsys):
    videos = _touch_videos(tmp_path / "v", ["a_1_2"])
    missing = tmp_path / "nope.csv"
    code = main(["prepare", "msvd", "--annotations", str(missing), "--videos", str(videos), "--out", str(tmp_path / "o")])
    line = _one_line_error(capsys, code)
    assert line.endswith(f"{missing}: annotation file not found")
    code = main(["prepare", "lsmdc", "--annotations", str(tmp_path / "none"), "--videos", str(videos),
                 "--out", str(tmp_path / "o")])
    assert "annotation folder not found" in _one_line_error(capsys, code)
    assert not (tmp_path / "o").exists()


@needs_java
def test_cli_wrong_format_and_empty_result_exit_2(msvd_files, tmp_path, capsys):
    annotations, videos_dir = msvd_files
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("hello world\n")
    code = main(["prepare", "msvd", "--annotations", str(wrong), "--videos", str(videos_dir), "--out", str(tmp_path / "o")])
    assert "not an MSVD annotation file" in _one_line_error(capsys, code)
    empty = tmp_path / "no_videos"
    empty.mkdir()
    code = main(["prepare", "msvd", "--annotations", str(annotations), "--videos", str(empty), "--out", str(tmp_path / "o")])
    assert "has a video here" in _one_line_error(capsys, code)


def test_cli_dataset_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as info:
        main(["prepare", "lsmdc", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--source {all,mvad,mpii}" in out
    assert "vidcap prepare lsmdc --annotations" in out.split("example:", 1)[1]


@needs_java
def test_cli_prepare_synthetic(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["prepare", "synthetic", "--out", str(out), "--num-videos", "6", "--seed", "3"]) == 0
    assert "prepared synthetic: 6 clips with videos" in capsys.readouterr().out
    videos = read_videos(out)
    assert len(videos) == 6 and all(Path(p).is_file() for p in videos["path"])
    assert set(read_captions(out)["split"]) == {"train", "val", "test"}
    assert (out / "vocab.json").is_file()


# --------------------------------------------------------------------------------------------------------------
# The registry and the stored tokens

# Captions that exercise the PTB tokenizer's corners (brackets, quotes, contractions, abbreviations, currencies,
# dots, non-ASCII), and two with nothing but punctuation.
AWKWARD = [
    "A man (in a hat) is playing {guitar} [loudly].",
    "He said \"hello\" to the 'dog'.",
    "Don't you think the man's car can't go? I'm gonna wanna gotta cannot.",
    "Mr. Smith went to the U.S. and met Dr. Jones, etc.",
    "The price is $5.50 or 1,000 yen & 3/4 of a pie*.",
    "A well-known man -- walking... slowly; yes: no!",
    "\u201cSmart quotes\u201d and \u2018single\u2019 \u2026 and \u2014 em dash \u2013 en dash",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber \u00c9COLE",
    "wow!!! what?! huh??",
    "point a. He goes. the u.s. The end. etc. The etc. the",
    "(a) (b) 1) 2) :) ;-) :D",
    "a cat.A dog cooking., stuff; item.: end",
    "a plan b.",
    "The A-U.S. t-shirt's 2nd-year x-ray u.s.-based",
]
PUNCTUATION_ONLY = ["...", "-- ; : !"]


def _awkward_msvd(tmp_path: Path) -> tuple[Path, Path, dict[str, list[str]]]:
    """An AllVideoDescriptions.txt of 3 clips holding AWKWARD (and the punctuation-only captions), with videos."""
    clips = [f"clip{i}_0_1" for i in range(3)]
    by_clip: dict[str, list[str]] = {clip: [] for clip in clips}
    for i, caption in enumerate(AWKWARD + PUNCTUATION_ONLY):
        by_clip[clips[i % 3]].append(caption)
    lines = ["# VideoID_Start_End Description"] + [f"{c} {text}" for c, texts in by_clip.items() for text in texts]
    annotations = tmp_path / "AllVideoDescriptions.txt"
    annotations.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return annotations, _touch_videos(tmp_path / "videos", clips), by_clip


@needs_java
@pytest.mark.skipif(not os.access(TOKENIZER_JAR.parent, os.W_OK),
                    reason="pycocoevalcap's own PTBTokenizer writes into its package folder")
def test_prepare_stores_the_tokens_of_coco_captions_ptb_tokenizer(tmp_path):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    annotations, videos, by_clip = _awkward_msvd(tmp_path)
    out = tmp_path / "data"
    report = prepare("msvd", annotations=str(annotations), videos=str(videos), out=str(out), min_count=1)
    expected = PTBTokenizer().tokenize({clip: [{"caption": c} for c in texts] for clip, texts in by_clip.items()})
    stored = read_captions(out)
    assert {clip: list(group["tokens"]) for clip, group in stored.groupby("video_id")} == {
        clip: [t for t in tokens if t] for clip, tokens in expected.items()}
    # The punctuation-only captions have no token left: dropped and counted, the others kept in file order.
    assert report["captions_without_tokens"] == len(PUNCTUATION_ONLY)
    assert sorted(stored["caption"]) == sorted(AWKWARD)
    assert json.loads((out / "prepare.json").read_text())["captions_without_tokens"] == 2
    # The vocabulary is built from the stored tokens of the train split.
    vocab = Vocabulary.load(out / "vocab.json")
    train_tokens = {t for tokens in stored.loc[stored["split"] == "train", "tokens"] for t in tokens.split()}
    assert set(vocab.itos[4:]) == train_tokens


@needs_java
def test_prepare_writes_the_split_table(msvd_files, tmp_path, capsys):
    annotations, videos_dir = msvd_files
    out = tmp_path / "data"
    assert main(["prepare", "msvd", "--annotations", str(annotations), "--videos", str(videos_dir),
                 "--out", str(out)]) == 0
    table = {"train": {"clips": 2, "captions": 2, "missing_videos": 0},
             "val": {"clips": 1, "captions": 1, "missing_videos": 0},
             "test": {"clips": 2, "captions": 3, "missing_videos": 0},
             "unassigned": {"clips": 0, "captions": 0, "missing_videos": 1}}
    assert json.loads((out / "prepare.json").read_text())["splits"] == table
    printed = capsys.readouterr().out
    assert re.search(r"split +clips +captions +missing videos\n +train +2 +2 +0\n", printed), printed
    assert re.search(r"unassigned +0 +0 +1\n", printed), printed


def test_prepare_checks_for_java_before_anything_else(msvd_files, tmp_path, monkeypatch, capsys):
    annotations, videos_dir = msvd_files
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no java
    out = tmp_path / "data"
    code = main(["prepare", "msvd", "--annotations", str(annotations), "--videos", str(videos_dir), "--out", str(out)])
    assert _one_line_error(capsys, code).startswith("vidcap prepare: error: Java not found.")
    assert not out.exists()


def test_registry_holds_every_dataset_module_with_the_whole_protocol():
    datasets = registry()
    assert {"msvd", "lsmdc", "synthetic"} <= set(datasets)
    for name, module in datasets.items():
        assert module.NAME == name and all(hasattr(module, attr) for attr in PROTOCOL)
        assert module.PAPER_DATASET in (None, "msvd", "lsmdc")
    assert (datasets["msvd"].PAPER_DATASET, datasets["synthetic"].PAPER_DATASET) == ("msvd", None)


TOY_DATASET = """
import pandas as pd

NAME = "toy"
HELP = "a dataset written for the registry test"
EXAMPLE = "  vidcap prepare toy --out data/toy"
PAPER_DATASET = None


def add_arguments(parser):
    parser.add_argument("--clips", type=int, default=3)


def load(out, *, clips):
    ids = [f"t{i}" for i in range(clips)]
    splits = ["train", "val", "test"] * clips
    captions = pd.DataFrame({"video_id": ids, "split": splits[:clips], "caption": ["A toy."] * clips})
    videos = pd.DataFrame({"video_id": ids, "split": splits[:clips], "path": [f"{i}.mp4" for i in ids]})
    return captions, videos, {"toys": clips}


def content_metrics(data_dir, predictions, reversed_predictions):
    return {"toy_acc": sum(p == "a toy" for p in predictions.values()) / len(predictions)}
"""


@pytest.fixture
def toy_dataset(tmp_path, monkeypatch):
    """A dataset module in a folder added to the package's path: found without editing any list."""
    folder = tmp_path / "more_datasets"
    folder.mkdir()
    (folder / "toy.py").write_text(TOY_DATASET)
    monkeypatch.setattr(vidcap.datasets, "__path__", [*vidcap.datasets.__path__, str(folder)])
    registry.cache_clear()
    yield registry()["toy"]
    monkeypatch.undo()
    registry.cache_clear()


def test_a_new_dataset_module_is_found_and_parsed_without_an_edit(toy_dataset, capsys):
    assert toy_dataset.NAME == "toy"
    with pytest.raises(SystemExit):
        main(["prepare", "toy", "--help"])
    assert "vidcap prepare toy --out data/toy" in capsys.readouterr().out.split("example:")[1]
    args = vidcap.datasets.prepare_parser(toy_dataset).parse_args(["--out", "o", "--clips", "5", "--max-vocab", "9"])
    assert isinstance(args, argparse.Namespace) and (args.clips, args.max_vocab, args.min_count) == (5, 9, 2)


@needs_java
def test_prepare_runs_a_new_dataset_end_to_end(toy_dataset, tmp_path):
    report = prepare("toy", out=str(tmp_path), clips=4, min_count=1)
    assert report["dataset"] == "toy" and report["toys"] == 4 and report["captions_without_tokens"] == 0
    assert report["splits"] == {"train": {"clips": 2, "captions": 2, "missing_videos": 0},
                                "val": {"clips": 1, "captions": 1, "missing_videos": 0},
                                "test": {"clips": 1, "captions": 1, "missing_videos": 0}}
    assert read_captions(tmp_path)["tokens"].tolist() == ["a toy"] * 4
    assert Vocabulary.load(tmp_path / "vocab.json").itos[4:] == ["a", "toy"]
    assert content_metrics(tmp_path, {"t0": "a toy"}, None) == {"toy_acc": 1.0}


def test_dataset_module_and_content_metrics_follow_prepare_json(toy_dataset, tmp_path):
    assert dataset_module(tmp_path) is None and content_metrics(tmp_path, {"t0": "x"}, None) == {}
    (tmp_path / "prepare.json").write_text(json.dumps({"dataset": "toy"}))
    assert dataset_module(tmp_path) is toy_dataset
    assert content_metrics(tmp_path, {"t0": "a toy", "t1": "no"}, None) == {"toy_acc": 0.5}
    (tmp_path / "prepare.json").write_text(json.dumps({"dataset": "msvd"}))
    assert content_metrics(tmp_path, {"t0": "a toy"}, None) == {}  # msvd has no hook
    (tmp_path / "prepare.json").write_text("{broken")
    with pytest.raises(UsageError, match=r"prepare\.json: cannot read it"):
        dataset_module(tmp_path)


def test_prepare_refuses_an_unknown_dataset():
    with pytest.raises(UsageError, match="unknown dataset 'nope' \\(choose from .*msvd"):
        prepare("nope", out="x")

