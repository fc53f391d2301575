"""Greedy and beam search on toy models whose step() the tests define: exact answers, brute force, batching."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from vidcap.errors import UsageError
from vidcap.model.decoding import (
    DecodingOptions,
    Hypothesis,
    beam_search,
    decode,
    greedy_search,
    length_normaliser,
)

BOS, EOS = 0, 1


pytestmark = pytest.mark.usefixtures("one_thread")


class ToyAttentionGRU(nn.Module):
    """A small random model with the decoding interface: GRU over [word embedding; attended frames]."""

    def __init__(self, vocab: int = 7, dim: int = 5, hidden: int = 8, seed: int = 0, sharpness: float = 2.0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, hidden)
        self.init = nn.Linear(dim, hidden)
        self.query = nn.Linear(hidden, dim)
        self.cell = nn.GRUCell(hidden + dim, hidden)
        self.out = nn.Linear(hidden, vocab)
        self.sharpness = sharpness
        self.eval()

    def init_state(self, feats, mask):
        weights = mask.float().unsqueeze(-1)
        mean = (feats * weights).sum(1) / weights.sum(1).clamp(min=1)
        return {"h": torch.tanh(self.init(mean)), "feats": feats, "mask": mask}

    def step(self, prev, state):
        scores = torch.einsum("btd,bd->bt", state["feats"], self.query(state["h"]))
        alpha = torch.softmax(scores.masked_fill(~state["mask"], float("-inf")), dim=-1)
        context = torch.einsum("bt,btd->bd", alpha, state["feats"])
        h = self.cell(torch.cat([self.embed(prev), context], dim=-1), state["h"])
        log_probs = torch.log_softmax(self.sharpness * self.out(h), dim=-1)
        return log_probs, alpha, {**state, "h": h}


class MarkovModel:
    """P(next word | previous word) from a fixed table; uniform attention over the real frames."""

    def __init__(self, table):
        self.log_table = torch.log(torch.tensor(table, dtype=torch.float64)).float()

    def init_state(self, feats, mask):
        return {"mask": mask}

    def step(self, prev, state):
        mask = state["mask"].float()
        return self.log_table[prev], mask / mask.sum(1, keepdim=True), state


def toy_batch(B=4, T=6, D=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, T, D, generator=g)
    lengths = torch.tensor([T, T - 2, 1, T - 1, 3, T][:B])
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    return feats, mask


@torch.no_grad()
def sequence_log_prob(model, feats, mask, words: list[int]) -> float:
    """log P(words + [EOS]) for one video (feats (1, T, D)), step by step."""
    state = model.init_state(feats, mask)
    prev = torch.tensor([BOS])
    total = 0.0
    for word in words + [EOS]:
        log_probs, _, state = model.step(prev, state)
        total += float(log_probs[0, word].double())
        prev = torch.tensor([word])
    return total


def test_options_defaults_and_validation():
    options = DecodingOptions()
    assert (options.beam_size, options.max_len, options.length_penalty, options.no_repeat_ngram_size,
            options.n_best) == (5, 30, 0.0, 0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.beam_size = 3  # frozen
    for bad in ({"beam_size": 0}, {"max_len": 0}, {"n_best": 6}, {"n_best": 0}, {"no_repeat_ngram_size": -1},
                {"beam_size": 2.5}, {"length_penalty": float("nan")}):
        with pytest.raises(UsageError):
            DecodingOptions(**bad)


@pytest.mark.parametrize("seed", range(4))
def test_beam_size_one_is_exactly_greedy(seed):
    model = ToyAttentionGRU(seed=seed)
    feats, mask = toy_batch(B=5, seed=seed)
    options = DecodingOptions(beam_size=1, max_len=12)
    greedy = greedy_search(model, feats, mask, options, BOS, EOS)
    beam = beam_search(model, feats, mask, options, BOS, EOS)
    assert decode(model, feats, mask, options, BOS, EOS)[0][0].tokens == greedy[0][0].tokens
    for g, b in zip(greedy, beam, strict=True):
        assert len(g) == len(b) == 1
        assert g[0].tokens == b[0].tokens
        assert g[0].log_prob == pytest.approx(b[0].log_prob, abs=1e-5)
        np.testing.assert_allclose(g[0].attention, b[0].attention, atol=1e-6)


def test_greedy_log_prob_is_the_sequence_log_prob():
    model = ToyAttentionGRU(seed=3)
    feats, mask = toy_batch(B=3)
    for video, (hyp,) in enumerate(decode(model, feats, mask, DecodingOptions(beam_size=1), BOS, EOS)):
        expected = sequence_log_prob(model, feats[video:video + 1], mask[video:video + 1], hyp.tokens)
        assert hyp.log_prob == pytest.approx(expected, abs=1e-5)
        assert hyp.score == hyp.log_prob


def test_beam_finds_the_sequence_greedy_misses():
    # From BOS: a 0.6, b 0.4. After a: EOS 0.4 (greedy stops: 0.6 * 0.4 = 0.24). After b: EOS 0.9 (0.4 * 0.9 = 0.36).
    a, b = 2, 3
    table = [[0.0, 0.0, 0.6, 0.4], [0.25, 0.25, 0.25, 0.25], [0.0, 0.4, 0.3, 0.3], [0.0, 0.9, 0.05, 0.05]]
    model = MarkovModel(table)
    feats, mask = toy_batch(B=2, T=4)
    greedy = decode(model, feats, mask, DecodingOptions(beam_size=1), BOS, EOS)
    beam = decode(model, feats, mask, DecodingOptions(beam_size=2, n_best=2), BOS, EOS)
    for video in range(2):
        assert greedy[video][0].tokens == [a]
        assert greedy[video][0].log_prob == pytest.approx(math.log(0.24), abs=1e-6)
        assert [h.tokens for h in beam[video]] == [[b], [a]]
        assert beam[video][0].log_prob == pytest.approx(math.log(0.36), abs=1e-6)
        assert beam[video][1].log_prob == pytest.approx(math.log(0.24), abs=1e-6)


@pytest.mark.parametrize("length_penalty", [0.0, 3.0, -0.5])
def test_exhaustive_beam_equals_brute_force(length_penalty):
    # V = 4 (words 0, 2, 3 and EOS), at most 3 words: 40 captions. K = 64 keeps every prefix alive, so only the
    # stopping rule can lose the best captions (with alpha = 3 and this seed, a rule that ignores the length
    # normaliser stops too early).
    model = ToyAttentionGRU(vocab=4, seed=1, sharpness=1.0)
    feats, mask = toy_batch(B=2, T=5)
    max_len, n_best = 3, 5
    words = [w for w in range(4) if w != EOS]
    for video in range(2):
        f, m = feats[video:video + 1], mask[video:video + 1]
        scored = []
        for length in range(max_len + 1):
            for seq in itertools.product(words, repeat=length):
                log_prob = sequence_log_prob(model, f, m, list(seq))
                scored.append((log_prob / length_normaliser(length + 1, length_penalty), list(seq), log_prob))
        scored.sort(key=lambda x: -x[0])
        options = DecodingOptions(beam_size=64, max_len=max_len, n_best=n_best, length_penalty=length_penalty)
        hyps = decode(model, f, m, options, BOS, EOS)[0]
        assert [h.tokens for h in hyps] == [seq for _, seq, _ in scored[:n_best]]
        for h, (score, _, log_prob) in zip(hyps, scored[:n_best], strict=True):
            assert h.log_prob == pytest.approx(log_prob, abs=1e-5)
            assert h.score == pytest.approx(score, abs=1e-5)


def test_batched_beam_equals_one_video_at_a_time():
    model = ToyAttentionGRU(seed=5)
    feats, mask = toy_batch(B=5, T=6)
    options = DecodingOptions(beam_size=4, max_len=10, n_best=3)
    batched = decode(model, feats, mask, options, BOS, EOS)
    for video in range(5):
        single = decode(model, feats[video:video + 1], mask[video:video + 1], options, BOS, EOS)[0]
        assert [h.tokens for h in batched[video]] == [h.tokens for h in single]
        for hb, hs in zip(batched[video], single, strict=True):
            assert hb.log_prob == pytest.approx(hs.log_prob, abs=1e-5)
            np.testing.assert_allclose(hb.attention, hs.attention, atol=1e-5)


def test_n_best_lists_are_ordered_distinct_and_scored():
    model = ToyAttentionGRU(seed=2)
    feats, mask = toy_batch(B=4)
    for length_penalty in (0.0, 0.7):
        options = DecodingOptions(beam_size=5, max_len=9, n_best=4, length_penalty=length_penalty)
        for hyps in decode(model, feats, mask, options, BOS, EOS):
            assert len(hyps) == 4
            scores = [h.score for h in hyps]
            assert scores == sorted(scores, reverse=True)
            assert len({tuple(h.tokens) for h in hyps}) == 4
            for h in hyps:
                assert EOS not in h.tokens
                assert h.score == pytest.approx(h.log_prob / ((5 + len(h.tokens) + 1) / 6) ** length_penalty)


def test_attention_shape_and_padding():
    model = ToyAttentionGRU(seed=4)
    feats, mask = toy_batch(B=4, T=6)
    for options in (DecodingOptions(beam_size=1), DecodingOptions(beam_size=3, n_best=2)):
        for video, hyps in enumerate(decode(model, feats, mask, options, BOS, EOS)):
            for h in hyps:
                assert isinstance(h, Hypothesis)
                assert h.attention.shape == (len(h.tokens) + 1, 6)
                assert h.attention.dtype == np.float32
                np.testing.assert_allclose(h.attention.sum(1), 1.0, atol=1e-5)
                assert np.all(h.attention[:, ~mask[video].numpy()] == 0)


def test_max_len_forces_eos():
    # EOS is nearly impossible: greedy runs to max_len words and then ends with a forced EOS. Beam search would
    # rather pay for EOS at once (shorter captions pay it sooner): a strong length penalty makes it go long too.
    table = [[0.0, 1e-9, 0.5, 0.5 - 1e-9]] * 4
    model = MarkovModel(table)
    feats, mask = toy_batch(B=2, T=3)
    expected = 4 * math.log(0.5) + math.log(1e-9)
    for options in (DecodingOptions(beam_size=1, max_len=4), DecodingOptions(beam_size=3, max_len=4, length_penalty=5.0)):
        for (hyp,) in decode(model, feats, mask, options, BOS, EOS):
            assert len(hyp.tokens) == 4
            assert hyp.log_prob == pytest.approx(expected, abs=1e-4)
            assert hyp.score == pytest.approx(expected / (10 / 6) ** options.length_penalty, abs=1e-4)
            assert hyp.attention.shape == (5, 3)


def _repeats(tokens, n):
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_no_repeat_ngram(beam_size):
    model = ToyAttentionGRU(vocab=6, seed=7, sharpness=1.0)
    feats, mask = toy_batch(B=4, T=6)
    base = DecodingOptions(beam_size=beam_size, max_len=15, n_best=beam_size)
    plain = [h.tokens for hyps in decode(model, feats, mask, base, BOS, EOS) for h in hyps]
    assert any(_repeats(tokens, 2) for tokens in plain)  # the test can fail: this model repeats itself
    for n in (1, 2, 3):
        options = DecodingOptions(beam_size=beam_size, max_len=15, n_best=beam_size, no_repeat_ngram_size=n)
        for hyps in decode(model, feats, mask, options, BOS, EOS):
            for h in hyps:
                assert not _repeats(h.tokens, n), (n, h.tokens)


def test_caption_model_interface():
    from vidcap.model.captioner import CaptionModel, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=20, global_dim=6, local_dim=0, variant="global", embed_dim=8, hidden_dim=12,
                         attention_dim=8, max_frames=5)
    model = CaptionModel(config).eval()
    feats, mask = torch.randn(3, 5, 6), toy_batch(B=3, T=5)[1]
    greedy = decode(model, feats, mask, DecodingOptions(beam_size=1, max_len=6), bos_id=1, eos_id=2)
    beam = decode(model, feats, mask, DecodingOptions(beam_size=3, max_len=6, n_best=2), bos_id=1, eos_id=2)
    assert [len(h) for h in greedy] == [1, 1, 1] and [len(h) for h in beam] == [2, 2, 2]
    for g, b in zip(greedy, beam, strict=True):
        assert b[0].score >= b[1].score
        assert all(2 not in h.tokens for h in g + b)  # no EOS inside a caption
        assert all(h.attention.shape == (len(h.tokens) + 1, 5) for h in g + b)


def test_shrinking_beam_batched_equals_one_video_at_a_time_and_scores_sequences():
    """The original's search (vidcap.model.decoding.shrinking_beam_search; tests/test_paper.py checks it against a port
    of the original): batching changes nothing, a finished hypothesis' log_prob is its sequence's, an open one
    (max_len words, no EOS) lacks the EOS term."""
    model = ToyAttentionGRU(seed=5)
    feats, mask = toy_batch(B=5, T=6)
    options = DecodingOptions(beam_size=4, max_len=4, n_best=4, shrinking_beam=True)
    batched = decode(model, feats, mask, options, BOS, EOS)
    for video in range(5):
        f, m = feats[video:video + 1], mask[video:video + 1]
        single = decode(model, f, m, options, BOS, EOS)[0]
        assert [h.tokens for h in batched[video]] == [h.tokens for h in single] and 1 <= len(single) <= 4
        for h in single:
            eos_log_prob = sequence_log_prob(model, f, m, h.tokens) - h.log_prob
            if len(h.tokens) < options.max_len:
                assert eos_log_prob == pytest.approx(0.0, abs=1e-5)
            else:
                assert eos_log_prob < 0.0


def test_one_loop_runs_every_search(monkeypatch):
    """decode and the three search functions all go through `search_loop`, with the strategy the options name."""
    from vidcap.model import decoding

    seen, loop = [], decoding.search_loop

    def spy(model, feats, mask, options, strategy, bos_id, eos_id):
        seen.append(type(strategy))
        return loop(model, feats, mask, options, strategy, bos_id, eos_id)

    monkeypatch.setattr(decoding, "search_loop", spy)
    model = ToyAttentionGRU(seed=1)
    feats, mask = toy_batch(B=2)
    for options in (DecodingOptions(beam_size=1, max_len=4), DecodingOptions(beam_size=3, max_len=4),
                    DecodingOptions(beam_size=3, max_len=4, shrinking_beam=True)):
        decode(model, feats, mask, options, BOS, EOS)
    options = DecodingOptions(beam_size=2, max_len=4)
    for search in (decoding.greedy_search, decoding.beam_search, decoding.shrinking_beam_search):
        search(model, feats, mask, options, BOS, EOS)
    assert seen == [decoding.Greedy, decoding.BeamSearch, decoding.ShrinkingBeam] * 2


class LazyGRU(ToyAttentionGRU):
    """Updates h on every other step only, returning on the others the very tensor it was given (`lazy`) or a copy:
    a key step() once replaced holds each beam's own values and must follow its beam even when left unchanged."""

    def __init__(self, lazy: bool, **kwargs):
        super().__init__(**kwargs)
        self.lazy = lazy

    def init_state(self, feats, mask):
        self.steps = 0
        return super().init_state(feats, mask)

    def step(self, prev, state):
        self.steps += 1
        log_probs, alpha, new_state = super().step(prev, state)
        if self.steps % 2 == 0:
            new_state["h"] = state["h"] if self.lazy else state["h"].clone()
        return log_probs, alpha, new_state


@pytest.mark.parametrize("options", [DecodingOptions(beam_size=1, max_len=8),
                                     DecodingOptions(beam_size=3, max_len=8, n_best=3),
                                     DecodingOptions(beam_size=3, max_len=8, n_best=3, shrinking_beam=True)])
def test_state_a_step_leaves_unchanged_still_follows_its_beams(options):
    feats, mask = toy_batch(B=3)
    lazy = decode(LazyGRU(True, seed=6), feats, mask, options, BOS, EOS)
    copied = decode(LazyGRU(False, seed=6), feats, mask, options, BOS, EOS)
    assert [[(h.tokens, h.log_prob) for h in hyps] for hyps in lazy] == \
        [[(h.tokens, h.log_prob) for h in hyps] for hyps in copied]
