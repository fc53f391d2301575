"""`vidcap extract` and its engine (vidcap/features/extract.py): store contents, failures, resume, a kill mid-write, two
processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import KILL_DURING_WRITE, make_video_dataset, smooth_frames, write_video, write_video_table
from vidcap.cli import main
from vidcap.features.extract import ExtractOptions, read_video_table, run_extract
from vidcap.features.extractors import EXTRACTORS, build_extractor, extract_video_features
from vidcap.features.shard import _Batcher, _Item
from vidcap.features.store import clean_temp_files, list_features, load_features, read_meta
from vidcap.video.reader import SAMPLING_RULE, SampledFrames

REPO = Path(__file__).resolve().parents[1]


def _manifest(store: Path) -> dict[str, tuple[str, str]]:
    with open(store / "manifest.csv", newline="") as f:
        return {row["video_id"]: (row["status"], row["error"]) for row in csv.DictReader(f)}


def _extract(data, store, *extra) -> list[str]:
    # One torch thread: on a busy shared CPU, OpenMP threads waiting for each other cost far more than they give.
    return ["extract", "--data", str(data), "--out", str(store), "--no-progress", "--threads", "1", *extra]


@pytest.mark.slow
def test_extract_end_to_end_failures_resume_and_same_features_as_caption(tmp_path, capsys):
    data, store = tmp_path / "data", tmp_path / "feats"
    paths = make_video_dataset(data, 4)
    args = _extract(data, store, "--global", "efficientnet_lite0", "--global-size", "64", "--frames", "4",
                    "--batch-size", "3")
    assert main(args) == 1
    err = capsys.readouterr().err
    for video_id in ["bad_empty", "bad_text", "bad_truncated", "bad_audio", "bad_missing"]:
        assert f"skipping {paths[video_id]}: " in err
    assert "5 of 9 videos failed" in err

    manifest = _manifest(store)
    assert {k: v[0] for k, v in manifest.items()} == {
        **{f"good{i}": "ok" for i in range(4)},
        **{f"bad_{n}": "failed" for n in ["empty", "text", "truncated", "audio", "missing"]},
    }
    assert "empty" in manifest["bad_empty"][1] and "no such file" in manifest["bad_missing"][1]
    assert "no video stream" in manifest["bad_audio"][1]
    assert all(manifest[f"good{i}"][1] == "" for i in range(4))

    meta = read_meta(store)
    assert (meta["format"], meta["num_frames"], meta["dtype"], meta["local"]) == (1, 4, "float16", None)
    assert meta["sampling"] == {"rule": SAMPLING_RULE, "num_frames": 4}
    assert meta["global"]["name"] == "efficientnet_lite0" and meta["global"]["weights"] == "pretrained"
    assert len(meta["global"]["weights_sha256"]) == 64 and meta["global"]["image_size"] == 64
    assert {"torch", "torchvision", "pytorchvideo", "decord", "av", "vidcap"} <= set(meta["versions"])

    feats = load_features(store, "good1")  # 3 frames < K = 4: one padded step
    assert set(feats) == {"global", "mask", "times"}
    assert feats["global"].shape == (4, 1280) and feats["global"].dtype == np.float16
    np.testing.assert_array_equal(feats["mask"], [True, True, True, False])
    assert (feats["global"][3] == 0).all() and feats["times"].dtype == np.float32

    # The engine (batched across videos, in a worker) and the caption-time function agree.
    lite0 = build_extractor("efficientnet_lite0", image_size=64)
    for video_id in ["good0", "good2"]:
        direct = extract_video_features(paths[video_id], {"global": lite0}, num_frames=4)
        stored = load_features(store, video_id)
        np.testing.assert_array_equal(stored["mask"], direct["mask"])
        np.testing.assert_allclose(stored["times"], direct["times"])
        np.testing.assert_allclose(stored["global"].astype(np.float32), direct["global"], rtol=2e-2, atol=2e-2)

    # Resume: finished videos are not touched, failed ones are tried again (and fail again).
    stamps = {p.name: p.stat().st_mtime_ns for p in (store / "features").iterdir()}
    assert main(args) == 1
    out = capsys.readouterr()
    assert "0 extracted, 4 already done, 5 failed, of 9 videos" in out.out
    assert {p.name: p.stat().st_mtime_ns for p in (store / "features").iterdir()} == stamps

    # Other settings into the same store: refused, nothing mixed.
    assert main(_extract(data, store, "--global", "efficientnet_lite0", "--global-size", "64", "--frames", "5")) == 2
    assert "meta.json" in capsys.readouterr().err and read_meta(store)["num_frames"] == 4


def test_extract_needs_an_extractor_and_help_lists_the_registry(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_video_table(data, [("a", "train", "a.mp4")])
    assert main(_extract(data, tmp_path / "f")) == 2
    assert "choose at least one extractor" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["extract", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for name in EXTRACTORS:
        assert name in text
    with pytest.raises(SystemExit):
        main(_extract(data, tmp_path / "f", "--global", "x3d_xs"))  # a local extractor is not a global one


def test_local_extractors_split_selection_and_float32(tmp_path, capsys):
    data, store = tmp_path / "data", tmp_path / "feats"
    make_video_dataset(data, 3, broken=False)
    code = main(_extract(
        data, store, "--local", "frame_delta_efficientnet_lite0", "--frames", "3", "--dtype", "float32",
        "--local-size", "64", "--split", "train", "--num-workers", "0",
    ))
    assert code == 0, capsys.readouterr().err
    assert set(_manifest(store)) == {"good0", "good2"}  # the train split only
    feats = load_features(store, "good2")
    assert set(feats) == {"local", "mask", "times"}
    assert feats["local"].shape == (3, 1280) and feats["local"].dtype == np.float32
    meta = read_meta(store)
    assert meta["global"] is None and meta["local"]["name"] == "frame_delta_efficientnet_lite0"

    store3d = tmp_path / "feats3d"
    code = main(_extract(data, store3d, "--local", "x3d_xs", "--local-weights", "random", "--local-size", "64",
                     "--frames", "2"))
    assert code == 0, capsys.readouterr().err
    assert load_features(store3d, "good0")["local"].shape == (2, 2048)
    assert read_meta(store3d)["local"]["weights"] == "random"


def test_video_table_paths_duplicates_and_bad_ids(tmp_path):
    write_video_table(tmp_path, [("a", "train", "x/a.mp4"), ("b", "val", "/abs/b.mp4"), ("a", "test", "x/a2.mp4")])
    rows = read_video_table(tmp_path)
    assert rows == [("a", str(tmp_path / "x" / "a.mp4")), ("b", "/abs/b.mp4")]
    assert read_video_table(tmp_path, ["val"]) == [("b", "/abs/b.mp4")]
    write_video_table(tmp_path, [("../escape", "train", "a.mp4")])
    from vidcap.errors import UsageError

    with pytest.raises(UsageError, match="cannot be a file name"):
        read_video_table(tmp_path)


class _RowIndex(torch.nn.Module):
    """Fake extractor: the feature of a step is its first pixel value; records batch sizes."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(len(x))
        return x[:, 0, 0, 0, :1].float()


