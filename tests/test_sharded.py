"""The sharded feature store (vidcap/features/sharded.py), the store interface, and extraction into shards: the
single-process engine and Ray's (vidcap/features/ray_engine.py)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from tests.helpers import make_video_dataset
from vidcap.cli import main
from vidcap.errors import UsageError
from vidcap.features import sharded
from vidcap.features import store as fs
from vidcap.features.stores import FileStore, ShardedStore, open_store


def _arrays(rng, T=6, D=8, n=None):
    n = T if n is None else n
    mask = np.arange(T) < n
    return {"global": rng.standard_normal((T, D)).astype(np.float32) * mask[:, None], "mask": mask,
            "times": np.arange(T, dtype=np.float32) / 2}


def _sharded_store(root, videos: dict[str, dict], shard_size=3, split="train"):
    """A sharded store of `videos` ({id: arrays}) written through the module's own writer."""
    meta = {"format": fs.FORMAT, "num_frames": 6, "dtype": "float16", "global": {"name": "fake", "dim": 8},
            "local": None}
    sharded.prepare_sharded_store(root, meta)
    ids = list(videos)
    for n, start in enumerate(range(0, len(ids), shard_size)):
        chunk = ids[start : start + shard_size]
        sharded.write_shard(root, sharded.shard_name(split, n),
                            [(vid, sharded.encode_sample(videos[vid])) for vid in chunk], writer="test:0")
    sharded.write_summary(root)
    return root


def test_shards_hold_what_the_per_file_store_holds(tmp_path):
    rng = np.random.default_rng(0)
    videos = {f"clip.{i:02d}": _arrays(rng, n=6 - i % 3) for i in range(7)}  # ids with dots, as LSMDC's
    store = _sharded_store(tmp_path / "shards", videos)
    (tmp_path / "files" / "features").mkdir(parents=True)
    for vid, arrays in videos.items():
        fs.save_features(tmp_path / "files", vid, arrays)
    assert json.loads((store / "shards.json").read_text()) == {"train-000000": 3, "train-000001": 3,
                                                                "train-000002": 1}
    opened, files = open_store(store), FileStore(tmp_path / "files", {})
    assert isinstance(opened, ShardedStore) and opened.ids() == opened.ids("train") == sorted(videos)
    assert opened.ids("test") == []
    for vid in videos:
        a, b = opened.load(vid), files.load(vid)
        assert sorted(a) == sorted(b) == ["global", "mask", "times"]
        for key in a:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(UsageError, match="no features for video 'nope'"):
        opened.load("nope")
    assert opened.verify() == []


def test_shards_are_webdataset_tars(tmp_path):
    import webdataset as wds

    rng = np.random.default_rng(1)
    videos = {f"v{i}.x": _arrays(rng) for i in range(4)}
    store = _sharded_store(tmp_path, videos, shard_size=4)
    samples = list(wds.WebDataset(str(sharded.shard_path(store, "train-000000")), shardshuffle=False))
    assert [json.loads(s["json"])["video_id"] for s in samples] == list(videos)
    assert all(s["__key__"].isdigit() for s in samples)
    got = np.load(io.BytesIO(samples[2]["npz"]))["global"]
    np.testing.assert_array_equal(got, videos["v2.x"]["global"].astype(np.float16))


