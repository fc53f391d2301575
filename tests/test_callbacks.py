"""Training logs: TensorBoard by default (losses, val/*, the learning rate, one explanation picture per validation),
a CSV log by config (configs/trainer/csv_logger.yaml)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from tests.helpers import numbered_frames, tiny_dataset, write_video
from vidcap.cli import main
from vidcap.experiments.demo import CONFIGS
from vidcap.training.callbacks import IMAGE_TAG

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(data, store, root, *extra) -> int:
    """Two epochs of a tiny attention model, validating after each (debug.yaml: no Java)."""
    return main(["fit", "--config", str(CONFIGS / "data" / "synthetic.yaml"), "--config",
                 str(CONFIGS / "model" / "global.yaml"), "--config", str(CONFIGS / "debug.yaml"), "--data.data_dir", str(data), "--data.features_dir", str(store),
                 "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "2",
                 "--trainer.enable_progress_bar", "false", *extra])


def test_fit_logs_to_tensorboard(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    data, store = tiny_dataset(tmp_path)
    assert _fit(data, store, tmp_path / "run") == 0
    logs = tmp_path / "run" / "lightning_logs"
    assert f"watch the training: tensorboard --logdir {logs}" in capsys.readouterr().err
    (events,) = (logs / "version_0").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    assert {"train/loss", "train/ppl", "val/loss", "val/ppl", "lr-Adam"} <= set(accumulator.Tags()["scalars"])
    images = accumulator.Images(IMAGE_TAG)
    assert [image.step for image in images] == [4, 8]  # one per validation: 4 training batches an epoch
    assert all(image.width > 500 and image.height > 100 for image in images)


def test_csv_logger_config(tmp_path):
    data, store = tiny_dataset(tmp_path)
    assert _fit(data, store, tmp_path / "run", "--config", str(CONFIGS / "trainer" / "csv_logger.yaml")) == 0
    logs = tmp_path / "run" / "lightning_logs" / "version_0"
    with open(logs / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"train/loss", "val/loss", "val/ppl", "lr-Adam"} <= set(rows[0])
    assert sum(bool(row["val/loss"]) for row in rows) == 2
    assert not list(logs.glob("events.out.tfevents.*"))


def test_explanation_frames_come_from_the_video_file(tmp_path, caplog):
    from vidcap.training.callbacks import GREY, _sampled_frames

    video = write_video(tmp_path / "videos" / "v1.mp4", numbered_frames(16))
    with open(tmp_path / "videos.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["video_id", "split", "path"], ["v1", "val", str(video)],
                                      ["v2", "val", str(tmp_path / "missing.mp4")]])
    frames, times = _sampled_frames(tmp_path, "v1", np.ones(6, dtype=bool), 6)
    assert frames.shape[:3] == (6, 64, 64) and np.all(np.diff(times) > 0)
    assert frames[-1].mean() > frames[0].mean()  # grey level grows with the frame number
    frames, times = _sampled_frames(tmp_path, "v2", np.array([True] * 4 + [False] * 2), 6)
    assert frames.shape[0] == 4 and np.all(frames == GREY) and list(times) == [0, 1, 2, 3]
    assert [r.levelname for r in caplog.records if "missing.mp4" in r.getMessage()] == ["WARNING"]
    # Features of 5 valid frames where the file decodes to 6: grey frames too, and a warning.
    frames, times = _sampled_frames(tmp_path, "v1", np.array([True] * 5 + [False]), 6)
    assert frames.shape[0] == 5 and np.all(frames == GREY) and list(times) == [0, 1, 2, 3, 4]
    assert any("6 frames, the features have 5" in r.getMessage() for r in caplog.records)
