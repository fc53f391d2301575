"""Greedy and beam-search decoding over any model with the `init_state` / `step` interface.

The model interface (vidcap.model.captioner.CaptionModel implements it; tests use toy models):

    state = model.init_state(feats (B, T, D), mask (B, T) bool)   # dict of tensors, all batch-first
    log_probs (B, V), alpha (B, T), state = model.step(prev_tokens (B,) long, state)

`decode` runs greedy search when `beam_size == 1` and beam search otherwise, or, with `shrinking_beam`, the
original code's beam search, whose beam narrows as hypotheses finish. One loop (`search_loop`) runs all three: it
owns the step (model call, log-probs, n-gram blocking, EOS forced at the length limit, finished hypotheses,
attention, re-indexing the state), and a strategy (`Greedy`, `BeamSearch`, `ShrinkingBeam`) only chooses the
extensions and says when a video is done. The search is batched: all live hypotheses of all videos advance
together, one `model.step` call per time step on their R rows (B*K for beam search: the state is expanded with
`repeat_interleave` and reordered with `index_select` over dim 0); videos that are done leave the batch. State
tensors that `step` always returns unchanged (the very object it was given, such as the encoded frames) are the
same for every row of a video, so they are only re-indexed when videos' rows change: copying the (B*K, T, D)
frame context at every step would cost as much as the model step itself. Scores are summed log-probabilities, as
in the original code (beam 5, no length normalisation), unless `length_penalty` is set.
"""

from __future__ import annotations

import itertools
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
    return search_loop(model, feats, mask.bool(), options, strategy_for(options), bos_id, eos_id)


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


# An extension of a hypothesis by one word: (summed log-prob including the word, source row, word).
Extension = tuple[float, int, int]


def _possible(extensions) -> list[Extension]:
    """The extensions before the first impossible one (-inf: a dead row's, a blocked word's); best first."""
    return list(itertools.takewhile(lambda e: e[0] != NEG_INF, extensions))


@dataclass
class _Rows:
    """The hypotheses a search holds, one per row of the decoder state (R rows), a video's rows consecutive.

    videos: the video of each row. scores: summed log-probs, -inf on dead rows. live: False on the dead rows that
    pad a video to a strategy's fixed width (they take part in the model step but never extend into anything).
    histories: the words so far. attention: one host (T,) float32 row per step taken.
    """

    videos: list[int]
    scores: list[float]
    live: list[bool]
    histories: list[list[int]]
    attention: list[list[torch.Tensor]]

    def groups(self) -> list[tuple[int, int, int]]:
        """(video, first row, end row) of each video, in row order."""
        groups = []
        start = 0
        for row in range(1, len(self.videos) + 1):
            if row == len(self.videos) or self.videos[row] != self.videos[start]:
                groups.append((self.videos[start], start, row))
                start = row
        return groups


class SearchStrategy:
    """How a search picks among the extensions of its hypotheses, and when a video's search is over.

    `search_loop` owns the step (model call, log-probs, n-gram blocking, forced EOS, finished hypotheses, attention,
    the state's rows); each step it asks the strategy to reduce the (R, V) float64 log-probs to the few candidates
    the host needs (`rank`, on the model's device, scores added as it sees fit), then for each video the extensions
    to try, best first (`select`, on the host), and whether the video is done given the live extensions the loop
    kept (`is_finished`). The loop turns extensions ending in EOS into hypotheses, keeps at most K others, and
    stops when every video is done.
    """

    # Rows per video that `rank` expects. A video with fewer live extensions is padded with dead rows (-inf), and
    # starts as one hypothesis plus width - 1 dead rows. None: any number of rows per video.
    width: int | None = 1
    # At the length limit: True, a last step (max_len + 1) in which only EOS may follow. False (the original's
    # rule), hypotheses open after max_len steps end as they are, without EOS; a last model step gives the last
    # row of their attention.
    force_eos: bool = True

    def rank(self, log_probs: torch.Tensor, rows: _Rows) -> tuple[torch.Tensor, ...]:
        """log_probs: (R, V) float64, blocked words and forced EOS applied -> tensors for `select` (one transfer)."""
        raise NotImplementedError

    def select(self, ranked: list[torch.Tensor], rows: _Rows, groups: list[tuple[int, int, int]],
               finished: list[list[Hypothesis]]) -> list[list[Extension]]:
        """`rank`'s tensors on the host -> for each group of `rows.groups()`, the extensions to try, best first."""
        raise NotImplementedError

    def is_finished(self, t: int, beams: list[Extension], done: list[Hypothesis]) -> bool:
        """Whether a video stops after step t, given the live extensions kept (best first) and its hypotheses."""
        return not beams


