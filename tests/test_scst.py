"""Learning from rewards (issue 12): sampling with gradients, the self-critical loss, hard attention, SCST training
through the CLI, `--model.init_from` errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import REPO, cli_args, count_score, metrics_rows, write_data, write_store
from tests.helpers import TRAIN_CAPTIONS as CAPTIONS
from tests.helpers import TRAIN_WORDS as WORDS
from vidcap.cli import main
from vidcap.errors import UsageError
from vidcap.model.captioner import CaptionModel, ModelConfig
from vidcap.model.decoding import DecodingOptions, decode
from vidcap.text.vocab import Vocabulary
from vidcap.training.caption_sampling import Samples, sample
from vidcap.training.hard_attention import HardAttentionObjective, HardAttentionOptions, frame_log_probs
from vidcap.training.scst import CaptionReward, SCSTOptions, SelfCritical

pytestmark = pytest.mark.usefixtures("one_thread")
BOS, EOS, PAD = Vocabulary.BOS, Vocabulary.EOS, Vocabulary.PAD


def tiny_model(seed: int = 0, **overrides) -> CaptionModel:
    torch.manual_seed(seed)
    config = dict(vocab_size=10, global_dim=6, variant="global", encoder="position", embed_dim=8, hidden_dim=16,
                  attention_dim=8, dropout=0.0, max_frames=5)
    return CaptionModel(ModelConfig(**{**config, **overrides}))


def tiny_batch(B: int = 3, T: int = 5, D: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    feats = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[-1, 3:] = False  # a shorter video
    return feats, mask


# -- sampling ------------------------------------------------------------------------------------------------------
def test_samples_match_teacher_forcing_and_encode_each_video_once():
    model = tiny_model().eval()
    feats, mask = tiny_batch()
    projections = []
    model.att_v.register_forward_hook(lambda module, args, out: projections.append(out.shape[0]))
    torch.manual_seed(3)
    K, max_len = 4, 6
    samples = sample(model, feats, mask, num_samples=K, max_len=max_len)
    assert projections == [3]  # U_a v once per video, not per sample or per word
    N, L = samples.tokens.shape
    assert N == 3 * K and L <= max_len + 1 and samples.alpha is None
    lengths = samples.mask.sum(1)
    assert torch.all(samples.tokens[torch.arange(N), lengths - 1] == EOS)  # every caption ends with EOS
    assert torch.all(samples.tokens[~samples.mask] == PAD) and torch.all(samples.log_probs[~samples.mask] == 0)
    # The same captions, teacher-forced, have the same log-probabilities (the forced EOS at max_len has log-prob 0).
    inputs = torch.cat([torch.full((N, 1), BOS), samples.tokens[:, :-1]], 1).masked_fill(~samples.mask, PAD)
    rows = torch.arange(3).repeat_interleave(K)
    logits, _ = model(feats[rows], mask[rows], inputs)
    expected = F.log_softmax(logits, -1).gather(-1, samples.tokens.unsqueeze(-1)).squeeze(-1)
    sampled = samples.mask.clone()
    if L == max_len + 1:
        sampled[:, max_len] = False
    torch.testing.assert_close(samples.log_probs[sampled], expected[sampled], atol=1e-5, rtol=1e-5)
    # With gradients, back into the shared encoding.
    samples.log_probs.sum().backward()
    assert model.att_v.weight.grad is not None and model.att_v.weight.grad.abs().sum() > 0
    assert samples.words(EOS) == [row[: int(n) - 1] for row, n in zip(samples.tokens.tolist(), lengths, strict=True)]


def test_temperature_zero_is_greedy_search():
    model = tiny_model(seed=5).eval()
    feats, mask = tiny_batch()
    greedy = sample(model, feats, mask, num_samples=1, max_len=4, temperature=0.0)
    hypotheses = decode(model, feats, mask, DecodingOptions(beam_size=1, max_len=4), BOS, EOS)
    assert greedy.words(EOS) == [h[0].tokens for h in hypotheses]


# -- the self-critical loss ----------------------------------------------------------------------------------------
class CountReward:
    """Toy reward: the share of a caption's words that are word id `good` (empty captions: 0)."""

    def __init__(self, good: str):
        self.good = good

    def __call__(self, video_ids, candidates):
        return np.array([c.count(self.good) / len(c) if c else 0.0 for c in candidates])


def fixed_samples(log_probs: torch.Tensor, words: list[list[int]]) -> Samples:
    N, L = len(words), max(len(w) for w in words) + 1
    tokens = torch.full((N, L), PAD)
    for n, w in enumerate(words):
        tokens[n, : len(w) + 1] = torch.tensor([*w, EOS])
    mask = tokens != PAD
    return Samples(tokens, log_probs[:, None].expand(N, L) * mask / mask.sum(1, keepdim=True), mask,
                   torch.zeros(N, L))


