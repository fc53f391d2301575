"""Greedy and beam-search decoding over any model with the `init_state` / `step` interface.

The model interface (vidcap.model.captioner.CaptionModel implements it; tests use toy models):

    state = model.init_state(feats (B, T, D), mask (B, T) bool)   # dict of tensors, all batch-first
    log_probs (B, V), alpha (B, T), state = model.step(prev_tokens (B,) long, state)

`decode` runs greedy search when `beam_size == 1` and beam search otherwise. Beam search is batched: the B videos x
K beams of a batch advance together, one `model.step` call per time step on B*K rows (the state is expanded with
`repeat_interleave` and reordered with `index_select` over dim 0); videos whose best hypotheses are settled leave
the batch. State tensors that `step` returns unchanged (the very object it was given, such as the encoded frames)
are the same for every beam of a video, so they are only re-indexed when videos leave the batch: copying the
(B*K, T, D) frame context at every step would cost as much as the model step itself. `shrinking_beam` runs the
original code's beam search instead (`shrinking_beam_search`), whose beam narrows as hypotheses finish. Scores
are summed log-probabilities, as in the original code (beam 5, no length normalisation), unless `length_penalty`
is set.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from vidcap.errors import UsageError

log = logging.getLogger(__name__)

NEG_INF = float("-inf")


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode. The defaults keep the original code's beam width (5) and its ranking by the plain sum of
    log-probabilities, but not its length limit (50) nor its shrinking beam: `max_len: 50, shrinking_beam: true`
    is the original's search exactly (configs/experiment/paper.yaml; docs/paper_vs_original.md)."""

    # K, hypotheses kept per video at every step; 1 is greedy search.
    beam_size: int = 5
    # Most words in a caption, EOS not counted: after max_len words EOS is forced (its log-prob is still added).
    # With shrinking_beam, max_len steps (the original: 50), and a caption still open then ends without EOS.
    max_len: int = 30
    # alpha. 0: rank by the plain sum of log-probs (the original, which favours short captions). Otherwise a
    # finished hypothesis of L tokens (EOS included) is ranked by log_prob / ((5 + L) / 6) ** alpha, GNMT's
    # length normalisation (Wu et al. 2016); alpha > 0 favours longer captions.
    length_penalty: float = 0.0
    # n > 0: never repeat an n-gram within a caption (its last word gets probability 0). 0: off.
    no_repeat_ngram_size: int = 0
    # Finished hypotheses returned per video, best first; at most beam_size.
    n_best: int = 1
    # The original code's beam search: K - F live beams once F hypotheses have finished, a video stops at K
    # finished ones or after max_len steps (open ones then count, without EOS). False: K live beams throughout.
    shrinking_beam: bool = False

    def __post_init__(self) -> None:
        for name in ("beam_size", "max_len", "no_repeat_ngram_size", "n_best"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"decoding option {name} must be an integer, got {value!r}")
        if self.beam_size < 1:
            raise UsageError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.max_len < 1:
            raise UsageError(f"max_len must be >= 1, got {self.max_len}")
        if self.no_repeat_ngram_size < 0:
            raise UsageError(f"no_repeat_ngram_size must be >= 0 (0 = off), got {self.no_repeat_ngram_size}")
        if not 1 <= self.n_best <= self.beam_size:
            raise UsageError(f"n_best must be between 1 and beam_size ({self.beam_size}), got {self.n_best}")
        if not math.isfinite(self.length_penalty):
            raise UsageError(f"length_penalty must be a finite number, got {self.length_penalty}")


@dataclass
class Hypothesis:
    """One decoded caption.

    tokens: the word ids, without BOS and EOS. log_prob: sum of the log-probabilities of the words and of EOS.
    score: what hypotheses are ranked by (log_prob, length-normalised when `length_penalty` is set).
    attention: (len(tokens) + 1, T) float32, the attention weights of each step, the EOS step last.
    """

    tokens: list[int]
    log_prob: float
    score: float
    attention: np.ndarray


