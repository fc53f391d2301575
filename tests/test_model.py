"""CaptionModel: shapes, masking, order (in)sensitivity, gradients, and that a tiny model can learn."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from vidcap.errors import UsageError
from vidcap.model.captioner import ENCODERS, VARIANTS, CaptionModel, ModelConfig
from vidcap.model.decoding import DecodingOptions, decode

BOS, EOS = 1, 2
V, DG, DL, T = 11, 6, 4, 5


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(variant="local_global", encoder="auto", seed=0, **kw) -> CaptionModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=V, global_dim=DG, local_dim=DL, variant=variant, encoder=encoder,
        embed_dim=8, hidden_dim=12, attention_dim=7, max_frames=T, **kw,
    )
    return CaptionModel(cfg).eval()


def batch(B=3, lengths=(5, 3, 1), seed=1):
    g = torch.Generator().manual_seed(seed)
    glob = torch.randn(B, T, DG, generator=g)
    loc = torch.randn(B, T, DL, generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    tokens = torch.tensor([[BOS, 4, 5, 6], [BOS, 7, 0, 0], [BOS, 8, 9, 0]])[:B]
    return glob, loc, mask, tokens


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_shapes_and_step_matches_forward(variant, encoder):
    model = make_model(variant, encoder)
    glob, loc, mask, tokens = batch()
    feats = model.combine_features(glob, loc)
    assert feats.shape == (3, T, model.config.feature_dim)
    logits, alpha = model(feats, mask, tokens)
    assert logits.shape == (3, 4, V) and alpha.shape == (3, 4, T)
    # step() one word at a time gives the same distributions as teacher forcing.
    state = model.init_state(feats, mask)
    assert all(v.shape[0] == 3 for v in state.values())
    for t in range(tokens.shape[1]):
        log_probs, a, state = model.step(tokens[:, t], state)
        assert log_probs.shape == (3, V) and a.shape == (3, T)
        torch.testing.assert_close(log_probs, torch.log_softmax(logits[:, t], -1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, alpha[:, t])


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_sums_to_one_and_is_zero_on_padding(variant):
    model = make_model(variant, "lstm")
    glob, loc, mask, tokens = batch()
    _, alpha = model(model.combine_features(glob, loc), mask, tokens)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3, 4))
    assert torch.equal(alpha.masked_select(~mask[:, None, :].expand_as(alpha)), torch.zeros(int((~mask).sum()) * 4))
    # A video with a single real frame puts all its attention there.
    assert torch.equal(alpha[2, :, 0], torch.ones(4))


def test_basic_reports_uniform_attention():
    model = make_model("basic")
    glob, loc, mask, tokens = batch()
    _, alpha = model(glob, mask, tokens)
    assert torch.allclose(alpha[1], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0, 0]).expand(4, T))


def test_padded_frames_do_not_matter():
    """Changing what is stored in padded frames changes nothing, for every encoder."""
    for encoder in ENCODERS:
        model = make_model("global", encoder)
        glob, _, mask, tokens = batch()
        noisy = glob.clone()
        noisy[~mask] = 100.0
        torch.testing.assert_close(model(glob, mask, tokens)[0], model(noisy, mask, tokens)[0])


def test_frame_order_invisible_without_encoder_visible_with_position():
    glob, _, _, tokens = batch()
    full = torch.ones(3, T, dtype=torch.bool)
    flipped = glob.flip(1)
    plain = make_model("global", "none").double()
    a, _ = plain(glob.double(), full, tokens)
    b, _ = plain(flipped.double(), full, tokens)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    positional = make_model("global", "position").double()
    a, _ = positional(glob.double(), full, tokens)
    b, _ = positional(flipped.double(), full, tokens)
    assert (a - b).abs().max() > 1e-4


def test_gradients_reach_attention_and_encoder():
    model = make_model("local_global", "position").train()
    glob, loc, mask, tokens = batch()
    logits, alpha = model(model.combine_features(glob, loc), mask, tokens)
    loss = logits.logsumexp(-1).sum() + model.attention_penalty(alpha, tokens != 0, mask)
    loss.backward()
    for name in ("att_h.weight", "att_v.weight", "att_w.weight", "select.weight", "encoder.position.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # The padding embedding never learns.
    assert torch.equal(model.embed.weight.grad[0], torch.zeros(8))


def test_attention_penalty_value():
    model = make_model("global")
    alpha = torch.tensor([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # (1, L=3, T=3)
    token_mask = torch.tensor([[True, True, False]])
    frame_mask = torch.tensor([[True, True, False]])
    # totals over the 2 real steps: [1.5, 0.5, 0] -> (1 - 1.5)^2 + (1 - 0.5)^2 on the 2 real frames
    assert model.attention_penalty(alpha, token_mask, frame_mask).item() == pytest.approx(0.5)


def test_config_resolves_encoder_and_validates():
    assert ModelConfig(V, DG, DL, variant="global").encoder == "position"
    assert ModelConfig(V, DG, DL, variant="basic").encoder == "none"
    cfg = ModelConfig(V, DG, 0, variant="global", encoder="bilstm", hidden_dim=12)
    assert cfg.context_dim == 12 and cfg.feature_dim == DG
    assert CaptionModel(ModelConfig(**asdict(cfg))).config == cfg
    with pytest.raises(UsageError, match="needs local"):
        ModelConfig(V, DG, 0, variant="local_global")
    with pytest.raises(UsageError, match="unknown variant"):
        ModelConfig(V, DG, DL, variant="temporal")
    with pytest.raises(UsageError, match="unknown encoder"):
        ModelConfig(V, DG, DL, encoder="gru")


def test_original_code_options_validate_and_leave_the_default_model_alone():
    """The issue 13 options: defaults build the same parameters as before; ctx2out false drops W_p."""
    default = make_model("global", "none")
    paper = make_model("global", "none", init="paper", first_input="zero", dropout_sites="paper",
                       mask_attention=False)
    assert list(dict(paper.named_parameters())) == list(dict(default.named_parameters()))
    assert "out_phi.weight" not in dict(make_model("global", "none", ctx2out=False).named_parameters())
    for name in ("init", "first_input", "dropout_sites"):
        with pytest.raises(UsageError, match=f"unknown {name}"):
            ModelConfig(V, DG, DL, **{name: "original"})


def test_choices_are_defined_once_in_the_type_hints():
    """VARIANTS / ENCODERS are the Literal types LightningCLI reads from ModelConfig's hints."""
    from typing import get_args, get_type_hints

    hints = get_type_hints(ModelConfig)
    assert get_args(hints["variant"]) == VARIANTS == ("basic", "local", "global", "local_global")
    assert get_args(hints["encoder"]) == (*ENCODERS, "auto")