def test_batches_cut_across_video_boundaries():
    fake = _RowIndex()
    batcher = _Batcher({"global": fake}, batch_size=4)
    counter = 0
    done = []
    for n in [5, 3, 7]:
        steps = torch.arange(counter, counter + n, dtype=torch.uint8).view(n, 1, 1, 1, 1).expand(n, 1, 3, 1, 1)
        counter += n
        mask = np.ones(n, dtype=bool)
        video = SampledFrames(mask=mask, indices=np.arange(n), times=np.zeros(n, np.float32), backend="pyav",
                              fps=25.0, height=1, width=1, num_frames=n, inputs={"global": steps.contiguous()})
        batcher.add(_Item(f"v{n}", "p", video=video))
        batcher.run()
        done += batcher.finished()
    batcher.run(flush=True)
    done += batcher.finished()
    assert fake.sizes == [4, 4, 4, 3]
    assert [item.video_id for item, _ in done] == ["v5", "v3", "v7"]
    values = [feats["global"][:, 0].tolist() for _, feats in done]
    assert values == [[0, 1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12, 13, 14]]


def test_stale_temp_files_are_cleaned_live_ones_kept(tmp_path):
    host = socket.gethostname().replace(".", "-")
    (tmp_path / "features").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / "features" / f".a.npz.{host}.{dead_pid}.tmp"
    live = tmp_path / "features" / f".b.npz.{host}.{os.getpid()}.tmp"
    foreign = tmp_path / "features" / ".c.npz.otherhost.1.tmp"
    for p in (stale, live, foreign):
        p.write_bytes(b"partial")
    assert clean_temp_files(tmp_path) == 1
    assert not stale.exists() and live.exists() and foreign.exists()


