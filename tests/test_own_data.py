"""Your own data: captions tables (vidcap.datasets.captions), video2dataset shards (vidcap.datasets.webdataset), and
videos read inside tar shards without unpacking (vidcap.video.tar_members) by extraction, captioning and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import SHARD_CAPTIONS, moving_square, write_video, write_video2dataset_shards
from vidcap.cli import main
from vidcap.datasets import read_captions, read_videos
from vidcap.datasets.splits import hashed_split, parse_fractions, seeded_split, shard_split
from vidcap.errors import UsageError, VideoError
from vidcap.video.reader import read_sampled_frames
from vidcap.video.tar_members import member_ref, read_member, scan_shard, split_ref

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


# -- tar members ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return write_video2dataset_shards(tmp_path_factory.mktemp("shards"))


def test_split_ref_names_members_of_tar_shards_only():
    assert split_ref("data/00000.tar::000000012.mp4") == ("data/00000.tar", "000000012.mp4")
    assert split_ref("C:/x.TAR::a/b.mp4") == ("C:/x.TAR", "a/b.mp4")
    assert split_ref("clip.mp4") is None and split_ref("weird::name.mp4") is None and split_ref("a.tar::") is None
    assert member_ref(Path("d/0.tar"), "k.mp4") == "d/0.tar::k.mp4"


def test_scan_keeps_complete_members_before_the_damage(shards, tmp_path):
    whole = scan_shard(shards[0])
    assert whole.error is None and [m.name for m in whole.members][:4] == [
        "000000000.mp4", "000000000.txt", "000000000.json", "000000001.json"]
    truncated = scan_shard(shards[-1])
    assert "truncated inside member 000030003.mp4" in truncated.error
    assert {m.name.split(".")[0] for m in truncated.members} == {"000030000", "000030001", "000030002"}
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 64)
    assert scan_shard(tmp_path / "junk.tar").error == "not a tar file"
    last = whole.members[-1]
    end = last.offset + 512 * -(-last.size // 512)  # whole members, none of the zero blocks after them
    (tmp_path / "cut.tar").write_bytes(shards[0].read_bytes()[:end])
    assert "truncated after" in scan_shard(tmp_path / "cut.tar").error


@pytest.mark.parametrize("backend", ["pyav", "decord", "auto"])
def test_a_video_inside_a_shard_decodes_as_the_same_file(shards, tmp_path, backend):
    ref = member_ref(shards[0], "000000002.mp4")
    (tmp_path / "same.mp4").write_bytes(read_member(ref))
    inside, outside = read_sampled_frames(ref, 5, backend), read_sampled_frames(tmp_path / "same.mp4", 5, backend)
    assert inside.frames.shape == (5, 48, 64, 3) and np.array_equal(inside.frames, outside.frames)
    assert inside.backend == outside.backend


def test_bad_members_are_one_line_errors(shards):
    with pytest.raises(VideoError, match=r"00000\.tar::000000000\.txt: not a readable video"):
        read_sampled_frames(member_ref(shards[0], "000000000.txt"), 4)
    with pytest.raises(VideoError, match=r"00000\.tar::nope\.mp4: no such member in the shard"):
        read_sampled_frames(member_ref(shards[0], "nope.mp4"), 4)
    with pytest.raises(VideoError, match=r"missing\.tar::a\.mp4: no such shard"):
        read_member(member_ref(shards[0].parent / "missing.tar", "a.mp4"))


# -- splits --------------------------------------------------------------------------------------------------------
def test_seeded_split_is_reproducible_and_puts_each_video_in_one_split():
    ids = [f"v{i}" for i in range(40)]
    split = seeded_split(ids, (0.8, 0.1, 0.1), seed=3)
    assert split == seeded_split(reversed(ids), (0.8, 0.1, 0.1), seed=3)  # input order does not matter
    assert [sum(s == name for s in split.values()) for name in ("train", "val", "test")] == [32, 4, 4]
    assert split != seeded_split(ids, (0.8, 0.1, 0.1), seed=4)
    assert sorted(seeded_split(["a", "b", "c"], parse_fractions("0.9,0.05,0.05"), 0).values()) == ["test", "train",
                                                                                                    "val"]
    with pytest.raises(UsageError, match="too few"):
        seeded_split(["a", "b"], (0.4, 0.3, 0.3), 0)
    with pytest.raises(ValueError, match="three fractions"):
        parse_fractions("0.9,0.1")


def test_hashed_and_shard_splits():
    keys = [f"{i:09d}" for i in range(2000)]
    counts = pd.Series([hashed_split(k, (0.8, 0.1, 0.1), 0) for k in keys]).value_counts()
    assert 1500 < counts["train"] < 1700 and 120 < counts["val"] < 280 and 120 < counts["test"] < 280
    assert [hashed_split(k, (0.8, 0.1, 0.1), 0) for k in keys[:50]] == [hashed_split(k, (0.8, 0.1, 0.1), 0)
                                                                        for k in keys[:50]]
    assert shard_split(["a", "b", "c", "d"], (0.9, 0.05, 0.05)) == {"a": "train", "b": "train", "c": "val",
                                                                     "d": "test"}


# -- vidcap prepare webdataset ---------------------------------------------------------------------------------------
@pytest.mark.java
def test_prepare_webdataset_reads_shards_in_place(shards, tmp_path, capsys):
    out = tmp_path / "data"
    pattern = str(shards[0].parent / "{00000..00003}.tar")
    assert main(["prepare", "webdataset", "--shards", pattern, "--split-shards", "--min-count", "1",
                 "--out", str(out), "--no-progress"]) == 1  # the truncated shard fails the run at the end
    printed = capsys.readouterr()
    assert f"{shards[-1]}: truncated inside member 000030003.mp4" in printed.err
    report = json.loads((out / "prepare.json").read_text())
    assert report["skipped_samples"] == {"failed_download": 4, "no_video": 0, "empty_caption": 0, "bad_json": 0,
                                         "duplicate_key": 0}
    videos = read_videos(out)
    # Two good samples in shards 0, 2 and 3 (complete before the damage), four in shard 1 (one clipped in two).
    assert videos["video_id"].tolist() == ["000000000", "000000002", "000000003", "000010000", "000010002_0",
                                           "000010002_1", "000010003", "000020000", "000020002", "000020003",
                                           "000030000", "000030002"]
    assert videos.groupby("split")["shard"].nunique().to_dict() == {"test": 1, "train": 2, "val": 1}
    assert videos["path"].tolist() == [member_ref(s, m) for s, m in zip(videos["shard"], videos["member"],
                                                                         strict=True)]
    captions = read_captions(out)
    assert set(captions["caption"]) == set(SHARD_CAPTIONS.values())
    assert "never downloaded" not in set(captions["caption"])


@pytest.mark.java
def test_prepare_webdataset_counts_duplicates_and_takes_json_captions(shards, tmp_path):
    from vidcap.datasets import prepare

    copy = tmp_path / "copy.tar"
    copy.write_bytes(shards[0].read_bytes())
    report = prepare("webdataset", out=tmp_path / "data", shards=[str(shards[0]), str(copy), str(shards[2])],
                     caption_field="caption", min_count=1, no_progress=True, split=(0.4, 0.3, 0.3))
    assert report["skipped_samples"]["duplicate_key"] == 3 and report["damaged_shards"] == {}
    assert report["caption_source"] == "json field 'caption'"
    videos = read_videos(tmp_path / "data")
    assert not videos["path"].str.contains("copy.tar").any()  # the first shard's samples are kept
    with pytest.raises(UsageError, match=r"nowhere/00007\.tar: shard not found"):
        prepare("webdataset", out=tmp_path / "x", shards=[str(tmp_path / "nowhere/{00007..00008}.tar")])


# -- vidcap prepare captions -------------------------------------------------------------------------------------------
def _videos_folder(root: Path) -> dict[str, str]:
    """Six videos in two subfolders; video path -> caption."""
    table = {}
    for i in range(6):
        direction = "right" if i % 2 == 0 else "left"
        colour = (220, 30, 30) if direction == "right" else (30, 30, 220)
        name = f"{'a' if i < 3 else 'b'}/clip{i}.mp4"
        write_video(root / name, moving_square(12, colour, 1 if direction == "right" else -1))
        table[name] = SHARD_CAPTIONS[direction]
    return table


def _write_table(path: Path, fmt: str, table: dict[str, str]) -> None:
    rows = [{"video": video, "caption": caption} for video, caption in table.items()]
    rows += [{"video": video, "caption": caption.upper()} for video, caption in table.items()]  # two each
    rows += [{"video": "a/clip0.mp4", "caption": "  "}, {"video": "gone.mp4", "caption": "a ghost"}]
    if fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif fmt == "tsv":
        pd.DataFrame(rows).to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:  # {video: [captions]}
        grouped: dict[str, list[str]] = {}
        for row in rows:
            grouped.setdefault(row["video"], []).append(row["caption"])
        path.write_text(json.dumps(grouped))


@pytest.fixture(scope="module")
def own_videos(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("own")
    return root / "videos", _videos_folder(root / "videos")


@pytest.mark.java
def test_each_table_format_prepares_the_same_tables(own_videos, tmp_path):
    from vidcap.datasets import prepare

    folder, table = own_videos
    prepared = {}
    for fmt, name in [("csv", "t.csv"), ("tsv", "t.tsv"), ("jsonl", "t.jsonl"), ("json", "t.json"),
                      ("json-dict", "d.json")]:
        path = tmp_path / name
        _write_table(path, fmt, table)
        out = tmp_path / fmt
        report = prepare("captions", out=out, table=path, videos=folder, split=(0.5, 0.25, 0.25), seed=1,
                         min_count=1)
        assert report["skipped_rows"] == {"empty_caption": 1, "unknown_split": 0, "video_not_found": 1,
                                          "video_in_two_splits": 0}, fmt
        prepared[fmt] = ((out / "captions.csv").read_bytes(), (out / "videos.csv").read_bytes())
    assert all(files == prepared["csv"] for files in prepared.values())
    captions, videos = read_captions(tmp_path / "csv"), read_videos(tmp_path / "csv")
    assert sorted(videos["video_id"]) == ["a__clip0", "a__clip1", "a__clip2", "b__clip3", "b__clip4", "b__clip5"]
    assert videos["split"].value_counts().to_dict() == {"train": 2, "val": 2, "test": 2}  # round(6 * 0.25) each
    assert captions.groupby("video_id")["split"].nunique().max() == 1  # never one video in two splits
    assert captions.groupby("video_id").size().tolist() == [2] * 6
    assert set(videos["path"]) == {str((folder / v).resolve()) for v in table}


@pytest.mark.java
def test_table_split_column_columns_and_bad_rows(own_videos, tmp_path, capsys):
    from vidcap.datasets import prepare

    folder, table = own_videos
    path = tmp_path / "mine.tsv"
    lines = ["clip\ttext\tpart"] + [f"{v}\t{c}\t{'train' if i < 4 else 'validation' if i == 4 else 'test'}"
                                    for i, (v, c) in enumerate(table.items())]
    lines += ["a/clip0.mp4\tsame clip, another split\ttest", "b/clip3.mp4\tnowhere\tholdout"]
    path.write_text("\n".join(lines) + "\n")
    report = prepare("captions", out=tmp_path / "data", table=path, videos=folder, video_column="clip",
                     caption_column="text", split_column="part", min_count=1)
    assert report["skipped_rows"] == {"empty_caption": 0, "unknown_split": 1, "video_not_found": 0,
                                      "video_in_two_splits": 1}
    assert report["split_rule"] == "the table's 'part' column"
    assert read_videos(tmp_path / "data")["split"].tolist() == ["train"] * 4 + ["val", "test"]

    assert main(["prepare", "captions", "--table", str(path), "--videos", str(folder), "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vidcap prepare: error: {path}: columns found: clip, text, part; expected: video, caption "
                   "(name them with --video-column and --caption-column)"]


# -- the pipeline: prepare -> extract -> fit -> evaluate -> caption, nothing unpacked -----------------------------
def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def _pipeline(data: Path, root: Path, videos: list[str], bad: list[str] = ()) -> dict:
    """extract -> fit (a few steps) -> evaluate -> caption --json --report of `videos` and of `bad` (each skipped with
    one line). Returns the store and the test predictions."""
    feats, run = root / "feats", root / "run"
    assert main(["extract", "--data", str(data), "--out", str(feats), "--global", "efficientnet_lite0",
                 "--global-weights", "random", "--global-size", "64", "--frames", "4", "--num-workers", "1",
                 "--no-progress"]) == 0
    assert main(["fit", "--config", str(REPO / "configs/model/global.yaml"), "--config",
                 str(REPO / "configs/trainer/cpu.yaml"), "--config", str(REPO / "configs/debug.yaml"),
                 "--data.data_dir", str(data), "--data.features_dir", str(feats), "--trainer.default_root_dir",
                 str(run), "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]) == 0
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--features", str(feats),
                 "--out", str(root / "eval"), "--report", str(root / "eval" / "report")]) == 0
    predictions = json.loads((root / "eval" / "predictions.json").read_text())
    assert set(predictions) == set(read_videos(data).query("split == 'test'")["video_id"])
    page = (root / "eval" / "report" / "index.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= len(predictions)  # each card's frames, decoded from the video
    assert main(["caption", *videos, *bad, "--checkpoint", str(checkpoint), "--json", "--report",
                 str(root / "report")]) == (1 if bad else 0)
    assert (root / "report" / "index.html").is_file()
    return {"feats": feats, "predictions": predictions}


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A fresh TMPDIR for this test and the processes it starts: what was written to it is checked afterwards."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.java
@pytest.mark.slow
def test_webdataset_pipeline_reads_videos_inside_the_shards(shards, tmp_path, private_tmp, capsys):
    data = tmp_path / "data"
    before = _files_under(shards[0].parent)
    assert main(["prepare", "webdataset", "--shards", *map(str, shards), "--split-shards", "--min-count", "1",
                 "--out", str(data), "--no-progress"]) == 1
    videos = read_videos(data)
    refs = videos["path"].tolist()[:2]
    bad = member_ref(shards[0], "000000000.json")  # a member that is not a video
    result = _pipeline(data, tmp_path, refs, [bad])
    printed = capsys.readouterr()
    assert f"skipping {bad}: not a readable video" in printed.err
    out = printed.out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [line["path"] for line in lines] == refs
    assert len(list((tmp_path / "feats" / "features").glob("*.npz"))) == len(videos)
    # Nothing unpacked: no video file anywhere but inside the shards, the shard folder unchanged, TMPDIR empty.
    assert _files_under(shards[0].parent) == before
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".mp4", ".m4a") and p.is_file()]
    assert _files_under(private_tmp) == set()
    assert result["predictions"]


@pytest.mark.java
@pytest.mark.slow
def test_captions_table_pipeline(own_videos, tmp_path, private_tmp, capsys):
    folder, table = own_videos
    path = tmp_path / "captions.jsonl"
    _write_table(path, "jsonl", table)
    data = tmp_path / "data"
    assert main(["prepare", "captions", "--table", str(path), "--videos", str(folder), "--split", "0.5,0.25,0.25",
                 "--min-count", "1", "--out", str(data)]) == 0
    assert "rows skipped: empty caption 1, video not found 1" in capsys.readouterr().out
    videos = [str(folder / v) for v in list(table)[:2]]
    _pipeline(data, tmp_path, videos)
    assert _files_under(private_tmp) == set()


def test_a_process_opens_each_shard_once(shards):
    from vidcap.video.tar_members import open_shard

    first = open_shard(shards[1])
    assert open_shard(str(shards[1])) is first  # the same handle and member index for every member read
    assert first.read("000010002_1.txt") == SHARD_CAPTIONS["left"].encode()


def test_a_shard_whose_path_has_a_comma_is_decoded_from_bytes(shards, tmp_path):
    from vidcap.video.tar_members import member_source

    odd = tmp_path / "a,b" / "00000.tar"
    odd.parent.mkdir()
    odd.write_bytes(shards[0].read_bytes())
    assert member_source(member_ref(shards[0], "000000002.mp4")).startswith("subfile,,start,")
    assert isinstance(member_source(member_ref(odd, "000000002.mp4")), bytes)
    same = [read_sampled_frames(member_ref(s, "000000002.mp4"), 4).frames for s in (shards[0], odd)]
    assert np.array_equal(*same)
