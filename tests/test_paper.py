"""The paper-exact options (issue 13, docs/paper_vs_original.md) against an independent numpy port of the original.

`Original` below re-implements yaoli/arctic-capgen-vid's equations as its Theano code writes them (model_attention.py:
`lstm_cond_layer`, `build_model`, `build_sampler`, `gen_sample`, the cost in `train`; common.py: `dropout_layer`,
`norm_weight`, `ortho_weight`): time-major arrays, its parameter names, its gate order (i, f, o, c), one LSTM bias,
h and c held on padded steps, dropout at test as a factor 0.5. It shares nothing with vidcap but the weights, which
`original_params` maps in, and the batch layout, built here by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vidcap.model.captioner import CaptionModel, ModelConfig
from vidcap.model.decoding import DecodingOptions, decode
from vidcap.text.vocab import Vocabulary
from vidcap.training.data import CaptionDataset, collate, read_split
from vidcap.training.module import CaptionModule

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]

V, D, E, H, A, K = 13, 6, 5, 7, 4, 5
EOS = Vocabulary.EOS
PAPER = dict(init="paper", first_input="zero", dropout_sites="paper", mask_attention=False)


def paper_model(seed: int = 0, scale: float = 0.4, **kw) -> CaptionModel:
    """A tiny paper-option model with random weights of a size that makes every term matter. The LSTM's second
    bias is 0 (the original has one bias), so its L2 sum is the original's too."""
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=V, global_dim=D, variant="global", encoder="none", embed_dim=E, hidden_dim=H,
                         attention_dim=A, max_frames=K, **{**PAPER, **kw})
    model = CaptionModel(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, scale)
        model.lstm.bias_hh.zero_()
        model.embed.weight[[Vocabulary.PAD, Vocabulary.BOS]] = 0.0  # never looked up (zero first input)
    return model.eval()