class Greedy(SearchStrategy):
    """The most likely next word of each video's single hypothesis, until EOS."""

    def rank(self, log_probs, rows):
        return tuple(log_probs.max(dim=-1))  # (R,) float64 log-prob and (R,) word of each row's best word

    def select(self, ranked, rows, groups, finished):
        best_log_prob, best = (x.tolist() for x in ranked)
        # No -inf cut: greedy takes the best word even when every word is impossible (a model giving -inf).
        return [[(rows.scores[row] + best_log_prob[row], row, best[row])] for _, row, _ in groups]


class BeamSearch(SearchStrategy):
    """Batched beam search: K rows per video, beam k of the a-th video at row a*K + k.

    Each step ranks the K*V extensions of a video's beams; the best 2K always hold K that do not end in EOS. A
    video is settled when it has n_best finished hypotheses that no live beam can beat: log-probs only decrease,
    so a live beam's final score is at most its log-prob divided by the largest length normaliser it can reach.
    """

    def __init__(self, options: DecodingOptions):
        self.width = options.beam_size
        self.n_best, self.max_len, self.alpha = options.n_best, options.max_len, options.length_penalty

    def rank(self, log_probs, rows):
        K, (R, V) = self.width, log_probs.shape
        beam_log_prob = _to_device(rows.scores, torch.float64, log_probs.device).view(R, 1)
        top_log_prob, top_index = (beam_log_prob + log_probs).view(R // K, K * V).topk(min(2 * K, K * V), dim=1)
        # (A, 2K) each: summed log-prob, source row a*K + k, word; divided on the device, so the host needs no V.
        first_row = torch.arange(0, R, K, device=log_probs.device).unsqueeze(1)
        return top_log_prob, first_row + torch.div(top_index, V, rounding_mode="floor"), top_index % V

    def select(self, ranked, rows, groups, finished):
        top_log_prob, source, word = (x.tolist() for x in ranked)
        return [_possible(zip(*columns, strict=True)) for columns in zip(top_log_prob, source, word, strict=True)]

    def is_finished(self, t, beams, done):
        if not beams:
            return True
        if len(done) < self.n_best:
            return False
        # After step t a live beam has t + 1 words; it can still end with L = t + 2 .. max_len + 1 tokens.
        best_normaliser = max(length_normaliser(t + 2, self.alpha), length_normaliser(self.max_len + 1, self.alpha))
        nth_best = sorted((h.score for h in done), reverse=True)[self.n_best - 1]
        return nth_best >= beams[0][0] / best_normaliser


class ShrinkingBeam(SearchStrategy):
    """The original code's beam search (arctic-capgen-vid's `gen_sample`): a video starts from one hypothesis,
    each step keeps the best K - F extensions of its live hypotheses (F: its finished ones), those ending in EOS
    finish; it stops when F reaches K or nothing is live, and after max_len steps its live hypotheses count as
    they are, without EOS's log-prob."""

    width = None
    force_eos = False

    def __init__(self, options: DecodingOptions):
        self.K = options.beam_size

    def rank(self, log_probs, rows):
        scores = _to_device(rows.scores, torch.float64, log_probs.device).unsqueeze(1)
        # (R, K) summed log-probs and words: a video's best K extensions are among the best K of each of its rows.
        return tuple((scores + log_probs).topk(min(self.K, log_probs.shape[1]), dim=1))

    def select(self, ranked, rows, groups, finished):
        top_log_prob, top_index = (x.tolist() for x in ranked)
        return [_possible(sorted(
            ((log_prob, row, word) for row in range(start, end)
             for log_prob, word in zip(top_log_prob[row], top_index[row], strict=True)),
            key=lambda e: -e[0])[: self.K - len(finished[video])])
            for video, start, end in groups]


def strategy_for(options: DecodingOptions) -> SearchStrategy:
    """The strategy `decode` runs for `options`: shrinking beam, greedy (beam_size 1) or beam search."""
    if options.shrinking_beam:
        return ShrinkingBeam(options)
    return Greedy() if options.beam_size == 1 else BeamSearch(options)


def _finish(rows: _Rows, row: int, log_prob: float, alpha: torch.Tensor, eos: bool, alpha_lp: float) -> Hypothesis:
    """The hypothesis of `row` ended at this step (with EOS, or open at the length limit); alpha: (R, T) host."""
    tokens = list(rows.histories[row])
    return Hypothesis(tokens=tokens, log_prob=log_prob,
                      score=log_prob / length_normaliser(len(tokens) + int(eos), alpha_lp),
                      attention=torch.stack(rows.attention[row] + [alpha[row]]).numpy())


@torch.no_grad()
def search_loop(
    model, feats: torch.Tensor, mask: torch.Tensor, options: DecodingOptions, strategy: SearchStrategy,
    bos_id: int, eos_id: int,
) -> list[list[Hypothesis]]:
    """The one decoding loop, with `strategy` choosing the extensions. feats (B, T, D), mask (B, T) bool -> B lists
    of at most n_best hypotheses, best first (sorted() is stable: among equal scores the one found first wins)."""
    B, device, K = feats.shape[0], feats.device, options.beam_size
    width = strategy.width or 1
    state = model.init_state(feats, mask)
    if width > 1:
        state = _select(state, torch.arange(B, device=device).repeat_interleave(width))
    # Rows 1..width-1 of a video start dead, at -inf, so that its identical copies do not become identical beams.
    live = [k == 0 for _ in range(B) for k in range(width)]
    rows = _Rows(videos=[video for video in range(B) for _ in range(width)],
                 scores=[0.0 if ok else NEG_INF for ok in live], live=live,
                 histories=[[] for _ in live], attention=[[] for _ in live])
    prev = torch.full((len(live),), bos_id, dtype=torch.long, device=device)
    # Keys step() has always returned unchanged (the encoded frames): equal on all rows of a video, so they need
    # new rows only when the videos' rows change, not when beams are reordered (a (R, T, D) copy per step would
    # cost as much as the model step).
    constant = set(state)
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]

    for t in range(options.max_len + 1):
        given = state
        log_probs, alpha, state = model.step(prev, state)
        constant = {key for key in constant if state.get(key) is given[key]}
        if t == options.max_len and not strategy.force_eos:
            (alpha,) = _to_host(alpha.float())
            for row, video in enumerate(rows.videos):
                finished[video].append(_finish(rows, row, rows.scores[row], alpha, False, options.length_penalty))
            break
        log_probs = log_probs.double()
        if options.no_repeat_ngram_size:
            _block(log_probs, [h if ok else None for h, ok in zip(rows.histories, rows.live, strict=True)],
                   options.no_repeat_ngram_size)
        if t == options.max_len:
            log_probs = _force_eos(log_probs, eos_id)
        *ranked, alpha = _to_host(*strategy.rank(log_probs, rows), alpha.float())
        groups = rows.groups()
        chosen: list[tuple[int, int, float, bool]] = []  # (source row, word, score, live) of the next rows
        videos: list[int] = []
        for (video, _, _), extensions in zip(groups, strategy.select(ranked, rows, groups, finished), strict=True):
            beams: list[Extension] = []
            for log_prob, row, word in extensions:
                if word == eos_id:
                    finished[video].append(_finish(rows, row, log_prob, alpha, True, options.length_penalty))
                else:
                    beams.append((log_prob, row, word))
                    if len(beams) == K:
                        break
            if strategy.is_finished(t, beams, finished[video]):
                continue
            # Fewer than `width` extensions (tiny vocabularies, blocked n-grams): pad with dead rows.
            pads = max(0, (strategy.width or 0) - len(beams))
            chosen += [(row, word, log_prob, True) for log_prob, row, word in beams]
            chosen += [(beams[0][1], eos_id, NEG_INF, False)] * pads
            videos += [video] * (len(beams) + pads)
        if not chosen:
            break
        source = [row for row, _, _, _ in chosen]
        words = [word for _, word, _, _ in chosen]
        state = _reindex(state, source, constant, rows.videos != videos, device)
        rows = _Rows(videos=videos, scores=[score for _, _, score, _ in chosen], live=[ok for *_, ok in chosen],
                     histories=[rows.histories[row] + [word] for row, word in zip(source, words, strict=True)],
                     attention=[rows.attention[row] + [alpha[row]] for row in source])
        prev = _to_device(words, torch.long, device)

    return [sorted(done, key=lambda h: h.score, reverse=True)[: options.n_best] for done in finished]


