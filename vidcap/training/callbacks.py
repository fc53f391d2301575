"""Training callbacks that show what the model learns: one validation video's attention picture in TensorBoard.

`ExplanationImage` is the `explanation` option group of `vidcap fit` (vidcap/training/lightning_cli.py). After every validation
it captions one fixed validation video (the first by id, or `--explanation.video_id`) with the model's decoding
options and logs its explanation picture (vidcap.report.explain: the sampled frames over the words x frames attention map,
the caption as the title) as the image `val/explanation`: TensorBoard's IMAGES tab then shows, step by step, the
attention sharpening onto the frames each word comes from. The frames are decoded once, from the file DIR/videos.csv
names; a feature-only store (no video file) gets a grey strip. Loggers without images (CSV) and the variants without
attention (basic, local) log nothing.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import TensorBoardLogger

from vidcap.errors import UsageError

log = logging.getLogger(__name__)

IMAGE_TAG = "val/explanation"
GREY = 160  # the strip of a video without a file: a plain grey frame per sampled frame


class ExplanationImage(Callback):
    """After each validation, log one validation video's attention explanation to TensorBoard (image val/explanation).

    Args:
        video_id: the validation video to show; None: the first of the validation split by id.
    """

    def __init__(self, video_id: str | None = None):
        self.video_id = video_id
        self._index: int | None = None  # of the video in the validation dataset
        self._frames: np.ndarray | None = None  # (K, h, w, 3) uint8, the valid sampled frames
        self._times: np.ndarray | None = None  # (K,) seconds

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or not self._tensorboard(trainer) or not pl_module.config.attends:
            return
        data = trainer.datamodule
        dataset = data.datasets[data.hparams.val_split]
        ids = dataset.captions.video_ids  # sorted by id (vidcap.training.data.read_split)
        video_id = self.video_id or ids[0]
        if video_id not in ids:
            raise UsageError(f"--explanation.video_id {video_id!r}: not a video of the "
                             f"{data.hparams.val_split!r} split with features")
        self._index = ids.index(video_id)
        self._frames, self._times = _sampled_frames(data.data_dir, video_id, dataset[self._index]["mask"],
                                                    data.num_frames)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = self._tensorboard(trainer)
        if self._index is None or logger is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        from vidcap.model.decoding import decode, words_and_attention
        from vidcap.report.explain import render_explanation
        from vidcap.text.vocab import Vocabulary
        from vidcap.training.data import collate

        sample = trainer.datamodule.datasets[trainer.datamodule.hparams.val_split][self._index]
        batch = collate([sample])
        device = pl_module.device
        local = None if batch["local"] is None else batch["local"].to(device)
        mask = batch["mask"].to(device)
        model, training = pl_module.model, pl_module.model.training
        model.eval()
        try:
            feats = model.combine_features(batch["global"].to(device), local)
            best = decode(model, feats, mask, replace(pl_module.decoding, n_best=1), Vocabulary.BOS,
                          Vocabulary.EOS)[0][0]
        finally:
            model.train(training)
        vocab = pl_module.vocab
        words, attention = words_and_attention(best, vocab, sample["mask"])
        subtitle = f"{sample['video_id']}  \u00b7  epoch {trainer.current_epoch}  \u00b7  step {trainer.global_step}"
        with tempfile.TemporaryDirectory() as folder:  # render_explanation draws to a file; the image is read back
            png = render_explanation(Path(folder) / "explanation.png", self._frames, self._times, words, attention,
                                     vocab.decode(best.tokens), subtitle=subtitle)
            from PIL import Image

            with Image.open(png) as image:
                picture = np.asarray(image.convert("RGB"))
        logger.experiment.add_image(IMAGE_TAG, picture, trainer.global_step, dataformats="HWC")

    @staticmethod
    def _tensorboard(trainer: Trainer) -> TensorBoardLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def _sampled_frames(data_dir: Path, video_id: str, mask: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The valid sampled frames of `video_id` (shrunk to thumbnails) and their times, decoded from its file in
    DATA_DIR/videos.csv; grey frames (times: the frame numbers) when it has no file or it cannot be read."""
    from vidcap.datasets import read_videos
    from vidcap.report.explain import video_thumbnails

    valid = int(np.count_nonzero(mask))
    path = None
    if (data_dir / "videos.csv").is_file():
        videos = read_videos(data_dir)
        path = next(iter(videos.loc[videos["video_id"] == video_id, "path"].tolist()), None)
    thumbs = video_thumbnails(path, num_frames, expected=valid,
                              purpose=f"for the TensorBoard explanation of {video_id} (grey frames instead)")
    if thumbs.frames is None:
        return np.full((valid, 32, 32, 3), GREY, dtype=np.uint8), np.arange(valid, dtype=np.float64)
    return thumbs.frames, thumbs.times


__all__ = ["IMAGE_TAG", "ExplanationImage"]