def test_verify_names_shard_and_sample_of_a_flipped_byte_and_a_truncated_shard(tmp_path):
    rng = np.random.default_rng(2)
    videos = {f"v{i}": _arrays(rng) for i in range(6)}
    store = _sharded_store(tmp_path, videos)
    first = sharded.read_index(store, "train-000000")
    path = sharded.shard_path(store, "train-000000")
    data = bytearray(path.read_bytes())
    data[first[1].offset + first[1].size // 2] ^= 0xFF  # a byte of v1's features
    path.write_bytes(bytes(data))
    second = sharded.shard_path(store, "train-000001")
    second.write_bytes(second.read_bytes()[: sharded.read_index(store, "train-000001")[2].offset + 10])  # v5 cut
    problems = sharded.verify(store)
    assert [(p.shard, p.video_id) for p in problems] == [("train-000000", "v1"), ("train-000001", "v5")]
    assert "checksum mismatch" in problems[0].reason and "truncated" in problems[1].reason
    assert str(problems[0]).startswith("train-000000.tar sample v1: ")
    with pytest.raises(UsageError, match=r"train-000000\.tar sample v1: checksum mismatch .*vidcap verify"):
        open_store(store).load("v1")
    np.testing.assert_array_equal(open_store(store).load("v0")["mask"], videos["v0"]["mask"])  # the rest is fine
    assert sharded.forget(store, problems) == 2
    assert sharded.verify(store) == [] and open_store(store).ids() == ["v0", "v2", "v3", "v4"]
    assert "corrupt in shard train-000000" in fs.read_failures(store)["v1"][0]


def test_a_store_of_another_layout_is_refused(tmp_path):
    meta = {"format": fs.FORMAT, "num_frames": 6, "dtype": "float16", "global": {"name": "fake", "dim": 8},
            "local": None}
    fs.prepare_store(tmp_path, meta)
    with pytest.raises(UsageError, match="holds other features.*layout"):
        sharded.prepare_sharded_store(tmp_path, meta)
    assert isinstance(open_store(tmp_path), FileStore)


# --------------------------------------------------------------------------------------------------------------------
# Extraction


def _extract(data, store, *extra) -> list[str]:
    return ["extract", "--data", str(data), "--out", str(store), "--no-progress", "--threads", "1", "--global",
            "efficientnet_lite0", "--global-size", "32", "--frames", "3", "--batch-size", "4", *extra]


def _manifest(store) -> dict[str, str]:
    with open(store / "manifest.csv", newline="") as f:
        return {row["video_id"]: row["status"] for row in csv.DictReader(f)}


@pytest.mark.slow
def test_extract_into_shards_resumes_and_reextracts_what_verify_found(tmp_path, capsys):
    data = tmp_path / "data"
    make_video_dataset(data, 5)
    files, shards = tmp_path / "files", tmp_path / "shards"
    assert main(_extract(data, files, "--num-workers", "0")) == 1  # the broken videos fail
    assert main(_extract(data, shards, "--num-workers", "0", "--store", "shards", "--shard-size", "2")) == 1
    assert "skipping" in capsys.readouterr().err
    # train: good0, good2, good4 (+ 5 broken ones that fail); test: good1, good3
    assert sharded.read_summary(shards) == {"test-000000": 2, "train-000001": 2, "train-000002": 1}
    assert _manifest(shards) == _manifest(files)
    opened = open_store(shards)
    assert opened.meta["layout"] == "shards" and opened.ids() == [f"good{i}" for i in range(5)]
    for vid in opened.ids():
        a, b = opened.load(vid), fs.load_features(files, vid)
        for key in ("global", "mask", "times"):
            np.testing.assert_array_equal(a[key], b[key])
    # A killed run left a shard without its index, a byte flipped in another, a third truncated: their videos are
    # extracted again, and only them.
    (sharded.index_path(shards, "train-000002")).unlink()
    index = sharded.read_index(shards, "train-000001")
    tar = sharded.shard_path(shards, "train-000001")
    data_bytes = bytearray(tar.read_bytes())
    data_bytes[index[0].offset + 200] ^= 0x01
    tar.write_bytes(bytes(data_bytes))
    cut = sharded.shard_path(shards, "test-000000")
    cut.write_bytes(cut.read_bytes()[: sharded.read_index(shards, "test-000000")[1].offset + 10])
    capsys.readouterr()
    assert main(["verify", str(shards), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "train-000001.tar sample good0: checksum mismatch" in err and "test-000000.tar sample good3: truncated" in err
    assert "good2" not in err and "good1" not in err
    assert main(_extract(data, shards, "--num-workers", "0", "--store", "shards", "--shard-size", "2")) == 1
    out = capsys.readouterr().out  # good0, good3 (corrupt), good4 (unfinished shard); the 5 broken ones fail again
    assert "3 extracted (2 of them to replace files that failed their checksum), 2 already done, 5 failed" in out
    assert main(["verify", str(shards), "--no-progress"]) == 0
    assert main(["verify", str(shards), "--no-progress", "--quick"]) == 0
    # New shards numbered after the last: test good3, then train good0 and good4.
    assert sharded.read_summary(shards) == {"test-000000": 1, "test-000002": 1, "train-000001": 1, "train-000003": 2}
    assert open_store(shards).ids() == [f"good{i}" for i in range(5)]
    np.testing.assert_array_equal(open_store(shards).load("good0")["global"], fs.load_features(files, "good0")["global"])


def test_verify_on_a_sharded_store_names_shard_and_sample_and_the_missing_shards(tmp_path, capsys):
    rng = np.random.default_rng(3)
    videos = {f"v{i}": _arrays(rng) for i in range(9)}
    store = _sharded_store(tmp_path, videos)
    assert main(["verify", str(store), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == f"{store}: 9 samples in 3 shards checked (SHA-256), 0 bad, 0 missing"
    first = sharded.read_index(store, "train-000000")
    path = sharded.shard_path(store, "train-000000")
    data = bytearray(path.read_bytes())
    data[first[2].offset + 3] ^= 0x40  # a byte of v2's features
    path.write_bytes(bytes(data))
    second = sharded.shard_path(store, "train-000001")
    second.write_bytes(second.read_bytes()[: sharded.read_index(store, "train-000001")[1].offset + 1])  # v4, v5 cut
    sharded.shard_path(store, "train-000002").unlink()
    assert main(["verify", str(store), "--no-progress"]) == 1
    captured = capsys.readouterr()
    shards = sharded.shards_dir(store)
    lines = captured.err.strip().splitlines()
    assert lines[:4] == [f"bad: {shards}/train-000000.tar sample v2: checksum mismatch (corrupt shard)",
                         f"bad: {shards}/train-000001.tar sample v4: truncated shard "
                         f"({sharded.read_index(store, 'train-000001')[1].offset + 1} bytes, the sample ends at "
                         f"{sharded.read_index(store, 'train-000001')[1].offset + sharded.read_index(store, 'train-000001')[1].size})",
                         lines[2], f"missing: {shards}/train-000002.tar"]
    assert lines[2].startswith(f"bad: {shards}/train-000001.tar sample v5: truncated shard")
    assert "3 bad, 1 missing" in captured.out and "repair: rerun the `vidcap extract" in lines[-1]
    assert open_store(store).verify() == [line.removeprefix("bad: ") for line in lines[:3]] + [
        f"{shards}/train-000002.tar: missing"]
    # The quick check reads no sample: the truncated shard and the missing one, not the flipped byte.
    assert main(["verify", str(store), "--no-progress", "--quick"]) == 1
    captured = capsys.readouterr()
    assert "v2" not in captured.err and "sample v4: truncated" in captured.err and "train-000002.tar" in captured.err
    assert "(sizes), 2 bad, 1 missing" in captured.out


@pytest.mark.slow
def test_features_of_videos_inside_video2dataset_shards_are_keyed_like_their_source(tmp_path):
    from tests.helpers import smooth_frames, write_video, write_video2dataset_shards, write_video_table

    sources = write_video2dataset_shards(tmp_path / "v2d")[:3]  # the last one is truncated
    rows = []
    for number, source in enumerate(sources):
        with tarfile.open(source) as tar:
            members = sorted(m.name for m in tar.getmembers() if m.name.endswith(".mp4"))
        for i, member in enumerate(members):
            split = "val" if number == 2 else "test" if (number, i) == (0, 0) else "train"
            rows.append((member[: -len(".mp4")], split, f"{source}::{member}"))
    data = tmp_path / "data"
    data.mkdir()
    plain = write_video(data / "plain.mp4", smooth_frames(10, 0))
    write_video_table(data, [*rows, ("plain", "train", str(plain))])
    assert main(_extract(data, tmp_path / "feats", "--num-workers", "0", "--store", "shards", "--shard-size", "1")) == 0
    summary = sharded.read_summary(tmp_path / "feats")
    # 00000.tar: one test video, the rest train; 00001.tar: train; 00002.tar: val; the plain video: a new number.
    assert sorted(summary) == ["test-000000", "train-000000", "train-000001", "train-000003", "val-000002"]
    assert summary["train-000001"] == sum(1 for r in rows if r[2].startswith(f"{sources[1]}::"))
    assert [e.video_id for e in sharded.read_index(tmp_path / "feats", "train-000003")] == ["plain"]
    assert open_store(tmp_path / "feats").ids() == sorted([r[0] for r in rows] + ["plain"])


def test_ray_flags_are_checked_before_any_work(tmp_path, capsys):
    data = tmp_path / "data"
    make_video_dataset(data, 1, broken=False)
    assert main(_extract(data, tmp_path / "a", "--engine", "ray")) == 2
    assert "add --store shards" in capsys.readouterr().err
    assert main(_extract(data, tmp_path / "b", "--store", "shards", "--ray-address", "auto")) == 2
    assert "--ray-address needs --engine ray" in capsys.readouterr().err


@pytest.mark.slow
def test_an_unreachable_ray_cluster_is_one_line_and_exit_2(tmp_path):
    data = tmp_path / "data"
    make_video_dataset(data, 1, broken=False)
    proc = subprocess.run([sys.executable, "-m", "vidcap", *_extract(data, tmp_path / "s", "--store", "shards",
                                                                     "--engine", "ray", "--ray-address",
                                                                     "127.0.0.1:9")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_engine_gives_the_single_process_features_exactly(tmp_path):
    data = tmp_path / "data"
    make_video_dataset(data, 5)
    common = ["--store", "shards", "--shard-size", "2", "--num-workers", "0"]
    assert main(_extract(data, tmp_path / "one", *common)) == 1
    assert main(_extract(data, tmp_path / "ray", *common, "--engine", "ray")) == 1
    one, ray = open_store(tmp_path / "one"), open_store(tmp_path / "ray")
    assert sharded.read_summary(one.path) == sharded.read_summary(ray.path)
    for name in sharded.read_summary(one.path):
        a, b = sharded.read_index(one.path, name), sharded.read_index(ray.path, name)
        assert [(e.video_id, e.sha256) for e in a] == [(e.video_id, e.sha256) for e in b]  # byte for byte
    assert _manifest(one.path) == _manifest(ray.path)
    meta_one, meta_ray = one.meta, ray.meta
    assert fs.comparable_meta(meta_one) == fs.comparable_meta(meta_ray)
    with tarfile.open(sharded.shard_path(ray.path, "test-000000")) as tar:
        assert [m.name for m in tar.getmembers()][:2] == ["00000000000.json", "00000000000.npz"]


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(300)
def test_devices_2_gives_the_single_process_shards_sample_by_sample(tmp_path):
    data = tmp_path / "data"
    make_video_dataset(data, 5)
    common = ["--store", "shards", "--shard-size", "2", "--num-workers", "0"]
    assert main(_extract(data, tmp_path / "one", *common)) == 1  # the broken videos fail, in both
    assert main(_extract(data, tmp_path / "two", *common, "--devices", "2")) == 1
    one, two = open_store(tmp_path / "one"), open_store(tmp_path / "two")
    assert sharded.read_summary(one.path) == sharded.read_summary(two.path)
    writers = set()
    for name in sharded.read_summary(one.path):
        a, b = sharded.read_index(one.path, name), sharded.read_index(two.path, name)
        assert [(e.video_id, e.sha256) for e in a] == [(e.video_id, e.sha256) for e in b]
        writers.add(json.loads(sharded.index_path(two.path, name).read_text())["writer"].rsplit(":", 1)[1])
    assert writers == {"0", "1"}  # both processes wrote shards, none twice
    assert _manifest(one.path) == _manifest(two.path)
    assert fs.comparable_meta(one.meta) == fs.comparable_meta(two.meta)


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(400)
def test_two_torchrun_nodes_write_the_single_process_shards(tmp_path):
    from tests.helpers import torchrun_nodes

    data = tmp_path / "data"
    make_video_dataset(data, 5)
    common = ["--store", "shards", "--shard-size", "2", "--num-workers", "0"]
    assert main(_extract(data, tmp_path / "one", *common)) == 1
    args = ["vidcap", *_extract(data, tmp_path / "two", *common)]
    (code0, out0, err0), (code1, out1, err1) = torchrun_nodes([args, args], tmp_path / "logs")
    assert (code0, code1) == (1, 1), err0[-3000:] + err1[-3000:]  # the broken videos fail on both
    assert "5 extracted, 0 already done, 5 failed, of 10 videos" in out0 and "extracted" not in out1  # rank 0 reports
    one, two = open_store(tmp_path / "one"), open_store(tmp_path / "two")
    assert sharded.read_summary(one.path) == sharded.read_summary(two.path)
    writers = {}
    for name in sharded.read_summary(one.path):
        a, b = sharded.read_index(one.path, name), sharded.read_index(two.path, name)
        assert [(e.video_id, e.sha256) for e in a] == [(e.video_id, e.sha256) for e in b]
        writers[name] = json.loads(sharded.index_path(two.path, name).read_text())["writer"].rsplit(":", 1)[1]
    assert sorted(set(writers.values())) == ["0", "1"]
    assert _manifest(one.path) == _manifest(two.path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_retries_a_decode_task_whose_worker_died(tmp_path, monkeypatch):
    from vidcap.features.ray_engine import DIE_ONCE

    data = tmp_path / "data"
    make_video_dataset(data, 3, broken=False)
    common = ["--store", "shards", "--shard-size", "2", "--num-workers", "0"]
    assert main(_extract(data, tmp_path / "one", *common)) == 0
    marker = tmp_path / "died"
    monkeypatch.setenv(DIE_ONCE, f"good2={marker}")
    assert main(_extract(data, tmp_path / "ray", *common, "--engine", "ray")) == 0
    assert marker.exists()  # the worker decoding good2 did die, and the retried task completed the run
    one, ray = open_store(tmp_path / "one"), open_store(tmp_path / "ray")
    assert sharded.read_summary(one.path) == sharded.read_summary(ray.path)
    assert "good2" in ray.ids()
    for name in sharded.read_summary(one.path):
        a, b = sharded.read_index(one.path, name), sharded.read_index(ray.path, name)
        assert [(e.video_id, e.sha256) for e in a] == [(e.video_id, e.sha256) for e in b]
    assert _manifest(one.path) == _manifest(ray.path)
