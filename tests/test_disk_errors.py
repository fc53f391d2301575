"""A full disk, a read-only folder, no permission: one line naming the path and the reason, exit 1 (some items
written) or 2 (nothing), no half-written file under a final name, and a rerun once there is room completes.

Injected errors (OSError(ENOSPC) from the writes themselves) everywhere; a real 3 MB tmpfs where the test runner may
mount one (root, as in CI), skipped otherwise."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import make_video_dataset, write_feature_dataset
from vidcap.cli import main
from vidcap.features.store import list_features, load_features

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("vidcap ")]


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left on the device"),
                                          (errno.EROFS, "read-only file system"),
                                          (errno.EACCES, "permission denied")])
def test_a_write_refused_by_the_file_system_is_one_line_naming_the_final_path(code, reason, monkeypatch, capsys):
    import vidcap.cli.score as score

    def refused(args):
        raise OSError(code, os.strerror(code), "/runs/eval/.metrics.json.host.123.tmp")

    monkeypatch.setattr(score, "run", refused)
    assert main(["score", "--references", "r.json", "--predictions", "p.json"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"vidcap score: error: /runs/eval/metrics.json: cannot write: "
                                                   f"{reason}; ")


def test_extract_out_of_space_mid_run_keeps_the_finished_videos_and_a_rerun_completes(tmp_path, monkeypatch,
                                                                                      capsys):
    data, store = tmp_path / "data", tmp_path / "feats"
    make_video_dataset(data, 4, broken=False)
    args = ["extract", "--data", str(data), "--out", str(store), "--no-progress", "--threads", "1",
            "--global", "efficientnet_lite0", "--global-size", "64", "--frames", "4", "--num-workers", "0"]
    savez, calls = np.savez, []

    def fills_the_disk(handle, **arrays):  # the third video's write meets a full disk after some bytes
        calls.append(1)
        if len(calls) == 3:
            handle.write(b"PK\x03\x04 part of a zip")
            no_space()
        savez(handle, **arrays)

    monkeypatch.setattr(np, "savez", fills_the_disk)
    assert main(args) == 1  # two videos were written
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert lines[0].startswith(f"vidcap extract: error: {store / 'features' / 'good2.npz'}: cannot write: no space "
                               "left on the device; 2 of 4 videos were written by this run and are complete")
    assert list_features(store) == ["good0", "good1"]
    assert not [p for p in (store / "features").iterdir() if p.name.startswith(".")]  # no temp file left
    assert all(load_features(store, v)["global"].shape == (4, 1280) for v in ["good0", "good1"])

    monkeypatch.setattr(np, "savez", savez)  # space freed
    assert main(args) == 0
    assert "2 extracted, 2 already done" in capsys.readouterr().out
    assert main(["verify", str(store), "--no-progress"]) == 0


def fit_args(data: Path, store: Path, root: Path) -> list[str]:
    return ["fit", "--config", str(REPO / "configs/data/synthetic.yaml"),
            "--config", str(REPO / "configs/model/global.yaml"), "--config", str(REPO / "configs/trainer/cpu.yaml"),
            "--config", str(REPO / "configs/debug.yaml"), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--step_checkpoint.every_n_steps", "2",
            "--data.data_dir", str(data), "--data.features_dir", str(store), "--trainer.default_root_dir", str(root)]


def test_fit_out_of_space_keeps_the_last_checkpoint_and_resumes(tmp_path, monkeypatch, capsys):
    data, store = write_feature_dataset(tmp_path)
    root = tmp_path / "run"
    save, calls = torch.save, []

    def full_after_one(obj, f, *args, **kwargs):  # the step-2 checkpoint fits, the epoch-end one does not
        calls.append(1)
        if len(calls) == 2:
            Path(f).write_bytes(b"half a checkpoint")
            no_space()
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_after_one)
    assert main(fit_args(data, store, root)) == 1
    lines = error_lines(capsys.readouterr().err)
    last = root / "checkpoints" / "last.ckpt"
    assert len(lines) == 1
    assert lines[0].startswith(f"vidcap fit: error: {last.parent}/")  # the epoch-end (best-...) checkpoint
    assert lines[0].endswith(f".ckpt: cannot write: no space left on the device; {last} is complete: resume with "
                             "--ckpt_path last: free some space and rerun")
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]

    monkeypatch.setattr(torch, "save", save)
    assert main([*fit_args(data, store, root), "--ckpt_path", "last"]) == 0
    assert torch.load(last, weights_only=True)["global_step"] == 4


def test_fit_with_nothing_saved_is_exit_2(tmp_path, monkeypatch, capsys):
    data, store = write_feature_dataset(tmp_path)
    monkeypatch.setattr(torch, "save", no_space)
    root = tmp_path / "run"
    assert main(fit_args(data, store, root)) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "cannot write: no space left on the device; no checkpoint was saved" in lines[0]


@pytest.mark.slow
@pytest.mark.java
def test_evaluate_out_on_a_full_disk_writes_nothing_half(tmp_path, monkeypatch, capsys):
    import vidcap.atomic

    data, store = write_feature_dataset(tmp_path)
    root = tmp_path / "run"
    assert main(fit_args(data, store, root)) == 0
    out = tmp_path / "eval"
    monkeypatch.setattr(vidcap.atomic, "_fsync", no_space)
    assert main(["evaluate", "--checkpoint", str(root / "checkpoints" / "last.ckpt"), "--data", str(data),
                 "--features", str(store), "--out", str(out)]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert lines[0].startswith(f"vidcap evaluate: error: {out / 'predictions.json'}: cannot write: no space left")
    assert list(out.iterdir()) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 3 MB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill the file system of `folder` up to `leave` bytes free; returns the filler file."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return filler


def test_a_real_full_tmpfs(tiny_tmpfs, tmp_path, capsys):
    data = tmp_path / "data"
    make_video_dataset(data, 6, broken=False)
    store = tiny_tmpfs / "feats"
    args = ["extract", "--data", str(data), "--out", str(store), "--no-progress", "--threads", "1",
            "--global", "efficientnet_lite0", "--global-size", "64", "--frames", "4", "--num-workers", "0"]
    filler = fill(tiny_tmpfs, leave=40_000)  # room for meta.json and a few 10 kB feature files, not six
    code = main(args)
    lines = error_lines(capsys.readouterr().err)
    assert code in (1, 2) and len(lines) == 1 and "cannot write: no space left on the device" in lines[0]
    assert str(tiny_tmpfs) in lines[0]
    for video_id in list_features(store):  # what is there is complete
        assert load_features(store, video_id)["global"].shape == (4, 1280)
    filler.unlink()
    assert main(args) == 0
    assert list_features(store) == [f"good{i}" for i in range(6)]
    assert main(["verify", str(store), "--no-progress"]) == 0

    # fit with its run folder on the full disk: nothing could be saved, exit 2, one line.
    fdata, fstore = write_feature_dataset(tmp_path / "f")
    fill(tiny_tmpfs, leave=0)
    assert main(fit_args(fdata, fstore, tiny_tmpfs / "run")) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "no space left on the device" in lines[0] and str(tiny_tmpfs) in lines[0]