@pytest.mark.slow
def test_kill_during_a_write_leaves_complete_files_and_a_rerun_completes_the_store(tmp_path):
    data, store = tmp_path / "data", tmp_path / "feats"
    make_video_dataset(data, 6, broken=False)
    args = _extract(data, store, "--global", "efficientnet_lite0", "--global-size", "64", "--frames", "4")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_DURING_WRITE, "3", *args], cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its DataLoader worker, if still there
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert list_features(store) == ["good0", "good1", "good2"]
    for video_id in ["good0", "good1", "good2"]:
        assert load_features(store, video_id)["global"].shape == (4, 1280)
    host = socket.gethostname().replace(".", "-")
    half = store / "features" / f".good3.npz.{host}.{proc.pid}.tmp"
    assert sorted(p.name for p in (store / "features").iterdir()) == sorted(
        [half.name, "good0.npz", "good1.npz", "good2.npz"]
    )
    assert half.read_bytes().startswith(b"PK\x03\x04 half")

    assert main(args) == 0
    names = sorted(p.name for p in (store / "features").iterdir())
    assert names == [f"good{i}.npz" for i in range(6)]  # complete, temp file gone
    assert set(_manifest(store).values()) == {("ok", "")}


@pytest.mark.slow
def test_python_api_and_old_stores(tmp_path):
    """run_extract with ExtractOptions is what the CLI runs; a store written before meta.json recorded "sampling"
    accepts more videos extracted with the same K. (Decoding in this process: the workers have their own tests, and
    starting one costs more than this test's extraction.)"""
    data, store = tmp_path / "data", tmp_path / "feats"
    make_video_dataset(data, 2, broken=False)
    options = ExtractOptions(global_name="efficientnet_lite0", num_frames=3, image_sizes={"global": 64}, threads=1,
                             num_workers=0)
    summary = run_extract(data, store, options, progress=False)
    assert (summary.total, summary.extracted, summary.failed) == (2, 2, [])
    meta = json.loads((store / "meta.json").read_text())
    del meta["sampling"]
    (store / "meta.json").write_text(json.dumps(meta))
    (store / "features" / "good1.npz").unlink()
    assert main(_extract(data, store, "--global", "efficientnet_lite0", "--global-size", "64", "--frames", "3",
                         "--num-workers", "0")) == 0
    assert list_features(store) == ["good0", "good1"]
    from vidcap.errors import UsageError

    with pytest.raises(UsageError, match="meta.json"):
        run_extract(data, store, ExtractOptions(global_name="efficientnet_lite0", num_frames=2,
                                                image_sizes={"global": 64}, threads=1, num_workers=0), progress=False)


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_give_the_same_store_as_one(tmp_path, capsys):
    data = tmp_path / "data"
    make_video_dataset(data, 4, broken=False)
    common = ["--global", "efficientnet_lite0", "--global-size", "64", "--frames", "3", "--batch-size", "4",
              "--num-workers", "0"]
    assert main(_extract(data, tmp_path / "one", *common)) == 0
    assert main(_extract(data, tmp_path / "two", *common, "--devices", "2")) == 0, capsys.readouterr().err
    one, two = sorted((tmp_path / "one" / "features").iterdir()), sorted((tmp_path / "two" / "features").iterdir())
    assert [p.name for p in one] == [p.name for p in two] == [f"good{i}.npz" for i in range(4)]
    for video_id in [f"good{i}" for i in range(4)]:
        a, b = load_features(tmp_path / "one", video_id), load_features(tmp_path / "two", video_id)
        np.testing.assert_array_equal(a["mask"], b["mask"])
        np.testing.assert_allclose(a["global"].astype(np.float32), b["global"].astype(np.float32), rtol=2e-2,
                                   atol=2e-2)
    assert json.loads((tmp_path / "one" / "meta.json").read_text())["global"] == \
        json.loads((tmp_path / "two" / "meta.json").read_text())["global"]
    assert _manifest(tmp_path / "two") == _manifest(tmp_path / "one")
    with open(tmp_path / "two" / "manifest.csv", newline="") as f:  # who wrote each: the videos dealt round-robin
        writers = {row["video_id"]: row["writer"] for row in csv.DictReader(f)}
    assert writers == {f"good{i}": f"{socket.gethostname()}:{i % 2}" for i in range(4)}