def test_self_critical_loss_sign_and_baselines(monkeypatch):
    vocab = Vocabulary(["good", "bad"])
    good, bad = vocab.stoi["good"], vocab.stoi["bad"]
    # One video, K = 4 samples with rewards 1, 1/2, 0, 0 (the share of "good").
    words = [[good, good], [good, bad], [bad], []]
    log_probs = torch.zeros(4, requires_grad=True)
    monkeypatch.setattr("vidcap.training.scst.sample", lambda *args, **kwargs: fixed_samples(log_probs, words))
    model, (feats, mask) = tiny_model(), tiny_batch(B=1)

    mean = SelfCritical(SCSTOptions(num_samples=4, baseline="mean"), CountReward("good"), vocab, max_len=5)
    loss, values = mean(model, feats, mask, ["v"])
    rewards = np.array([1.0, 0.5, 0.0, 0.0])
    baseline = (rewards.sum() - rewards) / 3  # the other 3 samples' mean
    assert values["reward"] == pytest.approx(rewards.mean())
    assert values["baseline"] == pytest.approx(baseline.mean())
    (grad,) = torch.autograd.grad(loss, log_probs)
    # Minimising the loss raises the log-prob of samples that beat their baseline and lowers the others.
    np.testing.assert_allclose(grad.numpy(), -(rewards - baseline) / 4, atol=1e-6)
    assert grad[0] < 0 < grad[3]

    greedy = SelfCritical(SCSTOptions(num_samples=4, baseline="greedy"), CountReward("good"), vocab, max_len=5)
    monkeypatch.setattr(SelfCritical, "_greedy_rewards", lambda self, *args: np.array([0.5]))
    loss, values = greedy(model, feats, mask, ["v"])
    (grad,) = torch.autograd.grad(loss, log_probs)
    np.testing.assert_allclose(grad.numpy(), -(rewards - 0.5) / 4, atol=1e-6)
    assert values["baseline"] == 0.5


