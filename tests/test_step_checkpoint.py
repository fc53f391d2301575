"""Step checkpoints and exact resume: a run SIGKILLed after a step checkpoint resumes mid-epoch from last.ckpt and
ends with the weights of an uninterrupted run (same seed, same machine)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import write_feature_dataset
from vidcap.cli import main

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

# Kills its own process before the step `argv[1]` (SIGKILL: no handler, no clean-up), then runs `vidcap fit`.
KILLER = """
import os, signal, sys
import torch
from pytorch_lightning import Callback
from vidcap.training.lightning_cli import run_lightning
torch.set_num_threads(1)
class Kill(Callback):
    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)
sys.exit(run_lightning("fit", sys.argv[2:], callbacks=[Kill()]))
"""


def fit_args(data: Path, feats: Path, root: Path) -> list[str]:
    """The demo's model and training settings (dropout 0.5, Adam), tiny: 12 train videos x 2 captions in batches
    of 4 = 6 steps an epoch, 2 epochs, a step checkpoint every 2 steps."""
    return ["--config", str(REPO / "configs/data/synthetic.yaml"),
            "--config", str(REPO / "configs/experiment/demo.yaml"),
            "--model.architecture.embed_dim", "16", "--model.architecture.hidden_dim", "32",
            "--model.architecture.attention_dim", "16", "--data.batch_size", "4", "--data.eval_batch_size", "4",
            "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "2", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--step_checkpoint.every_n_steps", "2",
            "--data.data_dir", str(data), "--data.features_dir", str(feats), "--trainer.default_root_dir", str(root)]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_killed_after_a_step_checkpoint_resumes_to_the_same_weights(tmp_path):
    data, feats = write_feature_dataset(tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(["fit", *fit_args(data, feats, whole)]) == 0
    expected = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)
    assert expected["global_step"] == 12

    # Killed before step 10 (the 4th of the second epoch): the last step checkpoint is step 8, mid-epoch.
    run = subprocess.run([sys.executable, "-c", KILLER, "9", *fit_args(data, feats, killed)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    last = killed / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 8 and saved["epoch"] == 1
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"], "the train loader's position is in the checkpoint"
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")], "no temporary file left"

    assert main(["fit", *fit_args(data, feats, killed), "--ckpt_path", "last"]) == 0
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == 12
    assert expected["state_dict"].keys() == resumed["state_dict"].keys()
    different = [k for k, v in expected["state_dict"].items() if not torch.equal(v, resumed["state_dict"][k])]
    assert not different


def test_step_checkpoint_every_n_steps_refuses_zero(tmp_path, capsys):
    data, feats = write_feature_dataset(tmp_path)
    args = fit_args(data, feats, tmp_path / "run")
    args[args.index("--step_checkpoint.every_n_steps") + 1] = "0"
    assert main(["fit", *args]) == 2
    assert "every_n_steps must be at least 1" in capsys.readouterr().err


def test_train_loader_is_stateful_and_shuffles_as_torch(tmp_path):
    """The same seed gives the same batches as a plain shuffled DataLoader (the demo's metrics depend on it)."""
    from torch.utils.data import DataLoader

    from vidcap.training.data import ResumableShuffle

    items = list(range(23))

    def batches(loader) -> list[list[int]]:
        torch.manual_seed(0)
        return [batch.tolist() for _ in range(3) for batch in loader]

    plain = batches(DataLoader(items, batch_size=4, shuffle=True))
    from torchdata.stateful_dataloader import StatefulDataLoader

    stateful = StatefulDataLoader(items, batch_size=4, sampler=ResumableShuffle(len(items)))
    assert batches(stateful) == plain
    # Mid-epoch: a new loader given the state after 2 batches yields the epoch's remaining batches.
    torch.manual_seed(0)
    first = iter(stateful)
    head = [next(first).tolist() for _ in range(2)]
    state = stateful.state_dict()
    again = StatefulDataLoader(items, batch_size=4, sampler=ResumableShuffle(len(items)))
    again.load_state_dict(state)
    assert head + [b.tolist() for b in again] == plain[:6]
