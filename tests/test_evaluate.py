"""`vidcap evaluate` and vidcap.evaluation: outputs, the reversal test, exit codes, 2 processes = 1 process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import DG, WORDS, T, write_feature_dataset
from vidcap.cli import main
from vidcap.evaluation import reverse_frames
from vidcap.experiments.demo import DATA_CONFIG, DEMO_CONFIG, Training, train
from vidcap.text.vocab import Vocabulary


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    data, store = write_feature_dataset(root)
    tiny = {"model.architecture.embed_dim": 8, "model.architecture.hidden_dim": 16,
            "model.architecture.attention_dim": 8, "data.batch_size": 8, "trainer.max_epochs": 2,
            "trainer.check_val_every_n_epoch": 2, "model.decoding.beam_size": 3}
    out = {"data": data, "store": store, "root": root}
    for variant, encoder in (("basic", "none"), ("global", "position")):
        training = Training((str(DATA_CONFIG), str(DEMO_CONFIG)), {
            **tiny, "model.architecture.variant": variant, "model.architecture.encoder": encoder})
        ckpt, _ = train(data, store, root / f"{variant}-{encoder}", training, progress=False)
        out[variant] = ckpt
    return out


def test_reverse_frames_reverses_valid_frames_and_keeps_padding():
    feats = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    out = reverse_frames(feats, mask)
    assert out[:, :, 0].tolist() == [[2.0, 1.0, 0.0, 3.0], [7.0, 6.0, 5.0, 4.0]]
    assert torch.equal(reverse_frames(out, mask), feats)


def _evaluate(trained, name, out, *extra) -> int:
    """`vidcap evaluate` with the beam size the model was configured with (3)."""
    return main(["evaluate", "--checkpoint", str(trained[name]), "--data", str(trained["data"]),
                 "--features", str(trained["store"]), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def one_process(trained, tmp_path_factory) -> Path:
    """The one-process evaluation (batches of 2, with --reverse) that the multi-process ones must give exactly."""
    out = tmp_path_factory.mktemp("eval1")
    assert _evaluate(trained, "global", out, "--reverse", "--batch-size", "2") == 0
    return out


@pytest.mark.java
@pytest.mark.slow
def test_evaluate_writes_predictions_metrics_and_table_row(trained, tmp_path, capsys):
    out = tmp_path / "eval"
    assert _evaluate(trained, "global", out, "--compare", "--n-best", "2", "--reverse") == 0
    stdout = capsys.readouterr().out
    predictions = json.loads((out / "predictions.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    nbest = json.loads((out / "nbest.json").read_text())
    assert sorted(predictions) == [f"v{i:02d}" for i in range(15, 20)]
    assert set(metrics) == {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "perplexity", "reversal_changed"}
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert (evaluation["options"]["beam_size"], evaluation["options"]["max_len"]) == (3, 20)  # the model's config
    assert all(len(nbest[v]) == 2 and nbest[v][0]["caption"] == predictions[v] for v in predictions)
    # Perplexity over the references (EOS included) of a trained model is finite and above 1.
    assert 1.0 < metrics["perplexity"] < len(WORDS) + 4
    lines = stdout.splitlines()
    ours = next(line for line in lines if line.startswith("| ours: + Global (temporal attention) [position encoder]"))
    assert ours.split("|")[2].strip() == f"{metrics['Bleu_4']:.4f}"
    assert ours.split("|")[4].strip() == f"{metrics['CIDEr']:.4f}"
    paper = next(line for line in lines if line.startswith("| paper (msvd): + Global (temporal attention)"))
    assert paper.split("|")[2:6] == [" 0.4028 ", " 0.2900 ", " 0.4801 ", "      27.89 "]


@pytest.mark.java
@pytest.mark.slow
def test_basic_model_is_blind_to_frame_order(trained, tmp_path):
    out = tmp_path / "eval"
    assert _evaluate(trained, "basic", out, "--reverse") == 0
    predictions = json.loads((out / "predictions.json").read_text())
    reversed_ = json.loads((out / "reversed_predictions.json").read_text())
    assert reversed_ == predictions
    assert json.loads((out / "metrics.json").read_text())["reversal_changed"] == 0.0


def test_missing_checkpoint_is_exit_2(trained, tmp_path, capsys):
    trained = {**trained, "global": tmp_path / "nope.ckpt"}
    assert _evaluate(trained, "global", tmp_path / "eval") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"vidcap evaluate: error: {tmp_path / 'nope.ckpt'}: checkpoint not found"


def test_garbage_checkpoint_is_exit_2(trained, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    assert _evaluate({**trained, "global": bad}, "global", tmp_path / "eval") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"vidcap evaluate: error: {bad}: not a")


def test_store_with_other_features_is_exit_2(trained, tmp_path, capsys):
    store = tmp_path / "other"
    (store / "features").mkdir(parents=True)
    meta = json.loads((trained["store"] / "meta.json").read_text())
    meta["global"]["dim"] = DG * 2
    (store / "meta.json").write_text(json.dumps(meta))
    assert _evaluate({**trained, "store": store}, "global", tmp_path / "eval") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"vidcap evaluate: error: {trained['global']}: cannot evaluate it on {store} and {trained['data']}: "
                   f"trained on global features of width {DG} (the feature store: {DG * 2})")


def test_data_with_another_vocabulary_is_exit_2(trained, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(trained["data"], data)
    Vocabulary(WORDS[::-1]).save(data / "vocab.json")
    assert _evaluate({**trained, "data": data}, "global", tmp_path / "eval") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vidcap evaluate: error: {trained['global']}: cannot evaluate it")
    assert "trained with another vocabulary (15 tokens, the data's vocab.json 15; first difference at id 4" in err[0]


def test_n_best_larger_than_beam_is_exit_2(trained, tmp_path, capsys):
    assert _evaluate(trained, "global", tmp_path / "eval", "--n-best", "4") == 2
    assert "n_best must be between 1 and beam_size (3), got 4" in capsys.readouterr().err


@pytest.mark.java
@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_give_the_same_result_as_one(trained, one_process, tmp_path, capsys):
    names = ("predictions", "reversed_predictions", "metrics")
    one = one_process
    # 5 test videos in batches of 2 on 2 ranks: DistributedSampler repeats one video, which must not count twice.
    two = tmp_path / "eval2"
    proc = subprocess.run(
        [sys.executable, "-m", "vidcap", "evaluate", "--checkpoint", str(trained["global"]), "--data",
         str(trained["data"]), "--features", str(trained["store"]), "--out", str(two), "--beam-size", "3",
         "--reverse", "--batch-size", "2", "--devices", "2"],
        capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("| ours: ") == 1  # printed by rank 0 only
    outs = [{name: json.loads((out / f"{name}.json").read_text()) for name in names} for out in (one, two)]
    assert outs[1]["predictions"] == outs[0]["predictions"]
    assert outs[1]["reversed_predictions"] == outs[0]["reversed_predictions"]
    assert outs[1]["metrics"] == pytest.approx(outs[0]["metrics"], rel=1e-6)


@pytest.mark.java
@pytest.mark.slow
@pytest.mark.ddp
def test_two_torchrun_nodes_give_the_same_result_as_one(trained, one_process, tmp_path):
    """torchrun --nnodes 2 --nproc-per-node 1 (tests/test_launcher.py): Lightning's Trainer on the launcher's
    processes; rank 0 writes the outputs."""
    from tests.helpers import torchrun_nodes

    names = ("predictions", "reversed_predictions", "metrics")
    one, two = one_process, tmp_path / "eval2"
    args = ["vidcap", "evaluate", "--checkpoint", str(trained["global"]), "--data", str(trained["data"]),
            "--features", str(trained["store"]), "--out", str(two), "--reverse", "--batch-size", "2"]
    (code0, out0, err0), (code1, out1, err1) = torchrun_nodes([args, args], tmp_path / "logs")
    assert (code0, code1) == (0, 0), err0[-3000:] + err1[-3000:]
    assert out0.count("| ours: ") == 1 and "| ours: " not in out1  # printed by rank 0 only
    outs = [{name: json.loads((out / f"{name}.json").read_text()) for name in names} for out in (one, two)]
    assert outs[1]["predictions"] == outs[0]["predictions"]
    assert outs[1]["metrics"] == pytest.approx(outs[0]["metrics"], rel=1e-6)
    assert json.loads((two / "evaluation.json").read_text())["options"]["num_nodes"] == 2


def test_store_check_looks_only_at_the_features_the_model_reads():
    from vidcap.model.checkpoint import store_mismatches

    trained = {"num_frames": T, "global": {"name": "g", "dim": DG}, "local": {"name": "l", "dim": 4}}
    global_only = {"num_frames": T, "global": {"name": "g", "dim": DG}, "local": None}
    model = {"global_dim": DG, "local_dim": 4, "max_frames": T}
    assert store_mismatches({"model": {**model, "variant": "global"}, "features": trained}, global_only) == []
    assert store_mismatches({"model": {**model, "variant": "local_global"}, "features": trained}, global_only) == [
        "trained on local features (l) (the feature store: none)"]
    other = {**global_only, "global": {"name": "h", "dim": DG, "image_size": 64}}
    assert store_mismatches({"model": {**model, "variant": "global"}, "features": trained}, other) == [
        "trained on global features with name='g' (the feature store: 'h')"]


def test_store_sampled_otherwise_is_refused():
    from vidcap.model.checkpoint import store_mismatches

    trained = {"num_frames": T, "global": {"name": "g", "dim": DG}}  # an older store: the default rule
    meta = {"model": {"variant": "global", "global_dim": DG, "max_frames": T}, "features": trained}
    store = {**trained, "sampling": {"rule": "uniform_middle", "num_frames": T}}
    [problem] = store_mismatches(meta, store)
    assert problem.startswith("trained on frames sampled as {") and "(the feature store: {'rule': 'uniform_middle'" in (
        problem)
    assert store_mismatches(meta, {**trained, "num_frames": T + 1})[0].startswith("trained on frames sampled as")
    # A checkpoint that does not record its features: the frame count of its position table.
    unrecorded = {**meta, "features": None}
    assert store_mismatches(unrecorded, {**trained, "num_frames": T + 1}) == [
        f"trained on {T} frames per video (the feature store: {T + 1})"]


def test_n_best_comes_from_the_one_beam_search(trained, tmp_path, monkeypatch):
    """--n-best 2 decodes each batch once; the best of the n-best list is the prediction."""
    import vidcap.text.metrics
    import vidcap.training.module
    from vidcap.evaluation import evaluate
    from vidcap.model.checkpoint import read_decoding, with_overrides

    calls = []

    def counting_decode(model, feats, mask, options, bos, eos):
        calls.append(options)
        return decode(model, feats, mask, options, bos, eos)

    decode = vidcap.training.module.decode
    monkeypatch.setattr(vidcap.training.module, "decode", counting_decode)
    monkeypatch.setattr(vidcap.text.metrics, "score_captions",
                        lambda refs, preds: dict.fromkeys(("Bleu_4", "METEOR", "ROUGE_L", "CIDEr"), 0.0))
    decoding = with_overrides(read_decoding(trained["global"]), n_best=2)
    result = evaluate(trained["global"], trained["data"], trained["store"], decoding, progress=False)
    assert [(o.beam_size, o.max_len, o.n_best) for o in calls] == [(3, 20, 2)]  # 5 test videos, one batch
    assert all(result.nbest[v][0]["caption"] == caption for v, caption in result.predictions.items())
    assert result.dataset == "msvd" and "reversal_changed" not in result.metrics


@pytest.mark.java
@pytest.mark.slow
def test_report_of_a_feature_only_store(trained, tmp_path, capsys):
    """--report DIR: one card per test video with its words' attention, no pictures (no videos.csv) and a note; the
    metric table holds metrics.json's values and, with --compare, the paper's row."""
    from vidcap.report.cards import NO_VIDEO_FILE

    out, report = tmp_path / "eval", tmp_path / "report"
    assert _evaluate(trained, "global", out, "--compare", "--report", str(report)) == 0
    assert f"report: {report / 'index.html'}" in capsys.readouterr().err
    page = (report / "index.html").read_text(encoding="utf-8")
    predictions = json.loads((out / "predictions.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert page.count('class="card"') == len(predictions) == 5
    assert page.count(NO_VIDEO_FILE) == 5 and "<img" not in page
    assert page.count('class="w"') == sum(len(caption.split()) + 1 for caption in predictions.values())
    assert f'data-key="CIDEr" data-value="{json.dumps(metrics["CIDEr"])}"' in page
    assert "Yao et al. 2015 (paper)" in page and ">0.4801<" in page  # MSVD's + Global row


def test_report_folder_that_cannot_be_created_is_exit_2(trained, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert _evaluate(trained, "global", tmp_path / "eval", "--report", str(blocker / "report")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vidcap evaluate: error: {blocker / 'report'}: cannot create the report folder: Not a directory"]
    assert not (tmp_path / "eval").exists()  # refused before decoding anything
