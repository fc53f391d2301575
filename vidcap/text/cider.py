"""CIDEr-D as a reward: scores of sampled captions against one fixed reference set, cheap enough for every step.

The score is coco-caption's `Cider` (which is the CIDEr-D variant; docs/metrics.md, "CIDEr-D", has the convention):

- A caption is a bag of n-grams, n = 1..4. In a caption, an n-gram weighs its count times its IDF,
  log(N) - log(max(1, df)), where N is the number of videos and df the number of videos whose reference set (all of
  the video's references together, one document per video) contains the n-gram. An n-gram no reference contains
  gets the largest IDF, log(N): it lengthens the candidate's vector but matches nothing.
- Against one reference, for each n: the sum over shared n-grams of min(candidate weight, reference weight) times
  the reference weight (the min clips repeated words), divided by the product of the Euclidean norms of the two
  weight vectors (0 when either is empty), times exp(-(len_c - len_r)^2 / (2 * 6^2)), the lengths in tokens.
- The score is 10 times the mean of those values over the video's references and over n.

One difference in use, not in definition: pycocoevalcap counts df over the references passed to each call, while
`CiderD` counts them once, over the references given to its constructor (for self-critical training: the train
split). `CiderD(refs).scores(cands)` equals pycocoevalcap's `Cider().compute_score(refs, cands)` when `cands` has one
candidate for every video of `refs` (tests/test_rewards.py checks it to 1e-9).

Captions come tokenised, as lists of tokens, the PTB tokens `vidcap prepare` stores (docs/formats.md): nothing is
tokenised here. How it is fast: the constructor gives every reference n-gram an integer id (an n-gram's id comes from
its (n-1)-gram prefix's id and its last word), counts df, the reference weights and norms, and sorts one table of
(video, n-gram) -> (reference, weight). A batch of candidates is then counted and looked up with a few numpy calls
for all of them together: no Python loop over n-grams or references.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterator, Mapping, Sequence
from itertools import chain, repeat
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)

MAX_N = 4  # n-gram orders 1..MAX_N
SIGMA = 6.0  # standard deviation of the length penalty, in tokens
_SENTINEL = np.iinfo(np.int64).max  # ends each sorted code array: larger than any code

Tokens = Sequence[str]


class CiderD:
    """CIDEr-D of candidate captions, with document frequencies fixed by `references`.

    `references`: {video_id: [tokens, ...]}, at least one reference per video (a reference may be empty).
    Raises ValueError on an empty mapping, a video without references, or a caption given as a str.
    """

    def __init__(self, references: Mapping[Hashable, Sequence[Tokens]]):
        if not references:
            raise ValueError("CiderD needs references for at least one video")
        self._row: dict[Hashable, int] = {}  # video id -> video row, 0..V-1
        captions: list[Tokens] = []
        counts = []
        for video_id, refs in references.items():
            if isinstance(refs, str) or not refs:
                raise ValueError(f"video {video_id!r}: expected a non-empty list of tokenised references")
            for ref in refs:
                _check_tokens(ref, video_id)
            self._row[video_id] = len(self._row)
            captions.extend(refs)
            counts.append(len(refs))
        self._vocab: dict[str, int] = {}  # token -> word id, 0..W-1
        words = np.array([self._vocab.setdefault(t, len(self._vocab)) for ref in captions for t in ref], np.int64)
        lengths = np.array([len(ref) for ref in captions], np.int64)
        ref_video = np.repeat(np.arange(len(counts)), counts)  # (R,) video row of each reference
        self._first_ref = np.cumsum(counts) - counts  # (V,) the references of video v are rows
        self._num_refs = np.array(counts)  # (V,)       first_ref[v] ... first_ref[v] + num_refs[v] - 1
        self._ref_len = lengths.astype(np.float64)  # (R,)
        self._ref_norm = np.zeros((len(captions), MAX_N))  # (R, MAX_N)
        self._log_n = np.log(float(len(counts)))
        self._codes: list[np.ndarray] = []  # per order: sorted codes of the reference n-grams; index = n-gram id
        idf, table_video, table_ngram, table_ref, table_weight = [], [], [], [], []
        offset = 0  # global n-gram id = offset of its order + its id within the order
        orders = _orders(lengths)
        for order, (ids, codes) in enumerate(_ngram_ids(words, orders, len(self._vocab))):
            size = len(codes)
            self._codes.append(codes)
            pairs, count = np.unique(orders[order].owner * size + ids, return_counts=True)  # distinct (ref, n-gram)
            ref, ngram = np.divmod(pairs, size)
            documents = np.unique(ref_video[ref] * size + ngram) % size  # distinct (video, n-gram) -> n-gram
            df = np.bincount(documents, minlength=size).astype(np.float64)
            idf.append(self._log_n - np.log(np.maximum(1.0, df)))  # pycocoevalcap's order of operations
            weight = count * idf[-1][ngram]
            self._ref_norm[:, order] = np.sqrt(np.bincount(ref, weight * weight, minlength=len(captions)))
            table_video.append(ref_video[ref])
            table_ngram.append(ngram + offset)
            table_ref.append(ref)
            table_weight.append(weight)
            offset += size
        self._idf = np.concatenate(idf)  # (G,) over all orders' n-grams
        keys = np.concatenate(table_video) * len(self._idf) + np.concatenate(table_ngram)
        order = np.argsort(keys, kind="stable")
        self._table_ref = np.concatenate(table_ref)[order]  # (E,) reference row holding the n-gram
        self._table_weight = np.concatenate(table_weight)[order]  # (E,) the n-gram's weight in that reference
        # The table's distinct keys, video row * G + n-gram id, sorted: (P,); pair j holds entries
        # pair_start[j] .. pair_start[j + 1] - 1. Sentinels (below) make a search past the last key find no entry.
        pair_key, start = np.unique(keys[order], return_index=True)
        self._pair_key = np.append(pair_key, _SENTINEL)  # (P + 1,)
        self._pair_start = np.append(start, [len(keys), len(keys)])  # (P + 2,)
        self._offsets = np.cumsum([0] + [len(c) for c in self._codes[:-1]])
        # An order may have no n-gram at all (references shorter than 4 words).
        self._codes = [np.append(codes, _SENTINEL) for codes in self._codes]
        log.debug("CIDEr-D: %d videos, %d references, %d distinct n-grams", len(counts), len(captions),
                  len(self._idf))

    def scores(self, candidates: Mapping[Hashable, Sequence[Tokens]]) -> dict[Hashable, list[float]]:
        """{video_id: [tokens, ...]} -> {video_id: [score, ...]}, any number of candidates per video, same order."""
        for video_id, cands in candidates.items():
            if isinstance(cands, str):
                raise ValueError(f"video {video_id!r}: expected a list of tokenised candidates, got a string")
        video_ids = [video_id for video_id, cands in candidates.items() for _ in cands]
        flat = [cand for cands in candidates.values() for cand in cands]
        values = self.score_array(video_ids, flat).tolist()
        result, start = {}, 0
        for video_id, cands in candidates.items():
            result[video_id] = values[start:start + len(cands)]
            start += len(cands)
        return result

    def score_array(self, video_ids: Sequence[Hashable], candidates: Sequence[Tokens]) -> np.ndarray:
        """Score candidate i against the references of video_ids[i]: (C,) ids, C token lists -> (C,) float64.

        For B videos with K samples each: `score_array(np.repeat(ids, K), samples).reshape(B, K)`. Candidates are
        words only (strip BOS, EOS and padding first); an empty candidate scores 0. A video id without references raises ValueError naming it.
        """
        if len(video_ids) != len(candidates):
            raise ValueError(f"{len(video_ids)} video ids for {len(candidates)} candidates")
        rows = self._rows(video_ids)  # (C,)
        if any(isinstance(cand, str) for cand in candidates):
            for video_id, cand in zip(video_ids, candidates, strict=True):
                _check_tokens(cand, video_id)
        lengths = np.array([len(cand) for cand in candidates], np.int64)  # (C,)
        cand, order, ngram, weight, norm2 = self._count(candidates, lengths)
        # Join the candidates' known n-grams with the table: every (candidate n-gram, reference holding it) pair.
        keys = rows[cand] * len(self._idf) + ngram
        at = np.searchsorted(self._pair_key, keys)
        lo = self._pair_start[at]
        per = np.where(self._pair_key[at] == keys, self._pair_start[at + 1] - lo, 0)
        which = np.repeat(np.arange(len(keys)), per)  # the candidate n-gram of each pair
        entry = lo[which] + np.arange(len(which)) - np.repeat(np.cumsum(per) - per, per)
        ref_weight = self._table_weight[entry]
        clipped = np.minimum(weight[which], ref_weight) * ref_weight
        # (C, MAX_N, R_max) sums of clipped products; R_max = most references of one video in the batch.
        first = self._first_ref[rows]  # (C,)
        num_refs = self._num_refs[rows]  # (C,)
        r_max = int(num_refs.max(initial=0))
        slot = self._table_ref[entry] - first[cand[which]]
        flat = (cand[which] * MAX_N + order[which]) * r_max + slot
        dot = np.bincount(flat, clipped, minlength=len(rows) * MAX_N * r_max).reshape(len(rows), MAX_N, r_max)
        slots = np.arange(r_max)
        valid = slots < num_refs[:, None]  # (C, R_max)
        ref = np.where(valid, first[:, None] + slots, 0)  # (C, R_max) reference rows, 0 as padding
        norms = np.sqrt(norm2)[:, :, None] * self._ref_norm[ref].transpose(0, 2, 1)  # (C, MAX_N, R_max)
        similarity = np.divide(dot, norms, out=np.zeros(dot.shape), where=norms > 0)
        delta = lengths[:, None] - self._ref_len[ref]  # (C, R_max)
        penalty = np.where(valid, np.exp(-(delta * delta) / (2 * SIGMA**2)), 0.0)
        return 10.0 * (similarity * penalty[:, None, :]).sum(axis=(1, 2)) / (MAX_N * num_refs)

    def _rows(self, video_ids: Sequence[Hashable]) -> np.ndarray:
        """(C,) video rows of `video_ids`; ValueError naming the ids that have no references."""
        try:
            return np.array([self._row[video_id] for video_id in video_ids], np.int64)
        except KeyError:
            missing = list(dict.fromkeys(v for v in video_ids if v not in self._row))
            shown = ", ".join(repr(v) for v in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(f"no CIDEr-D references for video {shown}") from None

    def _count(self, candidates: Sequence[Tokens], lengths: np.ndarray):
        """The distinct n-grams of every candidate that some reference holds, and every candidate's norms.

        Returns (cand, order, ngram, weight) over those n-grams, each (M,): candidate index, order - 1, global
        n-gram id, count times IDF; and norm2: (C, MAX_N) squared norms over all the candidate's n-grams.
        """
        flat = list(chain.from_iterable(candidates))
        known = len(self._vocab)
        words = np.fromiter(map(self._vocab.get, flat, repeat(-1)), np.int64, len(flat))
        unseen: dict[str, int] = {}  # words no reference uses get ids known, known + 1, ... for this batch only
        for i in np.flatnonzero(words < 0):
            words[i] = unseen.setdefault(flat[i], known + len(unseen))
        base = known + len(unseen)
        # Every distinct n-gram of the batch, all orders: (U,) its order - 1 and its global id among the references'
        # n-grams, -1 if no reference has it; and for every n-gram occurrence, (M,) its candidate and distinct index.
        orders = _orders(lengths)
        order_of, held, owner, distinct = [], [], [], []
        seen = 0  # distinct n-grams of the lower orders
        held_prev = np.zeros(1, np.int64)  # the empty prefix of every unigram
        for order, (grams, (ids, codes), ref_codes) in enumerate(
                zip(orders, _ngram_ids(words, orders, base), self._codes, strict=True)):
            prefix, last = np.divmod(codes, base)
            prefix = held_prev[prefix]
            code = prefix * known + last
            at = np.searchsorted(ref_codes, code)
            # A prefix or last word no reference has (-1, >= known) would make a code that collides with another.
            held_prev = np.where((prefix >= 0) & (last < known) & (ref_codes[at] == code), at, -1)
            distinct.append(ids + seen)
            seen += len(codes)
            held.append(np.where(held_prev >= 0, held_prev + self._offsets[order], -1))
            order_of.append(np.full(len(codes), order))
            owner.append(grams.owner)
        held, order_of = np.concatenate(held), np.concatenate(order_of)
        pairs, count = np.unique(np.concatenate(owner) * len(held) + np.concatenate(distinct), return_counts=True)
        cand, distinct = np.divmod(pairs, len(held))  # (M',) every (candidate, distinct n-gram) once
        ngram, order = held[distinct], order_of[distinct]
        found = ngram >= 0
        weight = count * np.where(found, self._idf[np.where(found, ngram, 0)], self._log_n)
        norm2 = np.bincount(cand * MAX_N + order, weight * weight, minlength=len(candidates) * MAX_N)
        cand, order, ngram, weight = cand[found], order[found], ngram[found], weight[found]
        return cand, order, ngram, weight, norm2.reshape(len(candidates), MAX_N)


class _Order(NamedTuple):
    """Where the n-grams of one order start in the concatenated words of C captions; M n-grams."""

    position: np.ndarray  # (M,) index of the n-gram's first word
    prefix: np.ndarray  # (M,) index of its (n-1)-gram prefix among the previous order's n-grams
    owner: np.ndarray  # (M,) caption index


def _orders(lengths: np.ndarray) -> list[_Order]:
    """For n = 1..MAX_N, the n-grams of captions of `lengths` (C,) whose words are concatenated."""
    owner = np.repeat(np.arange(len(lengths)), lengths)  # (T,) caption of each word
    index_in_caption = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    left = lengths[owner] - index_in_caption  # (T,) words from this one to the caption's end, this one included
    position = np.arange(len(owner))
    orders = []
    for n in range(1, MAX_N + 1):
        keep = left[position] >= n
        position = position[keep]
        orders.append(_Order(position, np.flatnonzero(keep), owner[position]))
    return orders


def _ngram_ids(words: np.ndarray, orders: list[_Order], base: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For n = 1..MAX_N, dense ids of the n-grams `orders` of `words` (T,), all word ids < base.

    Yields (ids, codes): ids (M,) the n-gram's index in codes, codes (U,) the sorted distinct codes
    prefix id * base + last word (prefix id 0 for unigrams).
    """
    ids = np.zeros(len(words), np.int64)
    for n, grams in enumerate(orders, 1):
        codes, ids = np.unique(ids[grams.prefix] * base + words[grams.position + n - 1], return_inverse=True)
        yield ids, codes


def _check_tokens(caption: Tokens, video_id: Hashable) -> None:
    if isinstance(caption, str):
        raise ValueError(f"video {video_id!r}: captions must be lists of tokens, got the string {caption[:40]!r}")