def original_params(model: CaptionModel) -> dict[str, np.ndarray]:
    """vidcap's weights under the original's names and layouts (x @ W, gate columns i, f, o, c)."""
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}

    def gates(w: np.ndarray) -> np.ndarray:  # PyTorch rows (i, f, g, o) -> the original's columns (i, f, o, c)
        i, f, g, o = np.split(w, 4, axis=0)
        return np.concatenate([i, f, o, g], axis=0).T

    weight_ih = sd["lstm.weight_ih"]
    return {
        "Wemb": sd["embed.weight"],
        "ff_state_W": sd["init_h.weight"].T, "ff_state_b": sd["init_h.bias"],
        "ff_memory_W": sd["init_c.weight"].T, "ff_memory_b": sd["init_c.bias"],
        "decoder_W": gates(weight_ih[:, :E]), "decoder_Wc": gates(weight_ih[:, E:]),
        "decoder_U": gates(sd["lstm.weight_hh"]),
        "decoder_b": gates((sd["lstm.bias_ih"] + sd["lstm.bias_hh"])[:, None])[0],
        "decoder_Wc_att": sd["att_v.weight"].T, "decoder_Wd_att": sd["att_h.weight"].T,
        "decoder_b_att": sd["att_h.bias"], "decoder_U_att": sd["att_w.weight"].T, "decoder_c_tt": np.zeros(1),
        "decoder_W_sel": sd["select.weight"].T, "decoder_b_sel": sd["select.bias"],
        "ff_logit_lstm_W": sd["out_h.weight"].T, "ff_logit_lstm_b": sd["out_h.bias"],
        "ff_logit_ctx_W": sd["out_phi.weight"].T, "ff_logit_ctx_b": np.zeros(E),
        "ff_logit_W": sd["out.weight"].T, "ff_logit_b": sd["out.bias"],
    }


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Original:
    """The original's forward pass at test time (use_noise = 0: dropout is a factor 0.5)."""

    def __init__(self, p: dict[str, np.ndarray]):
        self.p = p

    def init(self, ctx, ctx_mask):
        """ctx (m, K, D), ctx_mask (m, K) -> h0, c0 (m, H): tanh(ff(sum of frames / number of real frames))."""
        mean = ctx.sum(1) / ctx_mask.sum(-1)[:, None]
        p = self.p
        return np.tanh(mean @ p["ff_state_W"] + p["ff_state_b"]), np.tanh(mean @ p["ff_memory_W"] + p["ff_memory_b"])

    def step(self, m_, emb, h_, c_, ctx):
        """lstm_cond_layer's _step, then the readout. emb (m, E), m_ (m,) -> h, c, alpha (m, K), probs (m, V)."""
        p = self.p
        pctx = ctx @ p["decoder_Wc_att"] + p["decoder_b_att"]
        pctx = np.tanh(pctx + (h_ @ p["decoder_Wd_att"])[:, None, :])
        alpha = softmax((pctx @ p["decoder_U_att"] + p["decoder_c_tt"])[..., 0])  # every frame, padded ones too
        ctx_ = (ctx * alpha[:, :, None]).sum(1)
        ctx_ = sigmoid(h_ @ p["decoder_W_sel"] + p["decoder_b_sel"]) * ctx_
        preact = h_ @ p["decoder_U"] + (emb @ p["decoder_W"] + p["decoder_b"]) + ctx_ @ p["decoder_Wc"]
        i, f, o, c = np.split(preact, 4, axis=-1)
        i, f, o = sigmoid(i * 0.5), sigmoid(f * 0.5), sigmoid(o * 0.5)
        c = f * c_ + i * np.tanh(c)
        c = m_[:, None] * c + (1.0 - m_)[:, None] * c_
        h = o * np.tanh(c)
        h = m_[:, None] * h + (1.0 - m_)[:, None] * h_
        logit = (h * 0.5) @ p["ff_logit_lstm_W"] + p["ff_logit_lstm_b"] + emb
        logit = logit + ctx_ @ p["ff_logit_ctx_W"] + p["ff_logit_ctx_b"]
        logit = np.tanh(logit) * 0.5
        return h, c, alpha, softmax(logit @ p["ff_logit_W"] + p["ff_logit_b"])

    def teacher_forcing(self, x, x_mask, ctx, ctx_mask):
        """x (L, m) word ids, EOS-padded; x_mask (L, m) -> probs (L, m, V), alphas (L, m, K)."""
        emb = self.p["Wemb"][x]
        emb = np.concatenate([np.zeros_like(emb[:1]), emb[:-1]])  # shifted: the first input is a zero vector
        h, c = self.init(ctx, ctx_mask)
        probs, alphas = [], []
        for t in range(x.shape[0]):
            h, c, alpha, prob = self.step(x_mask[t], emb[t], h, c, ctx)
            probs.append(prob)
            alphas.append(alpha)
        return np.stack(probs), np.stack(alphas)

    def cost(self, x, x_mask, ctx, ctx_mask, alpha_c, decay_c):
        """The training cost of `train`: NLL per caption averaged, + decay_c sum w^2 + the attention penalty."""
        probs, alphas = self.teacher_forcing(x, x_mask, ctx, ctx_mask)
        L, m = x.shape
        nll = -np.log(probs[np.arange(L)[:, None], np.arange(m)[None, :], x] + 1e-8)
        cost = (nll * x_mask).sum(0).mean()
        cost += decay_c * sum((w ** 2).sum() for w in self.p.values())
        return cost + alpha_c * ((1.0 - alphas.sum(0)) ** 2).sum(0).mean()

    def gen_sample(self, ctx0, ctx_mask, k, maxlen):
        """gen_sample's beam search for one video -> (samples, costs), samples ending with EOS when finished."""
        sample, sample_score = [], []
        live_k, dead_k = 1, 0
        hyp_samples, hyp_scores = [[]], np.zeros(1)
        h, c = self.init(ctx0[None], ctx_mask[None])
        next_w = None
        for _ in range(maxlen):
            emb = np.zeros((live_k, E)) if next_w is None else self.p["Wemb"][next_w]
            ctx = np.repeat(ctx0[None], live_k, axis=0)
            h, c, _, next_p = self.step(np.ones(live_k), emb, h, c, ctx)
            cand_flat = (hyp_scores[:, None] - np.log(next_p)).flatten()
            ranks_flat = cand_flat.argsort(kind="stable")[: k - dead_k]
            trans, words = ranks_flat // V, ranks_flat % V
            new_samples = [hyp_samples[ti] + [wi] for ti, wi in zip(trans, words, strict=True)]
            new_scores, new_h, new_c = cand_flat[ranks_flat], h[trans], c[trans]
            keep = []
            for idx, s in enumerate(new_samples):
                if s[-1] == EOS:
                    sample.append(s)
                    sample_score.append(new_scores[idx])
                    dead_k += 1
                else:
                    keep.append(idx)
            hyp_samples = [new_samples[i] for i in keep]
            hyp_scores, h, c = new_scores[keep], new_h[keep], new_c[keep]
            live_k = len(keep)
            if live_k < 1 or dead_k >= k:
                break
            next_w = np.array([s[-1] for s in hyp_samples])
        if live_k > 0:
            sample += hyp_samples
            sample_score += list(hyp_scores)
        return sample, sample_score


