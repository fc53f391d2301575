"""Store integrity: checksums recorded at write time, `vidcap verify`, `vidcap extract` repairing corrupt files, and the
check that `fit` and `evaluate` run before their first step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import DG, T, make_video_dataset, write_feature_dataset
from vidcap.cli import main
from vidcap.features.integrity import checksum_path, header_problem, sha256_file, verify_store
from vidcap.features.store import feature_path, load_features, read_meta

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def corrupt(store: Path) -> dict[str, str]:
    """The faults of a long run: a truncated file, one overwritten with random bytes, a valid .npz of the wrong width,
    and a deleted one. Returns {video_id: what was done}."""
    ids = sorted(p.name[:-4] for p in (store / "features").glob("*.npz"))
    truncated, random_bytes, wrong_width, deleted = ids[:4]
    path = feature_path(store, truncated)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    feature_path(store, random_bytes).write_bytes(np.random.default_rng(0).bytes(4000))
    good = load_features(store, wrong_width)
    np.savez(feature_path(store, wrong_width), **{**good, "global": np.zeros((len(good["mask"]), 100), np.float16)})
    feature_path(store, deleted).unlink()
    return {truncated: "truncated", random_bytes: "random", wrong_width: "width", deleted: "deleted"}


def test_verify_lists_bad_and_missing_files_and_extract_repairs_them(tmp_path, capsys):
    data, store = tmp_path / "data", tmp_path / "feats"
    make_video_dataset(data, 5, broken=False)
    extract = ["extract", "--data", str(data), "--out", str(store), "--no-progress", "--threads", "1",
               "--global", "efficientnet_lite0", "--global-size", "64", "--frames", "4"]
    assert main(extract) == 0
    capsys.readouterr()
    for video_id in (f"good{i}" for i in range(5)):  # recorded as written, in sha256sum's format
        recorded = checksum_path(store, video_id).read_text()
        assert recorded == f"{sha256_file(feature_path(store, video_id))}  {video_id}.npz\n"
    assert main(["verify", str(store), "--no-progress"]) == 0
    assert "5 files checked (SHA-256), 0 bad, 0 missing" in capsys.readouterr().out

    faults = corrupt(store)
    by_fault = {fault: video_id for video_id, fault in faults.items()}
    assert main(["verify", str(store), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert "4 files checked (SHA-256), 3 bad, 1 missing" in out
    bad_lines = [line for line in err.splitlines() if line.startswith("bad: ")]
    assert sorted(bad_lines) == sorted(f"bad: {feature_path(store, by_fault[f])}: checksum mismatch (corrupt or "
                                       "changed since it was written)" for f in ("truncated", "random", "width"))
    assert f"missing: {feature_path(store, by_fault['deleted'])}" in err.splitlines()

    # The quick check (fit's and evaluate's) tells what is wrong from the headers alone.
    quick = verify_store(store, full=False)
    assert "width 1280" in quick.bad[by_fault["width"]] and "100" in quick.bad[by_fault["width"]]
    assert quick.bad[by_fault["truncated"]].startswith("unreadable")
    assert quick.bad[by_fault["random"]].startswith("unreadable")

    # A rerun of extract re-extracts the three that fail their checksum and the deleted one.
    untouched = next(vid for vid in (f"good{i}" for i in range(5)) if vid not in faults)
    stamp = feature_path(store, untouched).stat().st_mtime_ns
    assert main(extract) == 0
    assert "4 extracted (3 of them to replace files that failed their checksum), 1 already done" in \
        capsys.readouterr().out
    assert feature_path(store, untouched).stat().st_mtime_ns == stamp
    assert main(["verify", str(store), "--no-progress"]) == 0
    assert load_features(store, by_fault["width"])["global"].shape == (4, 1280)


def test_verify_of_a_folder_that_is_not_a_store_is_exit_2(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a feature store" in err[0]


def test_header_check_against_meta(tmp_path):
    """Files written before checksums were recorded get the header check: names, widths, dtypes, frame counts."""
    data, store = write_feature_dataset(tmp_path)
    meta = read_meta(store)
    path = feature_path(store, "v00")
    assert header_problem(path, meta) is None
    good = dict(np.load(path))
    cases = {
        "no array global": {k: v for k, v in good.items() if k != "global"},
        "global is float32, meta.json says float16": {**good, "global": good["global"].astype(np.float32)},
        f"mask has {T - 1} frames, not {T}": {**good, "mask": good["mask"][:-1]},
        f"global is {T}x{DG}x1": {**good, "global": good["global"][..., None]},
    }
    for reason, arrays in cases.items():
        np.savez(path, **arrays)
        assert reason in header_problem(path, meta)
    path.write_bytes(b"")
    assert header_problem(path, meta) == "empty file"


def fit_args(data: Path, store: Path, root: Path) -> list[str]:
    return ["fit", "--config", str(REPO / "configs/data/synthetic.yaml"),
            "--config", str(REPO / "configs/model/global.yaml"), "--config", str(REPO / "configs/trainer/cpu.yaml"),
            "--config", str(REPO / "configs/debug.yaml"), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--data.data_dir", str(data), "--data.features_dir", str(store),
            "--trainer.default_root_dir", str(root)]


def test_fit_and_evaluate_refuse_a_corrupt_store_before_the_first_step_or_skip_it(tmp_path, capsys, caplog):
    data, store = write_feature_dataset(tmp_path)
    faults = corrupt(store)  # v00 truncated, v01 random bytes, v02 100 columns wide, v03 deleted
    root = tmp_path / "run"
    assert main(fit_args(data, store, root)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith(f"vidcap fit: error: {store / 'features'}: 3 of 14 feature files are corrupt")
    for video_id in list(faults)[:3]:
        assert f"{video_id}.npz: " in line
    assert "v02.npz: global is 6x100, meta.json says width 8" in line
    assert f"repair: vidcap extract --data {data} --out {store} --global fake2d --global-weights random --frames {T}" \
        in line and "--data.skip_corrupt true" in line
    assert not (root / "checkpoints").exists()  # refused before the first step

    assert main([*fit_args(data, store, root), "--data.skip_corrupt", "true"]) == 0
    assert "skipping 3 corrupt feature file(s) of 14" in caplog.text
    checkpoint = root / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()

    # evaluate checks the split it decodes the same way, before decoding anything.
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--features", str(store),
                 "--split", "train", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 of 11 feature files are corrupt" in err[0] and not out.exists()