def test_self_critical_training_raises_a_toy_reward():
    """A few steps of the real loop (sampling, reward, baseline, Adam) on a reward for one word must raise it."""
    vocab = Vocabulary(["good", "bad", "ugly", "odd", "even", "none"])
    model = tiny_model(seed=2).train()
    feats, mask = tiny_batch(B=4)
    loss_fn = SelfCritical(SCSTOptions(num_samples=5), CountReward("good"), vocab, max_len=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    rewards = []
    for _ in range(30):
        loss, values = loss_fn(model, feats, mask, ["a", "b", "c", "d"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards.append(values["reward"])
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.3


def test_caption_reward_weights_and_empty_captions():
    refs = {"v": [["a", "man", "is", "cooking"], ["a", "man", "cooks"]], "w": [["a", "dog", "runs"]]}
    cider_only = CaptionReward(refs)
    both = CaptionReward(refs, cider_weight=1.0, bleu_weight=2.0)
    candidates = [["a", "man", "is", "cooking"], [], ["a", "dog", "runs"]]
    r1, r2 = cider_only(["v", "v", "w"], candidates), both(["v", "v", "w"], candidates)
    assert r1[1] == 0 and r2[1] == 0  # an empty caption scores 0 and does not crash
    assert r2[0] == pytest.approx(r1[0] + 2.0, abs=1e-3)  # BLEU-4 of an exact reference is 1
    for bad in ({"cider_weight": -1.0}, {"cider_weight": 0.0, "bleu_weight": 0.0}, {"num_samples": 1}):
        with pytest.raises(UsageError):
            SCSTOptions(**bad).check()


# -- hard attention ------------------------------------------------------------------------------------------------
def test_hard_attention_takes_one_frame_and_the_argmax_at_test():
    model = tiny_model(attention="hard")
    feats, mask = tiny_batch()
    model.eval()
    state = model.init_state(feats, mask)
    _, alpha, state = model.step(torch.full((3,), BOS), state)
    assert torch.equal(state["frame"], alpha.argmax(-1))
    # The context is the frame taken (times the selector gate), not the weighted mean.
    start = model.init_state(feats, mask)
    phi, _, _ = model._attend(start["h"], start)
    gate = torch.sigmoid(model.select(start["h"]))
    torch.testing.assert_close(phi, gate * start["ctx"][torch.arange(3), state["frame"]])

    model.train()
    torch.manual_seed(0)
    inputs = torch.randint(4, 10, (3, 7))
    logits, alpha, frames = model.teacher_forcing(feats, mask, inputs)
    assert frames.shape == (3, 7) and frames.dtype == torch.long
    sampled = frames >= 0
    # Each caption either samples a frame at every step or uses the expected context at every step; a sampled
    # frame is always a real one.
    assert torch.all(sampled.all(1) | (~sampled).all(1))
    assert torch.all(mask[torch.arange(3)[:, None].expand(3, 7)[sampled], frames[sampled]])
    # REINFORCE: the frame term trains the attention.
    objective = HardAttentionObjective(HardAttentionOptions())
    token_mask = torch.ones(3, 7, dtype=torch.bool)
    token_mask[2, 4:] = False  # a shorter caption
    word_log_probs = -torch.rand(3, 7)
    term, baseline = objective(word_log_probs, alpha, frames, token_mask, model.attention_entropy(alpha, token_mask))
    # The baselines start at the batch's mean return per number of words left (caption 2 has 4 words, so its
    # steps are compared with those of the other captions that have as many words left).
    returns = (word_log_probs * token_mask).flip(1).cumsum(1).flip(1)
    assert objective.baseline[4] == pytest.approx(((returns[0, 3] + returns[1, 3] + returns[2, 0]) / 3).item())
    assert objective.baseline[7] == pytest.approx(returns[:2, 0].mean().item())
    assert torch.isnan(objective.baseline[0]) and torch.isnan(objective.baseline[8])
    term.backward()
    assert model.att_w.weight.grad.abs().sum() > 0
    assert torch.all(frame_log_probs(alpha, torch.full((3, 7), -1)) == 0)


def test_hard_attention_credits_a_frame_with_the_words_after_it_only():
    """REINFORCE with returns: a frame taken at step t is compared on the words from t on, so words before t
    give it no gradient."""
    objective = HardAttentionObjective(HardAttentionOptions(entropy_weight=0.0))
    alpha = torch.softmax(torch.randn(4, 5, 6), -1).requires_grad_()
    frames = torch.randint(0, 6, (4, 5))
    word_log_probs = torch.full((4, 5), -1.0)
    word_log_probs[:, 0] = torch.tensor([-0.1, -3.0, -1.0, -2.0])  # captions differ only on their first word
    term, _ = objective(word_log_probs, alpha, frames, torch.ones(4, 5, dtype=torch.bool), torch.tensor(0.0))
    term.backward()
    assert alpha.grad[:, 0].abs().sum() > 0
    assert torch.all(alpha.grad[:, 1:] == 0)


def test_hard_attention_needs_an_attention_variant():
    with pytest.raises(UsageError, match="needs an attention variant"):
        ModelConfig(vocab_size=10, global_dim=6, variant="basic", attention="hard")


def test_hard_attention_samples_frames_under_scst():
    model = tiny_model(attention="hard", encoder="bilstm").train()
    feats, mask = tiny_batch()
    samples = sample(model, feats, mask, num_samples=2, max_len=3)
    assert samples.frames.shape == samples.tokens.shape and samples.alpha.shape[:2] == samples.tokens.shape
    assert torch.all(samples.frames[~samples.mask] == -1)


# -- through the CLI -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("scst_data")
    lengths = {v: 5 for v, _, _ in CAPTIONS if v != "gone"}
    return write_data(root / "data", CAPTIONS), write_store(root / "feats", lengths)


@pytest.fixture(scope="module")
def xe_checkpoint(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("xe")
    assert main(["fit", *cli_args(dataset, root, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2")]) == 0
    return root / "checkpoints" / "last.ckpt"


def scst_args(dataset, root, init_from, *extra):
    data, feats = dataset
    return ["--config", str(REPO / "configs/experiment/scst.yaml"), "--config", str(REPO / "configs/debug.yaml"),
            "--config", str(REPO / "configs/trainer/csv_logger.yaml"),
            "--data.data_dir", str(data), "--data.features_dir", str(feats), "--model.init_from", str(init_from),
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
            "--trainer.check_val_every_n_epoch", "1", *extra]


@pytest.mark.parametrize("attention", ["soft", "hard"])
def test_xe_fit_with_either_attention(dataset, tmp_path, attention):
    args = cli_args(dataset, tmp_path, "--trainer.fast_dev_run", "true", "--model.architecture.attention", attention,
                    "--model.architecture.encoder", "bilstm", model="local_global")
    assert main(["fit", *args]) == 0


def test_scst_fit_logs_rewards_and_resumes(dataset, xe_checkpoint, tmp_path, monkeypatch):
    import vidcap.text.metrics

    monkeypatch.setattr(vidcap.text.metrics, "score_captions", count_score)  # val/CIDEr without Java
    root = tmp_path / "scst"
    # The config's architecture (hidden 32 in debug.yaml, local_global) gives way to the checkpoint's.
    args = scst_args(dataset, root, xe_checkpoint, "--model.architecture.variant", "local_global",
                     "--trainer.max_epochs", "3", "--model.scst.baseline", "greedy", "--model.caption_metrics", "true",
                     "--trainer.val_check_interval", "2")
    assert main(["fit", *args, "--trainer.max_steps", "2"]) == 0
    last = root / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["vidcap"]["model"]["variant"] == "global" and checkpoint["global_step"] == 2
    xe = torch.load(xe_checkpoint, weights_only=True)["state_dict"]
    assert any(not torch.equal(v, xe[k]) for k, v in checkpoint["state_dict"].items())  # it trained
    assert main(["fit", *args, "--trainer.max_steps", "3", "--ckpt_path", "last"]) == 0
    assert torch.load(last, weights_only=True)["global_step"] == 3
    rows = [r for r in metrics_rows(root) if r.get("train/reward")]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == 3 and steps[:2] == [0, 1] and steps[2] > 1  # the resumed run goes on, not over
    for row in rows:
        assert 0 <= float(row["train/reward"]) <= 10 and float(row["train/entropy"]) >= 0
        assert float(row["train/baseline"]) >= 0
    # Validation decodes and scores the split as for cross-entropy; checkpoints monitor val/CIDEr.
    assert [float(r["val/CIDEr"]) for r in metrics_rows(root) if r.get("val/CIDEr")] == [3.0]
    callbacks = torch.load(last, weights_only=True)["callbacks"]
    assert any("val/CIDEr" in key for key in map(str, callbacks))


@pytest.mark.ddp
def test_scst_under_ddp_scores_each_ranks_samples_against_the_same_references(dataset, xe_checkpoint, tmp_path):
    """2 gloo processes: each rank builds CIDEr-D from the train split (the same rewards on both) and scores the
    samples of its own videos. A script wraps CaptionReward to record both; Lightning relaunches it for rank 1."""
    script = tmp_path / "vidcap_recording.py"
    script.write_text(
        "import json, os, sys\n"
        "import torch.distributed as dist\n"
        "import vidcap.training.scst as scst\n"
        "from vidcap.cli import main\n"
        "OUT, init, call = os.environ['RECORD_DIR'], scst.CaptionReward.__init__, scst.CaptionReward.__call__\n"
        "def record(name, value):\n"
        "    with open(os.path.join(OUT, f'{name}-{dist.get_rank()}.json'), 'a') as f:\n"
        "        f.write(json.dumps(value) + '\\n')\n"
        "def recording_init(self, references, *args, **kwargs):\n"
        "    init(self, references, *args, **kwargs)\n"
        "    ids = sorted(references)  # each video's first reference, scored against the whole set\n"
        "    record('probe', call(self, ids, [references[i][0] for i in ids]).tolist())\n"
        "def recording_call(self, video_ids, candidates):\n"
        "    record('scored', list(video_ids))\n"
        "    return call(self, video_ids, candidates)\n"
        "scst.CaptionReward.__init__, scst.CaptionReward.__call__ = recording_init, recording_call\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    record = tmp_path / "record"
    record.mkdir()
    root = tmp_path / "ddp"
    args = scst_args(dataset, root, xe_checkpoint, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                     "--trainer.accelerator", "cpu", "--trainer.max_steps", "2", "--model.scst.num_samples", "3",
                     "--data.batch_size", "2")
    proc = subprocess.run([sys.executable, str(script), "fit", *args], capture_output=True, text=True,
                          env={**os.environ, "RECORD_DIR": str(record)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    probes = [json.loads((record / f"probe-{rank}.json").read_text()) for rank in (0, 1)]
    assert probes[0] == probes[1] and len(probes[0]) > 1 and max(probes[0]) > 0
    for rank in (0, 1):
        steps = [json.loads(line) for line in (record / f"scored-{rank}.json").read_text().splitlines()]
        assert len(steps) == 2  # one call per training step: this rank's batch of 2 videos x 3 samples
        # (a video that comes twice in a batch is sampled once)
        assert all(len(ids) in (3, 6) and all(ids.count(v) == 3 for v in ids) for ids in steps)
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_reward_weights_are_checked(dataset, xe_checkpoint, tmp_path, capsys):
    for options, reason in ((("--model.scst.cider_weight", "-1"), "must be >= 0"),
                            (("--model.scst.cider_weight", "0", "--model.scst.bleu_weight", "0"), "all zero"),
                            (("--model.hard_attention.entropy_weight", "-1"), "weights must be >= 0")):
        assert main(["fit", *scst_args(dataset, tmp_path, xe_checkpoint, *options)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert reason in err[-1], err


def test_init_from_bad_checkpoints_are_one_line_errors(dataset, xe_checkpoint, tmp_path, capsys):
    data, feats = dataset
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint at all")
    other_vocab = tmp_path / "other"
    write_data(other_vocab / "data", CAPTIONS)
    Vocabulary(WORDS[::-1]).save(other_vocab / "data" / "vocab.json")
    wide = write_store(tmp_path / "wide", {v: 5 for v, _, _ in CAPTIONS if v != "gone"})
    meta = (wide / "meta.json").read_text().replace('"dim": 6', '"dim": 7')
    (wide / "meta.json").write_text(meta)
    cases = [
        ((data, feats), tmp_path / "missing.ckpt", "checkpoint not found"),
        ((data, feats), tmp_path / "corrupt.ckpt", "not a "),
        ((other_vocab / "data", feats), xe_checkpoint, "another vocabulary"),
        ((data, wide), xe_checkpoint, "trained on global features of width 6 (the feature store: 7)"),
    ]
    for data_and_feats, path, reason in cases:
        assert main(["fit", *scst_args(data_and_feats, tmp_path / "run", path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and reason in err[0], err


# -- the ablation's rows and gates ---------------------------------------------------------------------------------
def test_reward_gates_and_degenerate_captions():
    from vidcap.experiments.ablate import check_gates, degenerate_share

    assert degenerate_share(["a man is cooking", "a man is a", "a dog dog runs", "", "a cat runs and"]) == 0.8
    base = {"variant": "global", "encoder": "position", "objects_order_acc": 0.8, "order_given_objects_acc": 0.9,
            "degenerate": 0.1, "reversal_changed": 0.95}
    rows = [{**base, "training": "xe", "seed": 0, "CIDEr": 1.0}, {**base, "training": "xe", "seed": 1, "CIDEr": 1.2},
            {**base, "training": "scst", "seed": 0, "CIDEr": 1.2, "objects_order_acc": 0.85},
            {**base, "training": "scst", "seed": 1, "CIDEr": 1.25},
            {**base, "training": "hard", "seed": 0, "CIDEr": 0.9, "order_given_objects_acc": 0.95}]
    gates = {g.name: g for g in check_gates(rows)}
    assert gates["global+position SCST raises CIDEr in every seed"].passed
    assert gates["global+position SCST CIDEr - XE CIDEr"].value == pytest.approx(0.125)
    assert gates["global+position SCST CIDEr - XE CIDEr"].passed
    assert gates["global+position SCST objects_order_acc - XE objects_order_acc"].passed
    assert gates["global+position SCST degenerate - XE degenerate"].passed
    assert gates["global+position hard order_given_objects_acc"].passed
    assert gates["global+position |hard CIDEr - soft CIDEr|"].value == pytest.approx(0.2)
    # One seed that falls, captions that degenerate: FAIL.
    rows[3]["CIDEr"], rows[3]["degenerate"] = 1.1, 0.5
    gates = {g.name: g for g in check_gates(rows)}
    assert not gates["global+position SCST raises CIDEr in every seed"].passed
    assert not gates["global+position SCST degenerate - XE degenerate"].passed


def test_explanation_outlines_the_frame_each_word_took(tmp_path, monkeypatch):
    import matplotlib.patches

    from vidcap.report.explain import HIGHLIGHT, render_explanation

    outlined = []

    class Recording(matplotlib.patches.Rectangle):
        def __init__(self, xy, *args, **kwargs):
            if kwargs.get("edgecolor") == HIGHLIGHT:  # not the figure's own rectangles
                outlined.append(tuple(xy))
            super().__init__(xy, *args, **kwargs)

    monkeypatch.setattr(matplotlib.patches, "Rectangle", Recording)
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    attention = np.array([[0.34, 0.33, 0.33], [0.2, 0.5, 0.3]])
    args = (frames, [0.0, 1.0, 2.0], ["dog", "<eos>"], attention, "dog")
    render_explanation(tmp_path / "soft.png", *args)
    assert outlined == []  # soft attention: no frame stands out
    render_explanation(tmp_path / "hard.png", *args, taken=[2, 0])
    assert outlined == [(1.5, -0.5), (-0.5, 0.5)]  # hard attention: the frames taken, whatever their weight
