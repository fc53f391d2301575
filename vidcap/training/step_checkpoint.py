"""Step checkpoints: `last.ckpt` every N training steps, so that a run killed mid-epoch resumes at the last saved
step instead of at the start of its epoch.

`StepCheckpoint` is the `step_checkpoint` option group of `vidcap fit` (vidcap/training/lightning_cli.py;
`every_n_steps` in configs/trainer/*.yaml). Every N steps it writes the checkpoint callback's `last.ckpt` (the file
`--ckpt_path last` resumes from). Every checkpoint goes through `AtomicCheckpointIO`, a temporary name renamed over
the final one, so a kill or a full disk while writing leaves the previous one intact. What a mid-epoch resume needs is in that file:
- the training loader's position: the train loader is torchdata's StatefulDataLoader (vidcap.training.data), whose
  state Lightning stores in every checkpoint and loads back on resume, so the epoch continues with its next batch;
- torch's random state at the step (dropout draws from it): restored before the first step after the resume, so a
  resumed run draws the same dropout masks as an uninterrupted one. Only step checkpoints carry it: an epoch-end
  checkpoint resumes at an epoch start, as before.
The same seed on the same machine then gives a resumed run the weights of an uninterrupted one
(tests/test_step_checkpoint.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from vidcap import atomic
from vidcap.errors import UsageError

log = logging.getLogger(__name__)


class StepCheckpoint(Callback):
    """Write last.ckpt every `every_n_steps` optimizer steps (None: only the checkpoint callback's epoch-end saves).

    Args:
        every_n_steps: steps between two step checkpoints; about 10 minutes of training is a good interval (a
            checkpoint of a paper-sized model takes well under a second to write).
    """

    def __init__(self, every_n_steps: int | None = None):
        if every_n_steps is not None and every_n_steps < 1:
            raise UsageError(f"--step_checkpoint.every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._saving = False  # state_dict() holds the random state only in a step checkpoint
        self._rng_to_restore: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            # Here, not in load_state_dict: resuming builds the loader's iterator, which draws from the generator
            # as an uninterrupted run did not at this point.
            torch.set_rng_state(self._rng_to_restore["torch"])
            if self._rng_to_restore.get("cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._rng_to_restore["cuda"])
            self._rng_to_restore = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step == 0 or step % self.every_n_steps:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the epoch-end checkpoint follows
        if trainer.max_steps > 0 and step >= trainer.max_steps:
            return  # the last step: the checkpoint callback saves it
        path = last_checkpoint_path(trainer)
        if path is None:
            return
        self.save(trainer, path)

    def save(self, trainer: Trainer, path: Path) -> None:
        """trainer.save_checkpoint (atomic: AtomicCheckpointIO), with the random state in this callback's state."""
        self._saving = True
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint):
            # The checkpoint callback's own record of its last.ckpt (saved in the checkpoint): without it, a run
            # resumed from a last.ckpt this callback wrote first would save the next as last-v1.ckpt.
            callback.last_model_path = str(path)
        try:
            trainer.save_checkpoint(path, weights_only=False)
        finally:
            self._saving = False
        log.debug("step %d: saved %s", trainer.global_step, path)

    def state_dict(self) -> dict[str, Any]:
        if not self._saving:
            return {}
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        return {"rng": {"torch": torch.get_rng_state(), "cuda": cuda}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict.get("rng")


def last_checkpoint_path(trainer: Trainer) -> Path | None:
    """The last.ckpt of the trainer's checkpoint callback (None without one, or with --checkpoint.save_last false)."""
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint) or not callback.save_last or callback.dirpath is None:
        return None
    Path(callback.dirpath).mkdir(parents=True, exist_ok=True)
    return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through vidcap.atomic for local paths: the checkpoint is written to a temporary
    name, fsynced and renamed, so a full disk or a kill never leaves half a last.ckpt (Lightning writes the final
    name directly)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


__all__ = ["AtomicCheckpointIO", "StepCheckpoint", "last_checkpoint_path"]
