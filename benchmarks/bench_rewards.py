"""Benchmark (issue 12, item 6): `vidcap.text.cider.CiderD` against pycocoevalcap's Cider on one SCST batch.

    python benchmarks/bench_rewards.py [--videos 1200] [--references 40] [--vocab 3000] [--batch 64] [--samples 5]
                                       [--repeats 7] [--seed 0]

References: a generated MSVD-size train split (1200 videos x 40 references, 8-12 words drawn from a Zipf-like
~3000-word vocabulary around a few words of the video's own "content", so that references of one video overlap as
real ones do). Candidates: 64 videos x 5 samples, each a reference of its video with some words replaced, dropped or
repeated, plus a few empty ones.

Times (median of --repeats, in this one run):
- `CiderD(references)`: the one-off construction (median of 3) (document frequencies, reference vectors).
- `scorer.score_array`: the 320 candidates against the whole train split's document frequencies.
- pycocoevalcap `Cider().compute_score`, called the only way it can be: once per sample column (it takes one
  candidate per video) on the batch's 64 videos, recomputing the document frequencies from those 64 reference sets
  each time. Its scores therefore differ from CiderD's (other df); only the time is compared. The equality of the two
  on the same reference set is tests/test_rewards.py's job.
Not a test: nothing asserted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
from pycocoevalcap.cider.cider import Cider

from vidcap.text.cider import CiderD


def make_references(rng: random.Random, videos: int, references: int, vocab: list[str]) -> dict[str, list[list[str]]]:
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]  # Zipf: "a", "is", "the" ... are frequent
    data = {}
    for v in range(videos):
        content = rng.sample(vocab[50:], 6)  # the video's own words
        refs = []
        for _ in range(references):
            length = rng.randint(8, 12)
            words = rng.choices(vocab, weights, k=length)
            for i in rng.sample(range(length), 4):
                words[i] = rng.choice(content)
            refs.append(words)
        data[f"video{v}"] = refs
    return data


def make_candidates(rng: random.Random, references, batch: int, samples: int, vocab: list[str]):
    video_ids = rng.sample(sorted(references), batch)
    candidates = []
    for video_id in video_ids:
        for _ in range(samples):
            words = list(rng.choice(references[video_id]))
            for i in range(len(words)):
                if rng.random() < 0.3:
                    words[i] = rng.choice(vocab)
            if rng.random() < 0.2:
                words = words[: rng.randint(0, len(words))]
            if rng.random() < 0.1:
                words += words[-1:] * 3  # "... a a a"
            candidates.append(words)
    return video_ids, candidates


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=1200)
    parser.add_argument("--references", type=int, default=40)
    parser.add_argument("--vocab", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    vocab = [f"w{i}" for i in range(args.vocab)]
    references = make_references(rng, args.videos, args.references, vocab)
    video_ids, candidates = make_candidates(rng, references, args.batch, args.samples, vocab)
    print(f"references: {args.videos} videos x {args.references}, vocabulary {args.vocab}; "
          f"candidates: {args.batch} videos x {args.samples} samples")

    build = median_time(lambda: CiderD(references), 3)
    scorer = CiderD(references)
    repeated = np.repeat(video_ids, args.samples)
    scorer.score_array(repeated, candidates)  # warm-up
    ours = median_time(lambda: scorer.score_array(repeated, candidates), args.repeats)

    gts = {v: [" ".join(r) for r in references[v]] for v in video_ids}
    columns = [{v: [" ".join(candidates[b * args.samples + k])] for b, v in enumerate(video_ids)}
               for k in range(args.samples)]

    def pycoco():
        for res in columns:
            Cider().compute_score(gts, res)

    theirs = median_time(pycoco, args.repeats)
    print(f"CiderD construction (once):           {build * 1e3:9.1f} ms")
    print(f"CiderD.score_array, {len(candidates)} candidates:    {ours * 1e3:9.2f} ms")
    print(f"pycocoevalcap Cider, {args.samples} calls x {args.batch}:     {theirs * 1e3:9.2f} ms")
    print(f"ratio pycocoevalcap / CiderD:         {theirs / ours:9.1f}x")


if __name__ == "__main__":
    main()
