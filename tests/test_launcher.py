"""`vidcap extract` under torchrun and srun (vidcap/launcher.py): two "nodes" on this machine, one process each, share
one store; a mismatched node is refused before any work; a node killed mid-run leaves a store the rerun completes.
`vidcap evaluate`: a node that fails a check stops every node (its results under torchrun: tests/test_evaluate.py)."""

from __future__ import annotations

import csv
import socket
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.helpers import (
    KILL_DURING_WRITE,
    free_port,
    make_video_dataset,
    run_nodes,
    srun_env,
    torchrun_nodes,
)
from vidcap.cli import main
from vidcap.errors import UsageError
from vidcap.features.extract import read_video_table
from vidcap.features.store import list_features, load_features, record_failure, save_features, write_manifest
from vidcap.launcher import Process, devices_per_node

HOST = socket.gethostname()
EXTRACT = ["extract", "--global", "efficientnet_lite0", "--global-weights", "random", "--global-size", "64",
           "--batch-size", "4", "--num-workers", "0", "--threads", "1", "--no-progress"]


def _manifest(store: Path) -> dict[str, dict[str, str]]:
    with open(store / "manifest.csv", newline="") as f:
        return {row["video_id"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
@pytest.mark.ddp
def test_two_torchrun_nodes_share_the_work_and_write_every_video_once(tmp_path):
    data, store = tmp_path / "data", tmp_path / "feats"
    make_video_dataset(data, 4, broken=True)  # 4 good videos, then 5 broken ones: 9 in all
    args = ["vidcap", *EXTRACT, "--data", str(data), "--out", str(store), "--frames", "3"]
    (code0, out0, err0), (code1, out1, err1) = torchrun_nodes([args, args], tmp_path / "logs")
    # The broken videos: every worker exits 1 (torchrun prints the code and exits 1 itself).
    assert (code0, code1) == (1, 1) and "exitcode  : 1" in err0 + err1, err0[-3000:] + err1[-3000:]
    assert "4 extracted, 0 already done, 5 failed, of 9 videos" in out0 and "extracted" not in out1  # rank 0 reports
    manifest = _manifest(store)
    assert len(manifest) == 9
    # Videos.csv order, dealt round-robin: rank 0 has positions 0, 2, 4, ..., rank 1 the others; each written once.
    order = [f"good{i}" for i in range(4)] + [f"bad_{n}" for n in ["empty", "text", "truncated", "audio", "missing"]]
    assert {vid: row["writer"] for vid, row in manifest.items()} == {
        vid: f"{HOST}:{position % 2}" for position, vid in enumerate(order)
    }
    assert [manifest[f"good{i}"]["status"] for i in range(4)] == ["ok"] * 4
    paths = {vid: path for vid, path in read_video_table(data)}
    for rank, err in enumerate([err0, err1]):  # each node met only its own broken videos
        skipped = {line.split(": ")[0] for line in err.splitlines() if line.startswith("skipping ")}
        assert skipped == {f"skipping {paths[vid]}" for vid in order[rank::2] if vid.startswith("bad_")}
    assert load_features(store, "good1")["global"].shape == (3, 1280)


@pytest.mark.slow
@pytest.mark.ddp
def test_a_node_with_other_settings_is_refused_before_any_work(tmp_path):
    data, store = tmp_path / "data", tmp_path / "feats"
    make_video_dataset(data, 2, broken=False)
    args = ["vidcap", *EXTRACT, "--data", str(data), "--out", str(store)]
    results = torchrun_nodes([[*args, "--frames", "3"], [*args, "--frames", "4"]], tmp_path / "logs")
    expected = (f"vidcap extract: error: process {HOST}:1: {store / 'meta.json'}: this store holds other features "
                "(num_frames 3 != 4; sampling.num_frames 3 != 4); use another --out folder or the same settings")
    for code, _, err in results:  # every worker exits 2; torchrun itself says 1 (a worker failed)
        assert code == 1 and "exitcode  : 2" in err
        assert [line for line in err.splitlines() if line.startswith("vidcap extract")] == [f"{expected} (features must not "
                                                                                   "be mixed)"]
    assert list_features(store) == [] and not (store / "manifest.csv").exists()


@pytest.mark.slow
@pytest.mark.ddp
def test_a_node_killed_mid_run_leaves_complete_files_and_the_rerun_completes_the_store(tmp_path):
    data, store = tmp_path / "data", tmp_path / "feats"
    make_video_dataset(data, 6, broken=False)
    args = [*EXTRACT, "--data", str(data), "--out", str(store), "--frames", "3"]
    killer = tmp_path / "kill_during_write.py"  # SIGKILLs its process while writing its LIMIT + 1-th video
    killer.write_text(KILL_DURING_WRITE)
    (_, _, err0), (code1, _, err1) = torchrun_nodes([[str(killer), "99", *args], [str(killer), "1", *args]],
                                                    tmp_path / "logs", module=False, enough="vidcap extract: error")
    # Node 1 died writing its second video; node 0 finished its share and stopped at the barrier with one line.
    assert code1 == 1 and "exitcode  : -9" in err1, err1[-3000:]
    assert "another process stopped before finishing its share" in err0
    assert list_features(store) == ["good0", "good1", "good2", "good4"]
    assert not (store / "manifest.csv").exists()

    assert main(args) == 0  # the rerun: one process, the rest of the videos
    manifest = _manifest(store)
    assert {vid: row["writer"] for vid, row in manifest.items()} == {
        "good0": f"{HOST}:0", "good2": f"{HOST}:0", "good4": f"{HOST}:0", "good1": f"{HOST}:1",
        "good3": f"{HOST}:0", "good5": f"{HOST}:0",
    }
    assert sorted(p.name for p in (store / "features").iterdir()) == [f"good{i}.npz" for i in range(6)]


def _random_checkpoint(path: Path, data: Path, store: Path) -> Path:
    """A random-init `global` CaptionModule (E 8, H 16, A 8) saved as `vidcap fit` saves one."""
    import torch

    from vidcap.features.store import read_meta
    from vidcap.model.captioner import ModelConfig
    from vidcap.text.vocab import Vocabulary
    from vidcap.training.module import CaptionModule

    vocab, meta = Vocabulary.load(data / "vocab.json"), read_meta(store)
    config = ModelConfig(vocab_size=len(vocab), global_dim=meta["global"]["dim"], variant="global",
                         max_frames=meta["num_frames"], embed_dim=8, hidden_dim=16, attention_dim=8)
    module = CaptionModule(config, vocab=vocab.to_dict(), feature_meta=meta)
    torch.save({"state_dict": module.state_dict(), "vidcap": module.vidcap_metadata()}, path)
    return path


@pytest.mark.slow
@pytest.mark.ddp
def test_evaluate_stops_every_node_when_one_fails_its_checks(tmp_path):
    """Node 1 sees a store without the test split's features (a stale mount): both nodes exit 2 with its one line
    at once. Node 0 used to go on into the test loop alone: a traceback when gloo saw node 1 leave, and with NCCL
    across machines, 30 minutes of waiting first."""
    from tests.helpers import write_feature_dataset

    data, store = write_feature_dataset(tmp_path)
    checkpoint = _random_checkpoint(tmp_path / "random.ckpt", data, store)
    empty = tmp_path / "empty"
    (empty / "features").mkdir(parents=True)
    (empty / "meta.json").write_text((store / "meta.json").read_text())
    args = ["vidcap", "evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "eval")]
    results = torchrun_nodes([[*args, "--features", str(store)], [*args, "--features", str(empty)]],
                             tmp_path / "logs", timeout=120)
    expected = (f"vidcap evaluate: error: process {HOST}:1: {data / 'captions.csv'}: no 'test' video has features in "
                f"{empty}")
    for code, _, err in results:  # every worker exits 2; torchrun itself says 1 (a worker failed)
        assert code == 1 and "exitcode  : 2" in err, err[-3000:]
        assert [line for line in err.splitlines() if line.startswith("vidcap evaluate")] == [expected]
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
@pytest.mark.ddp
def test_two_srun_tasks_share_the_work(tmp_path):
    """srun's variables as SLURM sets them for 2 nodes x 1 task (Lightning's SLURMEnvironment reads them)."""
    data, store = tmp_path / "data", tmp_path / "feats"
    make_video_dataset(data, 3, broken=False)
    command = [sys.executable, "-m", "vidcap", *EXTRACT, "--data", str(data), "--out", str(store), "--frames", "2"]
    results = run_nodes(lambda port: [command, command], lambda port: [srun_env(rank, port) for rank in (0, 1)],
                        tmp_path / "logs")
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-3000:] + results[1][2][-3000:]
    assert {vid: row["writer"] for vid, row in _manifest(store).items()} == {
        "good0": f"{HOST}:0", "good1": f"{HOST}:1", "good2": f"{HOST}:0"}


def test_a_world_the_launcher_did_not_start_is_refused_with_one_line(tmp_path, monkeypatch, capsys):
    """A SLURM job script that runs vidcap without srun: SLURM says 2 tasks, and only this process runs."""
    import vidcap.launcher

    for key, value in srun_env(0, free_port()).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(vidcap.launcher, "TIMEOUT", timedelta(seconds=2))
    data = tmp_path / "data"
    make_video_dataset(data, 1, broken=False)
    assert main([*EXTRACT, "--data", str(data), "--out", str(tmp_path / "feats")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vidcap extract: error: srun process 0 of 2: the others did not join within 0:00:02 (")
    assert err[-1].endswith("start every process with the launcher (torchrun on each node, srun in the job script)")
    assert not (tmp_path / "feats").exists()


def test_devices_may_only_repeat_the_launchers_count():
    process = Process("torchrun", rank=1, world_size=4, local_rank=1, local_world_size=2, num_nodes=2)
    assert devices_per_node(process, 1) == devices_per_node(process, 2) == 2
    with pytest.raises(UsageError, match=r"--devices 4, but torchrun started 2 process\(es\) on this node"):
        devices_per_node(process, 4)


def test_manifest_writer_column_and_stores_written_before_it(tmp_path):
    for folder in ("features", "writers", "failed"):
        (tmp_path / folder).mkdir()
    arrays = {"global": [[1.0]], "mask": [True], "times": [0.0]}
    save_features(tmp_path, "new", arrays, writer="h:3")
    save_features(tmp_path, "old", arrays)  # no record: an older store, or features a dataset ships
    record_failure(tmp_path, "broken", "/v/broken.mp4", "no video stream", writer="h:1")
    (tmp_path / "failed" / "older.txt").write_text("empty file\n/v/older.mp4\n")  # the two-line format
    assert write_manifest(tmp_path) == (2, 2)
    assert {vid: (row["status"], row["error"], row["writer"]) for vid, row in _manifest(tmp_path).items()} == {
        "new": ("ok", "", "h:3"), "old": ("ok", "", ""), "broken": ("failed", "no video stream", "h:1"),
        "older": ("failed", "empty file", ""),
    }