def tiny_batch(seed: int = 1):
    """Three videos with 5, 3 and 2 real frames (zero-padded as the stores and collate pad them) and captions of
    3, 1 and 0 words: (collate's batch, x (L, m), x_mask (L, m), ctx (m, K, D), ctx_mask (m, K))."""
    g = np.random.default_rng(seed)
    real = [5, 3, 2]
    words = [[4, 5, 6], [7], []]
    samples = []
    for i, (n, w) in enumerate(zip(real, words, strict=True)):
        feats = np.zeros((K, D), np.float32)
        feats[:n] = g.normal(size=(n, D))
        samples.append({"video_id": f"v{i}", "global": feats, "local": None, "mask": np.arange(K) < n,
                        "references": ["x"], "tokens": [w + [EOS]]})
    batch = collate(samples)
    L = max(len(w) for w in words) + 1
    x = np.full((L, 3), EOS)  # the original pads with index 0, its <eos>
    x_mask = np.zeros((L, 3))
    for j, w in enumerate(words):
        x[: len(w), j] = w
        x_mask[: len(w) + 1, j] = 1.0
    ctx = np.stack([s["global"] for s in samples]).astype(np.float64)
    ctx_mask = (ctx.sum(-1) != 0).astype(np.float64)  # data_engine.get_ctx_mask
    return batch, x, x_mask, ctx, ctx_mask