def length_normaliser(length: int, alpha: float) -> float:
    """GNMT's lp(L) = ((5 + L) / 6) ** alpha; the score of a hypothesis of L tokens (EOS included) is
    log_prob / lp(L). 1 when alpha is 0."""
    return 1.0 if alpha == 0 else ((5.0 + length) / 6.0) ** alpha


def decode(
    model, feats: torch.Tensor, mask: torch.Tensor, options: DecodingOptions | None = None,
    bos_id: int = 1, eos_id: int = 2,
) -> list[list[Hypothesis]]:
    """Caption a batch of videos.

    feats: (B, T, D) float on the model's device; mask: (B, T) bool, True on real frames. Returns for each video
    its `options.n_best` hypotheses, best first (greedy search gives one). `bos_id`/`eos_id` are the vocabulary's
    BOS and EOS ids (vidcap.text.vocab.Vocabulary.BOS = 1, EOS = 2). Call `model.eval()` first: dropout stays on in
    training mode. Runs without gradients.
    """
    options = options or DecodingOptions()
    if feats.dim() != 3 or mask.shape != feats.shape[:2]:
        raise ValueError(f"feats must be (B, T, D) and mask (B, T); got {tuple(feats.shape)} and {tuple(mask.shape)}")
    if getattr(model, "training", False):
        log.warning("decoding with a model in training mode (dropout is active); call model.eval() first")
    if feats.shape[0] == 0:
        return []
    with torch.no_grad():
        if options.shrinking_beam:
            return shrinking_beam_search(model, feats, mask.bool(), options, bos_id, eos_id)
        if options.beam_size == 1:
            return greedy_search(model, feats, mask.bool(), options, bos_id, eos_id)
        return beam_search(model, feats, mask.bool(), options, bos_id, eos_id)