# --------------------------------------------------------------------------------------------------------------------
# Decoding workers: started clean, watched


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_extraction_after_this_process_converted_frames_with_pyav(tmp_path):
    """The hang of av 18.1.1 (FFmpeg 8.1.3): once a process has converted a frame to RGB with PyAV's default threads,
    a child forked from it waits forever on its first conversion. The extraction's two workers must not be such
    children. Under a fork start method this test hangs and its timeout fails it."""
    import av

    data, store = tmp_path / "data", tmp_path / "feats"
    paths = make_video_dataset(data, 4, broken=False)
    with av.open(str(paths["good0"])) as container:  # what a user's notebook or caption_video did before
        assert all(frame.to_ndarray(format="rgb24").shape == (48, 64, 3) for frame in container.decode(video=0))
    options = ExtractOptions(global_name="efficientnet_lite0", num_frames=4, image_sizes={"global": 64}, threads=1,
                             num_workers=2, backend="pyav")
    summary = run_extract(data, store, options, progress=False)
    assert (summary.extracted, summary.failed) == (4, [])
    assert list_features(store) == [f"good{i}" for i in range(4)]


@pytest.mark.slow
def test_a_long_tmpdir_does_not_stop_the_decoding_workers(tmp_path, monkeypatch):
    """A worker sends each decoded tensor through a Unix socket that multiprocessing makes under $TMPDIR; past a
    socket path's length limit (107 bytes on Linux) the worker could not send and the run waited for the watchdog
    (it happened under pytest-xdist's longer temp folders)."""
    import tempfile
    from multiprocessing import process

    long_tmp = tmp_path / ("t" * 50) / ("m" * 50)
    long_tmp.mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(long_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    monkeypatch.delitem(process.current_process()._config, "tempdir", raising=False)  # as in a fresh process
    data, store = tmp_path / "data", tmp_path / "feats"
    make_video_dataset(data, 2, broken=False)
    options = ExtractOptions(global_name="efficientnet_lite0", num_frames=4, image_sizes={"global": 64}, threads=1,
                             num_workers=1, worker_timeout=30)
    summary = run_extract(data, store, options, progress=False)
    assert (summary.extracted, summary.failed) == (2, [])
    assert list_features(store) == ["good0", "good1"]


def test_short_socket_dir_replaces_a_folder_too_long_for_a_socket_and_keeps_a_short_one(tmp_path, monkeypatch):
    from multiprocessing import process

    from vidcap.video.reader import short_socket_dir

    config = process.current_process()._config
    long_folder = str(tmp_path / ("x" * 90) / "pymp-abcdefgh")
    monkeypatch.setitem(config, "tempdir", long_folder)
    short_socket_dir()
    made = config["tempdir"]
    assert made != long_folder and os.path.isdir(made) and len(made) + len("/listener-XXXXXXXX") <= 103
    short_socket_dir()  # a short one is kept
    assert config["tempdir"] == made


def _stalling_dataset(data: Path) -> Path:
    """Five good videos; the fourth has frames of helpers.STALL_SIZE. Returns its path."""
    from tests.helpers import STALL_SIZE

    make_video_dataset(data, 5, broken=False)
    stuck = write_video(data / "videos" / "good3.mp4", smooth_frames(12, 3, *STALL_SIZE))
    return stuck


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("action", ["hang", "kill"])
def test_a_hung_or_killed_worker_ends_the_run_with_one_line_and_a_rerun_completes(tmp_path, capsys, monkeypatch,
                                                                                 action):
    import time

    from tests import helpers

    data, store = tmp_path / "data", tmp_path / "feats"
    stuck = _stalling_dataset(data)
    monkeypatch.setattr("vidcap.features.extractors.base.ResizeCrop", helpers.StallingResizeCrop)
    monkeypatch.setenv(helpers.STALL_ENV, action)
    args = _extract(data, store, "--global", "efficientnet_lite0", "--global-size", "64", "--frames", "4",
                    "--num-workers", "1", "--worker-timeout", "15", "--batch-size", "1")
    started = time.monotonic()
    assert main(args) == 1
    seconds = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    # A death is seen by SIGCHLD ("killed by signal Killed"), by the loader's own check ("died unexpectedly") or
    # while a video is handed over: one line naming the video in every case.
    reason = "its decoding worker delivered nothing for 15 s" if action == "hang" else "its decoding worker (pid "
    assert err[0].startswith(f"vidcap extract: error: {stuck}: ") and reason in err[0], err[0]
    assert action == "hang" or " died" in err[0] and "out-of-memory killer?" in err[0], err[0]
    # Worker start-up (a fresh interpreter importing torch, which the limit also covers: 15 s leaves room for a loaded
    # machine) + the limit + shutting the worker down; a wait for a worker that never answers would run into the
    # test's timeout instead.
    assert seconds < 100
    # One step per batch: a video is written as soon as it arrives. A hang is met while the run waits for good3,
    # after the three before it; a death can also interrupt the run's own work (DataLoader's SIGCHLD handler), and
    # then the videos not yet written wait for the rerun.
    written = list_features(store)
    assert written == ["good0", "good1", "good2"] if action == "hang" else written == ["good0", "good1", "good2"][
        : len(written)]
    assert f"stopped after writing {len(written)} videos, which are kept: rerun to resume" in err[0]
    assert _manifest(store)["good3"][0] == "failed"
    stamps = {p.name: p.stat().st_mtime_ns for p in (store / "features").iterdir()}

    monkeypatch.delenv(helpers.STALL_ENV)
    assert main(args) == 0
    assert list_features(store) == [f"good{i}" for i in range(5)]
    assert all((store / "features" / name).stat().st_mtime_ns == stamp for name, stamp in stamps.items())
    assert set(_manifest(store).values()) == {("ok", "")}


@pytest.mark.parametrize(("flags", "message"), [
    (["--worker-timeout", "0"], "--worker-timeout must be more than 0 seconds, got 0"),
    (["--worker-timeout", "-3"], "--worker-timeout must be more than 0 seconds, got -3"),
    (["--worker-timeout", "5", "--num-workers", "0"], "--num-workers 0 decodes in this process"),
])
def test_worker_timeout_bad_values(tmp_path, capsys, flags, message):
    data = tmp_path / "data"
    make_video_dataset(data, 1, broken=False)
    assert main(_extract(data, tmp_path / "feats", "--global", "efficientnet_lite0", *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "feats").exists()
