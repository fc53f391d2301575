"""Training through the real CLI and YAML configs: data module, fast_dev_run per variant, checkpoints, resume, DDP."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import REPO, cli_args, count_score, metrics_rows, training_probe, write_data, write_store
from tests.helpers import TRAIN_CAPTIONS as CAPTIONS
from tests.helpers import TRAIN_DG as DG
from tests.helpers import TRAIN_DL as DL
from tests.helpers import TRAIN_T as T
from tests.helpers import TRAIN_WORDS as WORDS
from vidcap.cli import main
from vidcap.errors import UsageError
from vidcap.training.data import CaptionDataModule, collate
from vidcap.training.lightning_cli import run_lightning

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dataset")
    lengths = {v: 5 for v, _, _ in CAPTIONS if v != "gone"}
    lengths.update({"tr1": 3, "va1": 2})
    return write_data(root / "data", CAPTIONS), write_store(root / "feats", lengths)


# -- data ----------------------------------------------------------------------------------------------------------
def test_collate_pads_captions_and_frames():
    mask_a, mask_b = np.array([1, 1, 1, 0, 0], bool), np.array([1, 1, 0, 0, 0], bool)
    samples = [
        {"video_id": "a", "global": np.ones((T, 2), np.float16), "local": None, "mask": mask_a,
         "references": ["x y", "z"], "tokens": [[5, 6, 2], [7, 2]]},
        {"video_id": "b", "global": np.zeros((T, 2), np.float16), "local": None, "mask": mask_b,
         "references": ["w"], "tokens": [[8, 2]]},
    ]
    batch = collate(samples)
    assert batch["video_ids"] == ["a", "b"] and batch["local"] is None
    assert batch["global"].shape == (2, T, 2) and batch["global"].dtype == torch.float32
    assert batch["mask"].tolist() == [mask_a.tolist(), mask_b.tolist()]
    assert batch["inputs"].tolist() == [[1, 5, 6], [1, 7, 0], [1, 8, 0]]
    assert batch["targets"].tolist() == [[5, 6, 2], [7, 2, 0], [8, 2, 0]]
    assert batch["caption_video"].tolist() == [0, 0, 1]
    assert batch["references"] == [["x y", "z"], ["w"]]


def test_datamodule_sizes_splits_and_skipped_videos(dataset, caplog):
    data, feats = dataset
    dm = CaptionDataModule(str(data), str(feats), batch_size=3, num_workers=0)
    assert (dm.vocab_size, dm.global_dim, dm.local_dim, dm.num_frames) == (4 + len(WORDS), DG, DL, T)
    assert dm.feature_meta["global"]["name"] == "fake2d"
    assert dm.datasets == {}  # nothing read before setup()
    with caplog.at_level(logging.WARNING, logger="vidcap.training.data"):
        dm.setup("fit")
    assert "train: 1 of 9 videos have no features" in caplog.text
    assert len(dm.datasets["train"]) == 10 and len(dm.datasets["val"]) == 3
    val = next(iter(dm.val_dataloader()))
    assert val["video_ids"] == ["va0", "va1", "va2"]
    assert val["caption_video"].tolist() == [0, 0, 1, 2, 2]
    assert val["mask"].sum(1).tolist() == [5, 2, 5]
    vocab = dm.vocab
    assert vocab.decode(val["targets"][2].tolist()) == "a dog is running"
    train = next(iter(dm.train_dataloader()))
    assert train["global"].shape == (3, T, DG) and train["local"].shape == (3, T, DL)


def test_datamodule_user_errors(dataset, tmp_path):
    data, feats = dataset
    with pytest.raises(UsageError, match="data directory not found"):
        CaptionDataModule(str(tmp_path / "nowhere"), str(feats))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"vocab\.json: vocabulary not found"):
        CaptionDataModule(str(tmp_path / "empty"), str(feats))
    with pytest.raises(UsageError, match="feature store not found"):
        CaptionDataModule(str(data), str(tmp_path / "nofeats"))
    with pytest.raises(UsageError):
        CaptionDataModule(str(data), str(tmp_path / "empty"))  # a folder without meta.json


def test_cli_user_error_is_one_line_exit_2(dataset, tmp_path, capsys):
    data, _ = dataset
    args = cli_args(dataset, tmp_path)
    args[args.index("--data.features_dir") + 1] = str(tmp_path / "missing")
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vidcap fit: error: ") and "feature store not found" in err[0]


def test_variant_needing_local_features_is_a_usage_error(dataset, tmp_path, capsys):
    data, _ = dataset
    feats = write_store(tmp_path / "global_only", {"tr0": 5}, local=False)
    args = cli_args((data, feats), tmp_path, model="local_global")
    assert main(["fit", *args]) == 2
    assert "needs local (3-D CNN) features" in capsys.readouterr().err


def test_print_config_has_no_linked_values(dataset, tmp_path, capsys):
    assert main(["fit", *cli_args(dataset, tmp_path), "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "variant: global" in out and "encoder: position" in out and "gradient_clip_val: 10.0" in out
    assert "vocab_size" not in out and "feature_meta" not in out and "max_frames" not in out


@pytest.mark.parametrize("files, expected", [
    (["data/msvd", "model/local_global", "trainer/gpu", "trainer/ddp"],
     ["variant: local_global", "precision: bf16-mixed", "strategy: ddp", "devices: -1", "batch_size: 64",
      "monitor: val/CIDEr"]),
    (["data/msvd", "experiment/paper", "trainer/cpu"],
     ["variant: global", "encoder: none", "hidden_dim: 3518", "optimizer: adadelta", "init: paper",
      "first_input: zero", "dropout_sites: paper", "mask_attention: false", "attention_penalty_scale: paper",
      "weight_decay_in_loss: true", "shrinking_beam: true", "max_len: 50", "drop_long_captions: true",
      "val_check_interval: 2000", "monitor: val/loss", "patience: 21"]),
    (["data/synthetic", "model/local", "trainer/cpu", "debug"],
     ["variant: local", "hidden_dim: 32", "caption_metrics: false", "limit_train_batches: 4"]),
])
def test_config_files_compose(files, expected, tmp_path, capsys):
    args = [a for f in files for a in ("--config", str(REPO / f"configs/{f}.yaml"))]
    assert main(["fit", *args, "--data.data_dir", "D", "--data.features_dir", "F", "--print_config"]) == 0
    out = capsys.readouterr().out
    for line in expected:
        assert line in out, line


# -- training through the CLI --------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["basic", "local", "global", "local_global"])
def test_fast_dev_run_each_variant(dataset, tmp_path, variant):
    probe = training_probe()
    assert run_lightning("fit", cli_args(dataset, tmp_path, "--trainer.fast_dev_run", "true", model=variant),
                         callbacks=[probe]) == 0
    seen = probe.seen
    assert seen["variant"] == variant and seen["steps"] == 1
    assert math.isfinite(seen["metrics"]["train/loss"]) and seen["metrics"]["train/loss"] > 0
    assert any(name.startswith("lstm.") for name in seen["moved"])  # one optimiser step changed the decoder
    assert seen["dtypes"]["lstm"] == torch.float32


@pytest.mark.parametrize("encoder", ["bilstm", "position"])
def test_bf16_autocast_trains(dataset, tmp_path, encoder):
    """The GPU config's bf16-mixed, exercised on CPU autocast: the recurrent modules (the decoder's LSTM cell, and
    the bilstm frame encoder) run in float32 even then."""
    probe = training_probe()
    args = cli_args(dataset, tmp_path, "--trainer.fast_dev_run", "true", "--trainer.precision", "bf16-mixed",
                    "--model.architecture.encoder", encoder, model="local_global")
    assert run_lightning("fit", args, callbacks=[probe]) == 0
    seen = probe.seen
    assert seen["steps"] == 1 and math.isfinite(seen["metrics"]["train/loss"])
    recurrent = seen["dtypes"]
    assert "lstm" in recurrent and (encoder != "bilstm" or len(recurrent) == 2), recurrent
    assert set(recurrent.values()) == {torch.float32}


@pytest.mark.slow
def test_checkpoint_self_describing_and_resume(dataset, tmp_path, capsys, caplog):
    from vidcap.model.checkpoint import load_checkpoint

    root = tmp_path / "run"
    args = cli_args(dataset, root, "--trainer.val_check_interval", "2", "--trainer.limit_train_batches", "3",
                    "--trainer.max_epochs", "3")
    assert main(["fit", *args, "--trainer.max_steps", "2"]) == 0
    last = root / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 2
    meta = checkpoint["vidcap"]
    assert meta["format"] == 1
    assert meta["model"]["variant"] == "global" and meta["model"]["encoder"] == "position"
    assert meta["model"]["vocab_size"] == 4 + len(WORDS) and meta["model"]["max_frames"] == T
    assert meta["vocab"]["tokens"][4:] == WORDS
    assert meta["features"]["global"]["name"] == "fake2d"

    # The model rebuilds from the checkpoint alone and computes what the training module computed.
    model, vocab, features = load_checkpoint(last)
    assert vocab.itos[4:] == WORDS and features == meta["features"]
    assert all(torch.equal(v, checkpoint["state_dict"][f"model.{k}"]) for k, v in model.state_dict().items())

    # Resume: the second run starts at step 2 and stops at 5; a restart would log steps 0 and 1 again.
    assert main(["fit", *args, "--trainer.max_steps", "5", "--ckpt_path", "last"]) == 0
    assert torch.load(last, weights_only=True)["global_step"] == 5
    rows = [r for r in metrics_rows(root) if r.get("train/loss")]
    first, second = ([int(r["step"]) for r in rows if r["version"] == v] for v in ("version_0", "version_1"))
    assert first == [0, 1] and second == [2, 3, 4]

    # The hyper-parameters hold the architecture only (LightningCLI restores them for --ckpt_path FILE); the
    # decoding options the run used are in the "vidcap" section.
    from vidcap.training.module import ARCHITECTURE

    assert checkpoint["hyper_parameters"] == {"architecture": {k: meta["model"][k] for k in ARCHITECTURE}}
    assert set(ARCHITECTURE) == set(meta["model"]) - {"vocab_size", "global_dim", "local_dim", "max_frames"}
    assert meta["decoding"]["beam_size"] == 5

    # With a checkpoint file, its architecture wins over the config's (and says so); given as "last", a mismatch
    # is one line, not a state_dict traceback.
    other = cli_args(dataset, root, model="local_global")
    with caplog.at_level(logging.WARNING, logger="vidcap.training.lightning_cli"):
        assert main(["validate", *other, "--ckpt_path", str(last)]) == 0
    assert "model.architecture.variant: 'global' from the checkpoint, not 'local_global'" in caplog.text
    assert main(["validate", *other, "--ckpt_path", "last"]) == 2
    assert "the checkpoint's model differs: variant='global' (config: 'local_global')" in capsys.readouterr().err
    # Options other than the architecture come from the command line, not from the checkpoint.
    from vidcap.training.lightning_cli import VidcapCLI

    cli = VidcapCLI(["validate", *other, "--ckpt_path", str(last), "--model.decoding.beam_size", "1",
                     "--model.attention_penalty", "0.5"])
    assert (cli.model.config.variant, cli.model.decoding.beam_size, cli.model.attention_penalty) == ("global", 1, 0.5)

    # validate / test with the checkpoint; validation of the final weights reproduces the logged val/loss.
    assert main(["validate", *args, "--ckpt_path", str(last)]) == 0
    assert main(["test", *args, "--ckpt_path", str(last)]) == 0
    rows = metrics_rows(root)
    assert any(r.get("test/ppl") for r in rows)
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert val[-1] == pytest.approx(val[-2], rel=1e-5)


def test_caption_metrics_scored_once_on_the_whole_split(dataset, tmp_path, monkeypatch):
    """Decoded captions of every batch are collected and scored in one call per validation epoch."""
    import vidcap.text.metrics

    calls = []

    def fake_score(references, predictions):
        calls.append((dict(references), dict(predictions)))
        return count_score(references, predictions)

    monkeypatch.setattr(vidcap.text.metrics, "score_captions", fake_score)
    args = cli_args(dataset, tmp_path, "--model.caption_metrics", "true", "--data.eval_batch_size", "2",
                    "--trainer.limit_val_batches", "1.0")
    assert main(["validate", *args]) == 0
    assert len(calls) == 1
    references, predictions = calls[0]
    assert references == {"va0": ["a man is cooking", "the man is cooking"], "va1": ["a dog is running"],
                          "va2": ["a woman is playing guitar", "a woman is playing"]}
    assert sorted(predictions) == ["va0", "va1", "va2"] and all(isinstance(p, str) for p in predictions.values())
    (row,) = [r for r in metrics_rows(tmp_path) if r.get("val/CIDEr")]
    assert (float(row["val/BLEU4"]), float(row["val/CIDEr"])) == (5.0, 3.0)
    assert float(row["val/METEOR"]) == sum(len(p.split()) for p in predictions.values())


def test_load_checkpoint_rejects_other_files(tmp_path):
    from vidcap.errors import CheckpointError
    from vidcap.model.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.ckpt: not a (loadable )?checkpoint \("):
        load_checkpoint(tmp_path / "garbage.ckpt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a vidcap checkpoint"):
        load_checkpoint(tmp_path / "other.ckpt")
    torch.save({"state_dict": {}, "vidcap": {"format": 99}}, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError, match="format 99 is not supported"):
        load_checkpoint(tmp_path / "future.ckpt")


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_two_cpu_processes(dataset, tmp_path, monkeypatch):
    """2 gloo processes; the 3 val videos are padded to 4 by DistributedSampler: nothing may count twice.
    One process validating the same weights must log exactly the same perplexity and caption scores.
    The scorer is `count_score` (no Java) in both runs: a script patches it in, and Lightning relaunches
    that script for the second rank."""
    import vidcap.text.metrics

    script = tmp_path / "vidcap_counting.py"
    script.write_text(
        "import sys\nimport vidcap.text.metrics\n"
        f"sys.path[:0] = [{str(Path(__file__).parents[1])!r}]\n"
        "from tests.helpers import count_score\n"
        "vidcap.text.metrics.score_captions = count_score\n"
        "from vidcap.cli import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    monkeypatch.setattr(vidcap.text.metrics, "score_captions", count_score)
    root = tmp_path / "ddp"
    common = ["--model.caption_metrics", "true", "--model.decoding.beam_size", "2", "--trainer.limit_val_batches", "1.0"]
    args = cli_args(dataset, root, *common, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                    "--trainer.accelerator", "cpu")
    proc = subprocess.run([sys.executable, str(script), "fit", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = root / "checkpoints" / "last.ckpt"
    keys = ("val/ppl", "val/loss", "val/BLEU4", "val/METEOR", "val/CIDEr")
    (ddp,) = [r for r in metrics_rows(root) if r.get("val/ppl")]
    assert main(["validate", *cli_args(dataset, root, *common), "--ckpt_path", str(last)]) == 0
    single = [r for r in metrics_rows(root) if r.get("val/ppl")][-1]
    assert single["version"] != ddp["version"]
    for key in keys:
        assert float(single[key]) == pytest.approx(float(ddp[key]), rel=1e-5), key
    assert (float(ddp["val/CIDEr"]), float(ddp["val/BLEU4"])) == (3.0, 5.0)  # 3 videos, 5 references
    assert math.isfinite(float(ddp["val/ppl"])) and float(ddp["val/ppl"]) > 1