@pytest.mark.parametrize("variant", ["basic", "local_global"])
def test_tiny_model_overfits_four_videos(variant):
    """4 videos, 4 different captions: after training, greedy and beam search reproduce each caption exactly."""
    torch.manual_seed(0)
    model = CaptionModel(ModelConfig(V, DG, DL, variant=variant, embed_dim=16, hidden_dim=32,
                                     attention_dim=16, dropout=0.0, max_frames=T))
    glob = torch.randn(4, T, DG)
    loc = torch.randn(4, T, DL)
    mask = torch.ones(4, T, dtype=torch.bool)
    captions = [[4, 5, 6, EOS], [7, 4, EOS, 0], [8, 9, 10, EOS], [5, EOS, 0, 0]]
    targets = torch.tensor(captions)
    inputs = torch.cat([torch.full((4, 1), BOS), targets[:, :-1]], 1).masked_fill(targets == 0, 0)
    feats = model.combine_features(glob, loc)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        logits, _ = model(feats, mask, inputs)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02
    model.eval()
    expected = [[w for w in c if w not in (0, EOS)] for c in captions]
    for beam_size in (1, 3):
        hypotheses = decode(model, feats, mask, DecodingOptions(beam_size=beam_size, max_len=8), BOS, EOS)
        assert [nbest[0].tokens for nbest in hypotheses] == expected