def _to_host(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors on the CPU, copied in one transfer: one host-device sync per decoding step instead of one per
    tensor (issue 17). They travel as float64, exact for float32/float64 values and integers below 2**53."""
    if all(t.device.type == "cpu" for t in tensors):
        return list(tensors)
    return _in_one_copy(tensors)


def _in_one_copy(tensors: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    flat = torch.cat([t.reshape(-1).double() for t in tensors]).cpu()
    parts = flat.split([t.numel() for t in tensors])
    return [part.to(t.dtype).view(t.shape) for part, t in zip(parts, tensors, strict=True)]


def _to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A list of numbers as a tensor on `device`; to a GPU through pinned memory, without blocking the host."""
    tensor = torch.tensor(values, dtype=dtype)
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


def _select(state: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {key: value.index_select(0, index) for key, value in state.items()}


def _banned(history: list[int], n: int) -> list[int]:
    """Words that would repeat an n-gram of `history` if appended to it."""
    if len(history) < n - 1 or n == 0:
        return []
    if n == 1:
        return list(set(history))
    prefix = history[len(history) - n + 1:]
    return [history[i + n - 1] for i in range(len(history) - n + 1) if history[i:i + n - 1] == prefix]


def _block(log_probs: torch.Tensor, histories: list[list[int] | None], n: int) -> None:
    """Set log_probs[r, w] = -inf (in place) for the words w that would repeat an n-gram of histories[r]."""
    rows, words = [], []
    for row, history in enumerate(histories):
        if history is not None:
            banned = _banned(history, n)
            rows.extend([row] * len(banned))
            words.extend(banned)
    if rows:
        device = log_probs.device
        log_probs[_to_device(rows, torch.long, device), _to_device(words, torch.long, device)] = NEG_INF


def _force_eos(log_probs: torch.Tensor, eos_id: int) -> torch.Tensor:
    forced = torch.full_like(log_probs, NEG_INF)
    forced[:, eos_id] = log_probs[:, eos_id]
    return forced


@torch.no_grad()
def greedy_search(
    model, feats: torch.Tensor, mask: torch.Tensor, options: DecodingOptions, bos_id: int, eos_id: int
) -> list[list[Hypothesis]]:
    """The most likely next word at every step. feats (B, T, D), mask (B, T) bool -> B lists of 1 hypothesis."""
    B = feats.shape[0]
    device = feats.device
    state = model.init_state(feats, mask)
    active = list(range(B))  # the video of each state row
    prev = torch.full((B,), bos_id, dtype=torch.long, device=device)
    tokens: list[list[int]] = [[] for _ in range(B)]
    log_probs_sum = [0.0] * B
    attention: list[list[torch.Tensor]] = [[] for _ in range(B)]
    results: list[list[Hypothesis]] = [[] for _ in range(B)]
    for t in range(options.max_len + 1):
        log_probs, alpha, state = model.step(prev, state)
        log_probs = log_probs.double()
        if options.no_repeat_ngram_size:
            _block(log_probs, [tokens[b] for b in active], options.no_repeat_ngram_size)
        if t == options.max_len:
            log_probs = _force_eos(log_probs, eos_id)
        best_log_prob, best = log_probs.max(dim=-1)
        host_log_prob, host_best, alpha = _to_host(best_log_prob, best, alpha.float())
        keep = []
        for row, (video, word, word_log_prob) in enumerate(zip(active, host_best.tolist(), host_log_prob.tolist(), strict=True)):
            log_probs_sum[video] += word_log_prob
            attention[video].append(alpha[row])
            if word == eos_id:
                length = len(tokens[video]) + 1
                results[video] = [Hypothesis(
                    tokens=tokens[video],
                    log_prob=log_probs_sum[video],
                    score=log_probs_sum[video] / length_normaliser(length, options.length_penalty),
                    attention=torch.stack(attention[video]).numpy(),
                )]
            else:
                tokens[video].append(word)
                keep.append(row)
        if not keep:
            break
        if len(keep) < len(active):  # finished videos leave the batch
            index = _to_device(keep, torch.long, device)
            state, best = _select(state, index), best.index_select(0, index)
            active = [active[row] for row in keep]
        prev = best
    return results


@torch.no_grad()
def beam_search(
    model, feats: torch.Tensor, mask: torch.Tensor, options: DecodingOptions, bos_id: int, eos_id: int
) -> list[list[Hypothesis]]:
    """Batched beam search. feats (B, T, D), mask (B, T) bool -> B lists of n_best hypotheses, best first.

    The state has A*K rows, beam k of the a-th active video at row a*K + k. Each step ranks the K*V extensions of a
    video's beams and walks them best first: an extension ending in EOS becomes a finished hypothesis, the others
    fill the K beams of the next step (the best 2K extensions always hold K that do not end in EOS). A video is
    settled when it has n_best finished hypotheses that no live beam can beat: log-probs only decrease, so a live
    beam's final score is at most its log-prob divided by the largest length normaliser it can still reach.
    """
    B = feats.shape[0]
    K = options.beam_size
    alpha_lp = options.length_penalty
    device = feats.device
    state = _select(model.init_state(feats, mask), torch.arange(B, device=device).repeat_interleave(K))
    active = list(range(B))
    # Beams 1..K-1 start at -inf so that the K identical copies of a video do not become K identical beams.
    beam_log_prob = torch.full((B, K), NEG_INF, dtype=torch.float64, device=device)
    beam_log_prob[:, 0] = 0.0
    prev = torch.full((B * K,), bos_id, dtype=torch.long, device=device)
    histories: list[list[int]] = [[] for _ in range(B * K)]
    attention: list[list[torch.Tensor]] = [[] for _ in range(B * K)]
    live_row = [True] * (B * K)
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]

    for t in range(options.max_len + 1):
        given = state
        log_probs, alpha, state = model.step(prev, state)
        V = log_probs.shape[-1]
        log_probs = log_probs.double()
        if options.no_repeat_ngram_size:
            _block(log_probs, [h if ok else None for h, ok in zip(histories, live_row, strict=True)], options.no_repeat_ngram_size)
        if t == options.max_len:
            log_probs = _force_eos(log_probs, eos_id)
        A = len(active)
        candidates = (beam_log_prob.view(A * K, 1) + log_probs).view(A, K * V)
        top_log_prob, top_index = candidates.topk(min(2 * K, K * V), dim=1)
        top_log_prob, top_index, alpha = _to_host(top_log_prob, top_index, alpha.float())
        top_log_prob, top_index = top_log_prob.tolist(), top_index.tolist()

        # After this step a live beam has t + 1 words; it can still end with L = t + 2 .. max_len + 1 tokens.
        best_normaliser = max(length_normaliser(t + 2, alpha_lp), length_normaliser(options.max_len + 1, alpha_lp))
        next_active, rows, words, scores = [], [], [], []
        for a, video in enumerate(active):
            beams = []  # (source row, word, log-prob), best first
            for log_prob, index in zip(top_log_prob[a], top_index[a], strict=True):
                if log_prob == NEG_INF:
                    break
                k, word = divmod(index, V)
                row = a * K + k
                if word == eos_id:
                    length = len(histories[row]) + 1
                    finished[video].append(Hypothesis(
                        tokens=list(histories[row]),
                        log_prob=log_prob,
                        score=log_prob / length_normaliser(length, alpha_lp),
                        attention=torch.stack(attention[row] + [alpha[row]]).numpy(),
                    ))
                else:
                    beams.append((row, word, log_prob))
                    if len(beams) == K:
                        break
            if not beams:
                continue
            done = finished[video]
            if len(done) >= options.n_best:
                nth_best = sorted((h.score for h in done), reverse=True)[options.n_best - 1]
                if nth_best >= beams[0][2] / best_normaliser:
                    continue
            # Fewer than K extensions (tiny vocabularies, blocked n-grams): pad with dead beams at -inf.
            beams += [(beams[0][0], eos_id, NEG_INF)] * (K - len(beams))
            next_active.append(video)
            for row, word, log_prob in beams:
                rows.append(row)
                words.append(word)
                scores.append(log_prob)
        if not next_active:
            break
        histories = [histories[row] + [word] for row, word in zip(rows, words, strict=True)]
        attention = [attention[row] + [alpha[row]] for row in rows]
        live_row = [score != NEG_INF for score in scores]
        # Beams are reordered within their video only; a tensor step() left alone holds the same values for all K
        # beams of a video, so it needs a copy only when videos leave the batch.
        index = _to_device(rows, torch.long, device)
        shrunk = len(next_active) < A
        if shrunk:
            position = {video: a for a, video in enumerate(active)}
            video_rows = _to_device([position[video] * K + k for video in next_active for k in range(K)], torch.long,
                                    device)
        state = {
            key: value.index_select(0, index) if value is not given.get(key)
            else value.index_select(0, video_rows) if shrunk else value
            for key, value in state.items()
        }
        prev = _to_device(words, torch.long, device)
        beam_log_prob = _to_device(scores, torch.float64, device).view(-1, K)
        active = next_active

    # sorted() is stable: among equal scores the hypothesis found first (the shorter one) wins.
    return [sorted(done, key=lambda h: h.score, reverse=True)[: options.n_best] for done in finished]


@torch.no_grad()
def shrinking_beam_search(
    model, feats: torch.Tensor, mask: torch.Tensor, options: DecodingOptions, bos_id: int, eos_id: int
) -> list[list[Hypothesis]]:
    """The original code's beam search (arctic-capgen-vid's `gen_sample`), batched over videos. feats (B, T, D),
    mask (B, T) bool -> B lists of n_best hypotheses, best first.

    A video starts from one hypothesis. Each step extends its live hypotheses by every word and keeps the best
    K - F extensions (F: its finished hypotheses): those ending in EOS finish, the others stay live. A video
    stops when F reaches K or nothing is live; after max_len steps its live hypotheses count as they are, without
    EOS's log-prob (the last row of their attention is that of the step that would have ended them). Ranked by the
    summed log-probabilities, divided by the length normaliser when `length_penalty` is set (the original has none).
    """
    K, alpha_lp = options.beam_size, options.length_penalty
    device = feats.device
    state = model.init_state(feats, mask)
    video = list(range(feats.shape[0]))  # the video of each state row; a video's rows are consecutive
    histories: list[list[int]] = [[] for _ in video]
    attention: list[list[torch.Tensor]] = [[] for _ in video]
    scores = [0.0 for _ in video]
    prev = torch.full((len(video),), bos_id, dtype=torch.long, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in video]

    for _ in range(options.max_len):
        log_probs, alpha, state = model.step(prev, state)
        log_probs = log_probs.double()
        if options.no_repeat_ngram_size:
            _block(log_probs, histories, options.no_repeat_ngram_size)
        candidates = torch.tensor(scores, dtype=torch.float64, device=device).unsqueeze(1) + log_probs
        # A video's best K extensions are among the best K of each of its rows: one top-k and one copy per step.
        top_log_prob, top_index = candidates.topk(min(K, candidates.shape[1]), dim=1)
        top_log_prob, top_index = top_log_prob.tolist(), top_index.tolist()
        alpha = alpha.float().cpu()
        rows, words, next_scores, next_video = [], [], [], []
        start = 0
        while start < len(video):
            v, end = video[start], start
            while end < len(video) and video[end] == v:
                end += 1
            extensions = sorted(
                ((lp, row, word) for row in range(start, end)
                 for lp, word in zip(top_log_prob[row], top_index[row], strict=True)),
                key=lambda e: -e[0])[: K - len(finished[v])]
            for log_prob, row, word in extensions:
                if log_prob == NEG_INF:
                    break
                if word == eos_id:
                    length = len(histories[row]) + 1
                    finished[v].append(Hypothesis(
                        tokens=list(histories[row]), log_prob=log_prob,
                        score=log_prob / length_normaliser(length, alpha_lp),
                        attention=torch.stack(attention[row] + [alpha[row]]).numpy()))
                else:
                    rows.append(row)
                    words.append(word)
                    next_scores.append(log_prob)
                    next_video.append(v)
            start = end
        histories = [histories[row] + [word] for row, word in zip(rows, words, strict=True)]
        attention = [attention[row] + [alpha[row]] for row in rows]
        scores, video = next_scores, next_video
        if not rows:
            break
        state = _select(state, torch.tensor(rows, device=device))
        prev = torch.tensor(words, dtype=torch.long, device=device)

    if video:  # hypotheses still open after max_len steps
        _, alpha, _ = model.step(prev, state)
        alpha = alpha.float().cpu()
    for row, v in enumerate(video):
        finished[v].append(Hypothesis(
            tokens=histories[row], log_prob=scores[row],
            score=scores[row] / length_normaliser(len(histories[row]), alpha_lp),
            attention=torch.stack(attention[row] + [alpha[row]]).numpy()))
    return [sorted(done, key=lambda h: h.score, reverse=True)[: options.n_best] for done in finished]


def words_and_attention(hypothesis: Hypothesis, vocab, valid: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
    """A hypothesis as explanations and reports show it: (words, attention).

    vocab: the model's vidcap.text.vocab.Vocabulary. words: its tokens as words, then the EOS token ("<eos>"), one per
    attention row. attention: (len(words), K) float32, row l the attention weights over the video's K valid frames
    when words[l] was emitted; valid: (T,) bool, True on those frames (None: all T frames).
    """
    words = [vocab.id_to_token(t) for t in hypothesis.tokens] + [vocab.id_to_token(vocab.EOS)]
    attention = np.asarray(hypothesis.attention, dtype=np.float32)
    return words, attention if valid is None else attention[:, np.asarray(valid, dtype=bool)]
