"""Training batches streamed from a sharded store (vidcap/training/streaming.py): DDP ranks and loader workers split
the shards with every sample once per epoch, the shuffle buffer, mid-epoch resume, a bad sample; and `vidcap fit`
on a sharded store, in one process and in two DDP processes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import DG, WORDS, T, read_seen_videos, write_feature_dataset
from vidcap.errors import UsageError
from vidcap.features import sharded
from vidcap.features import store as fs
from vidcap.text.vocab import Vocabulary
from vidcap.training.data import read_split
from vidcap.training.streaming import ShardStream, stream_loader


def _stream_store(root: Path, n: int, shard_size: int) -> tuple[Path, object]:
    """n train videos `v0000`.. of random features in shards of shard_size, and their SplitCaptions (one caption
    each; v0003 has two)."""
    rng = np.random.default_rng(0)
    meta = {"format": fs.FORMAT, "num_frames": T, "dtype": "float16", "global": {"name": "fake", "dim": DG},
            "local": None}
    sharded.prepare_sharded_store(root, meta)
    ids = [f"v{i:04d}" for i in range(n)]
    for k, start in enumerate(range(0, n, shard_size)):
        samples = [(vid, sharded.encode_sample({"global": rng.standard_normal((T, DG)), "mask": np.ones(T, bool),
                                                "times": np.arange(T, dtype=np.float32)})) for vid in
                   ids[start : start + shard_size]]
        sharded.write_shard(root, sharded.shard_name("train", k), samples)
    sharded.write_summary(root)
    rows = [(vid, "train", "a man is cooking") for vid in ids] + [("v0003", "train", "the dog is running")]
    table = pd.DataFrame(rows, columns=["video_id", "split", "caption"])
    captions, _ = read_split(table.assign(tokens=table["caption"]), "train", Vocabulary(WORDS), 30, set(ids))
    return root, captions


def _ids(batches) -> list[str]:
    return [vid for batch in batches for vid in batch["video_ids"]]


def _stream(store, captions, batch_size=4, buffer=8, **kw) -> ShardStream:
    return ShardStream(store, sharded.read_summary(store), captions, batch_size, buffer, seed=7, **kw)


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (3, 0), (2, 2)])
def test_ranks_and_workers_see_every_sample_once_per_epoch(tmp_path, world, workers):
    store, captions = _stream_store(tmp_path, 23, 5)
    per_rank, batches = [], []
    for rank in range(world):
        loader = stream_loader(_stream(store, captions).distribute(rank, world, workers), workers)
        got = list(loader)
        assert len(got) == len(loader.dataset)  # every rank makes the batches it announced
        batches.append(len(got))
        per_rank.append(_ids(got))
    assert len(set(batches)) == 1  # DDP: no rank waits for another
    seen = Counter(vid for ids in per_rank for vid in ids)
    assert set(seen) == {f"v{i:04d}" for i in range(23)}
    slots = world * max(1, workers)
    padding = slots * -(-23 // slots) - 23
    assert sum(seen.values()) == 23 + padding and padding < slots  # repeats only to even the slots out
    if padding == 0:
        assert set(seen.values()) == {1}


def test_epochs_shuffle_differently_and_the_buffer_mixes_shards(tmp_path):
    store, captions = _stream_store(tmp_path, 40, 10)
    dataset = _stream(store, captions, batch_size=40, buffer=20)
    first, second = _ids(iter(dataset)), _ids(iter(dataset))  # __iter__ starts the next epoch
    assert sorted(first) == sorted(second) == [f"v{i:04d}" for i in range(40)]
    assert first != second
    unbuffered = _ids(iter(_stream(store, captions, batch_size=40, buffer=1)))
    shards = [int(vid[1:]) // 10 for vid in unbuffered]
    assert shards == sorted(shards, key=shards.index)  # without a buffer a shard's samples come together
    assert sum(a != b for a, b in zip(shards, shards[1:], strict=False)) == 3
    mixed = [int(vid[1:]) // 10 for vid in first]
    assert sum(a != b for a, b in zip(mixed, mixed[1:], strict=False)) > 10


def test_persistent_workers_count_their_epochs(tmp_path):
    store, captions = _stream_store(tmp_path, 20, 5)
    loader = stream_loader(_stream(store, captions).distribute(0, 1, 2), 2)
    first, second = _ids(loader), _ids(loader)
    assert sorted(first) == sorted(second) == [f"v{i:04d}" for i in range(20)] and first != second


def test_a_video_with_two_captions_brings_both(tmp_path):
    store, captions = _stream_store(tmp_path, 6, 3)
    (batch,) = list(_stream(store, captions, batch_size=6, shuffle=False))
    assert batch["video_ids"] == [f"v{i:04d}" for i in range(6)]
    assert batch["global"].shape == (6, T, DG) and batch["inputs"].shape[0] == 7
    assert batch["caption_video"].tolist().count(3) == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_from_the_loader_state(tmp_path, workers):
    store, captions = _stream_store(tmp_path, 30, 4)
    whole = [_ids([b]) for b in stream_loader(_stream(store, captions).distribute(0, 1, workers), workers)]
    loader = stream_loader(_stream(store, captions).distribute(0, 1, workers), workers)
    it = iter(loader)
    before = [_ids([next(it)]) for _ in range(3)]
    state = json.loads(json.dumps(loader.state_dict()))  # what a checkpoint keeps must survive JSON-like storage
    del it, loader
    resumed = stream_loader(_stream(store, captions).distribute(0, 1, workers), workers)
    resumed.load_state_dict(state)
    after = [_ids([b]) for b in resumed]
    assert before + after == whole
    if workers == 0:  # (a loader whose workers fail at their start takes 10 s to shut down: checked in-process)
        other = stream_loader(_stream(store, captions).distribute(0, 2, workers), workers)  # another world size
        with pytest.raises(UsageError, match="resume with the same ones"):
            other.load_state_dict(state)
            next(iter(other))


def test_a_corrupt_sample_stops_the_epoch_with_one_line_naming_it(tmp_path):
    store, captions = _stream_store(tmp_path, 8, 4)
    entry = sharded.read_index(store, "train-000001")[2]
    path = sharded.shard_path(store, "train-000001")
    data = bytearray(path.read_bytes())
    data[entry.offset + 100] ^= 0x10
    path.write_bytes(bytes(data))
    for workers in (0, 1):
        with pytest.raises(UsageError) as caught:
            list(stream_loader(_stream(store, captions).distribute(0, 1, workers), workers))
        message = str(caught.value)
        assert "\n" not in message and "train-000001.tar sample v0006: checksum mismatch" in message
        assert "vidcap verify" in message
    skipping = _stream(store, captions, batch_size=8, skip_corrupt=True)
    assert sorted(_ids(skipping)) == [f"v{i:04d}" for i in range(8) if i != 6] and skipping.skipped == 1


# --------------------------------------------------------------------------------------------------------------------
# `vidcap fit` on a sharded store


def _shard_the_store(store: Path, out: Path) -> Path:
    """The per-file store of write_feature_dataset as a sharded store (3 videos per shard, split by captions.csv)."""
    meta = fs.read_meta(store)
    sharded.prepare_sharded_store(out, meta)
    with open(store.parent / "data" / "captions.csv", newline="") as f:
        split_of = {row["video_id"]: row["split"] for row in csv.DictReader(f)}
    number = 0
    for split in ("train", "val", "test"):
        ids = sorted(vid for vid in fs.list_features(store) if split_of[vid] == split)
        for start in range(0, len(ids), 3):
            samples = [(vid, sharded.encode_sample(fs.load_features(store, vid))) for vid in ids[start : start + 3]]
            sharded.write_shard(out, sharded.shard_name(split, number), samples)
            number += 1
    sharded.write_summary(out)
    return out


def test_evaluation_splits_read_a_sharded_store_as_a_per_file_one(tmp_path):
    from vidcap.training.data import CaptionDataModule

    data, store = write_feature_dataset(tmp_path)
    shards = _shard_the_store(store, tmp_path / "shards")
    batches = []
    for features in (store, shards):
        module = CaptionDataModule(str(data), str(features), batch_size=3, num_workers=0)
        module.setup("test")
        batches.append(list(module.test_dataloader()))
    assert len(batches[0]) == len(batches[1]) == 2  # 5 test videos
    for a, b in zip(*batches, strict=True):
        assert a["video_ids"] == b["video_ids"] and a["references"] == b["references"]
        assert torch.equal(a["global"], b["global"]) and torch.equal(a["mask"], b["mask"])


def _fit_args(data, store, root, *extra) -> list[str]:
    configs = Path(__file__).parents[1] / "configs"
    return ["fit", "--config", str(configs / "data/synthetic.yaml"), "--config", str(configs / "model/global.yaml"),
            "--config", str(configs / "trainer/cpu.yaml"), "--config", str(configs / "debug.yaml"),
            "--data.data_dir", str(data), "--data.features_dir", str(store), "--trainer.limit_train_batches", "1.0",
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *extra]


@pytest.mark.slow
def test_fit_on_a_sharded_store_resumes_mid_epoch_from_a_step_checkpoint(tmp_path):
    from vidcap.cli import main

    data, store = write_feature_dataset(tmp_path)
    shards = _shard_the_store(store, tmp_path / "shards")
    seen = tmp_path / "seen"
    seen.mkdir()
    common = ["--trainer.callbacks+=tests.helpers.SeenVideos", "--trainer.callbacks.out", str(seen),
              "--checkpoint.every_n_train_steps", "1", "--trainer.val_check_interval", "2"]
    # 12 training videos, 4 a batch: 3 steps an epoch. Stop after 2, as a killed run would have.
    assert main(_fit_args(data, shards, tmp_path / "run", *common, "--trainer.max_steps", "2")) == 0
    assert main(_fit_args(data, shards, tmp_path / "run", *common, "--ckpt_path", "last")) == 0
    (batches,) = read_seen_videos(seen).values()
    assert [epoch for epoch, _ in batches] == [0, 0, 0]
    assert sorted(vid for _, ids in batches for vid in ids) == [f"v{i:02d}" for i in range(12)]


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(400)
def test_fit_with_two_ddp_processes_sees_every_training_video_once_per_epoch(tmp_path):
    data, store = write_feature_dataset(tmp_path)
    shards = _shard_the_store(store, tmp_path / "shards")
    seen = tmp_path / "seen"
    seen.mkdir()
    args = _fit_args(data, shards, tmp_path / "run", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                     "--trainer.max_epochs", "2", "--trainer.callbacks+=tests.helpers.SeenVideos",
                     "--trainer.callbacks.out", str(seen))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "vidcap", *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=360, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_seen_videos(seen)
    assert sorted(records) == [0, 1] and len(records[0]) == len(records[1])  # as many steps on both ranks
    for epoch in (0, 1):
        ids = [vid for rank in (0, 1) for e, batch in records[rank] if e == epoch for vid in batch]
        assert sorted(ids) == [f"v{i:02d}" for i in range(12)]  # 12 videos over 2 ranks: each exactly once


def _flip(store: Path, name: str, sample: int) -> str:
    entry = sharded.read_index(store, name)[sample]
    path = sharded.shard_path(store, name)
    data = bytearray(path.read_bytes())
    data[entry.offset + entry.size // 2] ^= 0x08
    path.write_bytes(bytes(data))
    return entry.video_id


def _cut(store: Path, name: str, sample: int) -> str:
    entry = sharded.read_index(store, name)[sample]
    path = sharded.shard_path(store, name)
    path.write_bytes(path.read_bytes()[: entry.offset + 5])
    return entry.video_id


@pytest.mark.slow
def test_fit_stops_at_a_corrupt_training_sample_with_one_line_or_skips_and_counts_it(tmp_path, capsys, caplog):
    from vidcap.cli import main

    data, store = write_feature_dataset(tmp_path)
    shards = _shard_the_store(store, tmp_path / "shards")
    bad = _flip(shards, "train-000001", 1)
    assert main(_fit_args(data, shards, tmp_path / "run")) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("watch the training")]
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert f"train-000001.tar sample {bad}: checksum mismatch" in err[0] and f"vidcap verify {shards}" in err[0]
    assert main(_fit_args(data, shards, tmp_path / "skip", "--data.skip_corrupt", "true")) == 0
    assert f"skipping {sharded.shard_path(shards, 'train-000001')} sample {bad}" in caplog.text
    assert "(1 skipped so far" in caplog.text


@pytest.mark.slow
def test_fit_and_evaluate_check_the_shards_of_their_evaluation_splits_before_the_first_step(tmp_path, capsys, caplog):
    from vidcap.cli import main

    data, store = write_feature_dataset(tmp_path)
    shards = _shard_the_store(store, tmp_path / "shards")
    assert main(_fit_args(data, shards, tmp_path / "good")) == 0
    checkpoint = tmp_path / "good" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    capsys.readouterr()
    cut = _cut(shards, "val-000004", 1)  # v13 and v14 lie past the new end
    root = tmp_path / "run"
    assert main(_fit_args(data, shards, root)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"val-000004.tar sample {cut}: truncated shard" in err[0] and "val-000004.tar sample v14" in err[0]
    assert f"run `vidcap verify {shards}`" in err[0] and "--data.skip_corrupt true" in err[0]
    assert not (root / "checkpoints").exists()  # refused before the first step
    assert main([*_fit_args(data, shards, root), "--data.skip_corrupt", "true"]) == 0
    assert "skipping 2 bad shard(s) or sample(s) of split 'val'" in caplog.text
    # evaluate: a test shard gone (its index left) is refused before decoding, or skipped.
    sharded.shard_path(shards, "test-000006").unlink()
    capsys.readouterr()
    out = tmp_path / "eval"
    evaluate = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--features", str(shards),
                "--split", "test", "--out", str(out)]
    assert main(evaluate) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test-000006.tar: missing" in err[0] and "evaluate --skip-corrupt" in err[0], err
    assert not out.exists()
    assert main([*evaluate, "--skip-corrupt"]) == 0
    assert "skipping 1 bad shard(s) or sample(s) of split 'test'" in caplog.text
    assert "test: 2 of 5 videos have no features" in caplog.text  # test-000006's two, and nothing else