def test_teacher_forced_log_probs_and_attention_match_the_original():
    model = paper_model()
    batch, x, x_mask, ctx, ctx_mask = tiny_batch()
    probs, alphas = Original(original_params(model)).teacher_forcing(x, x_mask, ctx, ctx_mask)
    logits, alpha = model.double()(batch["global"].double(), batch["mask"], batch["inputs"])
    log_probs = torch.log_softmax(logits, -1).detach().numpy()  # (m, L, V)
    real = x_mask.T.astype(bool)  # (m, L): the steps the original scores
    np.testing.assert_allclose(log_probs[real], np.log(probs.transpose(1, 0, 2))[real], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(alpha.detach().numpy()[real], alphas.transpose(1, 0, 2)[real], rtol=1e-10, atol=1e-12)
    assert alphas[:, 1, 3:].min() > 0.01  # the padded frames do take attention, as in the original


def test_masked_attention_differs_from_the_original():
    """The default masks padded frames; with mask_attention true the log-probs change for a padded video."""
    batch, *_ = tiny_batch()
    masked, unmasked = paper_model(mask_attention=True).double(), paper_model().double()
    _, alpha = masked(batch["global"].double(), batch["mask"], batch["inputs"])
    assert float(alpha[1, :, 3:].abs().max().detach()) == 0.0
    logits_m, _ = masked(batch["global"].double(), batch["mask"], batch["inputs"])
    logits_u, _ = unmasked(batch["global"].double(), batch["mask"], batch["inputs"])
    assert not torch.allclose(logits_m[1, 0], logits_u[1, 0])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_training_loss_matches_the_original_cost():
    """NLL per caption + alpha_c * the original's penalty (padded steps and frames included) + 1e-4 sum w^2."""
    model = paper_model(seed=3)
    batch, x, x_mask, ctx, ctx_mask = tiny_batch(seed=4)
    expected = Original(original_params(model)).cost(x, x_mask, ctx, ctx_mask, alpha_c=0.70602, decay_c=1e-4)
    module = CaptionModule(model.config, attention_penalty=0.70602, attention_penalty_scale="paper",
                           weight_decay=1e-4, weight_decay_in_loss=True, caption_metrics=False).double()
    module.model.load_state_dict(model.state_dict())
    module.eval()  # dropout as the original's test-time factor, so both sides are deterministic
    batch = {**batch, "global": batch["global"].double()}
    loss = module.training_step(batch, 0)
    # The original's NLL is -log(p + 1e-8); vidcap's is exact: a difference below 1e-8 / p per word.
    assert loss.item() == pytest.approx(expected, rel=1e-7)
    # Each part matters: without the penalty or the L2 term the loss is off by far more than that.
    module.attention_penalty = 0.0
    assert abs(module.training_step(batch, 0).item() - expected) > 1e-3
    assert module.configure_optimizers().defaults["weight_decay"] == 0.0  # not a second time in the optimizer


def test_vidcap_penalty_scale_is_per_caption_and_ignores_padding():
    alpha = torch.full((2, 3, 4), 0.25)
    token_mask = torch.tensor([[True, True, True], [True, False, False]])
    frame_mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    model = paper_model()
    # vidcap: caption 0 sums 0.75 per frame over 4 frames, caption 1 0.25 over 2 real frames; mean over captions.
    assert float(model.attention_penalty(alpha, token_mask, frame_mask)) == pytest.approx(
        (4 * 0.25 ** 2 + 2 * 0.75 ** 2) / 2)
    # paper: every step counts, mean over all 4 frames, summed over the batch.
    assert float(model.attention_penalty(alpha, token_mask, frame_mask, "paper")) == pytest.approx(2 * 0.25 ** 2)


def test_paper_init_statistics():
    """As the original's norm_weight / ortho_weight: N(0, 0.01) weights and embeddings, zero biases, and each
    gate block of the recurrent matrix orthogonal (singular values all 1; PyTorch's default: not)."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=3000, global_dim=300, variant="global", encoder="none", embed_dim=200,
                         hidden_dim=256, attention_dim=300, init="paper", first_input="zero")
    model = CaptionModel(config)
    for name, param in model.named_parameters():
        w = param.detach().double().numpy()
        if "bias" in name:
            assert not w.any(), name
        elif name == "lstm.weight_hh":
            for block in np.split(w, 4, axis=0):
                np.testing.assert_allclose(np.linalg.svd(block, compute_uv=False), 1.0, atol=1e-5)
        elif name == "embed.weight":
            assert not w[[Vocabulary.PAD, Vocabulary.BOS]].any()
            assert w[4:].std() == pytest.approx(0.01, rel=0.02) and abs(w[4:].mean()) < 1e-3
        else:
            assert w.std() == pytest.approx(0.01, rel=0.1) and abs(w.mean()) < 2e-3, name
    default = CaptionModel(ModelConfig(vocab_size=3000, global_dim=300, variant="global", hidden_dim=256))
    singular = np.linalg.svd(default.lstm.weight_hh.detach().numpy()[:256], compute_uv=False)
    assert singular.min() < 0.1 and default.embed.weight.std() > 0.5


def test_paper_dropout_is_not_inverted():
    """Training keeps units unscaled (values 0 or x), test multiplies by 1 - p, at the three sites."""
    model = paper_model()
    x = torch.ones(2000, dtype=torch.float64)
    model.train()
    kept = model._paper_dropout(x)
    assert set(kept.unique().tolist()) == {0.0, 1.0} and 0.4 < float(kept.mean()) < 0.6
    model.eval()
    assert torch.equal(model._paper_dropout(x), x * 0.5)
    batch, *_ = tiny_batch()
    model.train()
    torch.manual_seed(0)
    a, _ = model(batch["global"], batch["mask"], batch["inputs"])
    b, _ = model(batch["global"], batch["mask"], batch["inputs"])
    assert not torch.allclose(a, b)  # random in training, at the gates too (checked against the original above)


@pytest.mark.parametrize("k,maxlen", [(5, 6), (3, 4), (1, 5)])
def test_shrinking_beam_search_matches_the_original(k, maxlen):
    model = paper_model(seed=5, scale=0.8)
    with torch.no_grad():
        model.out.bias[EOS] += 0.5  # captions of several lengths: some finish early, some run to maxlen
    batch, _, _, ctx, ctx_mask = tiny_batch(seed=6)
    original = Original(original_params(model))
    options = DecodingOptions(beam_size=k, max_len=maxlen, shrinking_beam=True, n_best=k)
    results = decode(model.double(), batch["global"].double(), batch["mask"], options, Vocabulary.BOS, EOS)
    lengths = set()
    for video, hypotheses in enumerate(results):
        samples, costs = original.gen_sample(ctx[video], ctx_mask[video], k, maxlen)
        order = np.argsort(costs, kind="stable")
        expected = [[w for w in samples[i] if w != EOS] for i in order]
        assert [h.tokens for h in hypotheses] == expected
        assert all(h.attention.shape == (len(h.tokens) + 1, K) for h in hypotheses)
        np.testing.assert_allclose([-h.log_prob for h in hypotheses], np.asarray(costs)[order], rtol=1e-10)
        lengths |= {len(samples[i]) for i in order}
    assert len(lengths) > 1


def test_drop_long_captions_drops_instead_of_cutting(monkeypatch):
    captions = pd.DataFrame({
        "video_id": ["a", "a", "b", "c", "c"], "split": ["train", "train", "train", "val", "val"],
        "caption": ["short", "long", "long", "long", "short"],
        "tokens": ["x y", "x y x y", "x x x", "y y y", "y"]})
    vocab = Vocabulary(["x", "y"])
    cut, _ = read_split(captions, "train", vocab, 3, {"a", "b", "c"})
    assert [len(cut.video_captions(v)) for v in range(2)] == [2, 1]
    assert max(len(cut.tokens(n)) for n in range(cut.num_captions)) == 3
    dropped, _ = read_split(captions, "train", vocab, 3, {"a", "b", "c"}, drop_long_captions=True)
    assert dropped.video_ids == ["a"] and [dropped.tokens(n) for n in dropped.video_captions(0)] == [[4, 5, EOS]]
    val, _ = read_split(captions, "val", vocab, 3, {"a", "b", "c"}, drop_long_captions=True)
    assert val.video_references(0) == ["long", "short"]  # metrics keep every reference
    assert [val.tokens(n) for n in val.video_captions(0)] == [[5, EOS]] and val.caption_reference.tolist() == [1]
    class OneFrameStore:
        def load(self, video_id):
            return {"mask": np.ones(1, bool)}

    monkeypatch.setattr("vidcap.training.data.open_store", lambda features_dir: OneFrameStore())
    item = CaptionDataset("unused", val, per_reference=False)[0]
    assert item["references"] == ["long", "short"] and item["tokens"] == [[5, EOS]]
    item = CaptionDataset("unused", val, per_reference=True)[0]
    assert item["references"] == ["short"] and item["tokens"] == [[5, EOS]]  # the caption's own text


# -- issue 13, part 2: the paper's configuration on the authors' preprocessed Youtube2Text --------------------------


@pytest.mark.filterwarnings("ignore")
def test_prepare_arctic_then_fit_the_paper_config(pkl_dir, tmp_path):  # noqa: F811
    """`vidcap prepare youtube2text-arctic` then `vidcap fit --config configs/experiment/paper.yaml`, tiny."""
    from vidcap.cli import main
    from vidcap.model.checkpoint import read_checkpoint, read_vidcap_section

    data, feats, run = tmp_path / "data", tmp_path / "feats", tmp_path / "run"
    assert main(["prepare", "youtube2text-arctic", "--pkl-dir", str(pkl_dir), "--out", str(data),
                 "--features", str(feats), "--num-frames", "8"]) == 0
    assert main(["fit", "--config", str(REPO / "configs/experiment/paper.yaml"),
                 "--data.data_dir", str(data), "--data.features_dir", str(feats),
                 "--model.architecture.embed_dim", "8", "--model.architecture.hidden_dim", "16",
                 "--model.architecture.attention_dim", "8", "--model.caption_metrics", "false",
                 "--data.batch_size", "4", "--data.num_workers", "0", "--trainer.accelerator", "cpu",
                 "--trainer.max_steps", "3", "--trainer.val_check_interval", "2",
                 "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
                 "--trainer.enable_model_summary", "false"]) == 0
    meta = read_vidcap_section(read_checkpoint(run / "checkpoints" / "last.ckpt", "cpu"), "last.ckpt")
    assert {k: meta["model"][k] for k in PAPER} == PAPER and meta["model"]["global_dim"] == 1024
    assert meta["decoding"]["shrinking_beam"] and meta["decoding"]["max_len"] == 50