def _reindex(state: dict[str, torch.Tensor], source: list[int], constant: set[str], regrouped: bool,
             device: torch.device) -> dict[str, torch.Tensor]:
    """The state of the next rows, row i a copy of row source[i]. `constant` keys hold the same values on every
    row of a video: they change only when the videos' rows do (`regrouped`)."""
    if source == list(range(len(source))) and not regrouped:  # greedy while no video finishes: nothing moves
        return state
    index = _to_device(source, torch.long, device)
    return {key: value if key in constant and not regrouped else value.index_select(0, index)
            for key, value in state.items()}


def greedy_search(
    model, feats: torch.Tensor, mask: torch.Tensor, options: DecodingOptions, bos_id: int, eos_id: int
) -> list[list[Hypothesis]]:
    """The most likely next word at every step. feats (B, T, D), mask (B, T) bool -> B lists of 1 hypothesis."""
    return search_loop(model, feats, mask, options, Greedy(), bos_id, eos_id)


def beam_search(
    model, feats: torch.Tensor, mask: torch.Tensor, options: DecodingOptions, bos_id: int, eos_id: int
) -> list[list[Hypothesis]]:
    """Batched beam search (`BeamSearch`). feats (B, T, D), mask (B, T) bool -> B lists of n_best hypotheses."""
    return search_loop(model, feats, mask, options, BeamSearch(options), bos_id, eos_id)


def shrinking_beam_search(
    model, feats: torch.Tensor, mask: torch.Tensor, options: DecodingOptions, bos_id: int, eos_id: int
) -> list[list[Hypothesis]]:
    """The original code's beam search (`ShrinkingBeam`), batched over videos. feats (B, T, D), mask (B, T) bool
    -> B lists of at most n_best hypotheses, best first, ranked as `DecodingOptions.length_penalty` says."""
    return search_loop(model, feats, mask, options, ShrinkingBeam(options), bos_id, eos_id)


def words_and_attention(hypothesis: Hypothesis, vocab, valid: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
    """A hypothesis as explanations and reports show it: (words, attention).

    vocab: the model's vidcap.text.vocab.Vocabulary. words: its tokens as words, then the EOS token ("<eos>"), one per
    attention row. attention: (len(words), K) float32, row l the attention weights over the video's K valid frames
    when words[l] was emitted; valid: (T,) bool, True on those frames (None: all T frames).
    """
    words = [vocab.id_to_token(t) for t in hypothesis.tokens] + [vocab.id_to_token(vocab.EOS)]
    attention = np.asarray(hypothesis.attention, dtype=np.float32)
    return words, attention if valid is None else attention[:, np.asarray(valid, dtype=bool)]
