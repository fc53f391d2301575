"""Benchmark (issue 11): tokenising an MSVD-sized captions table the way `vidcap prepare` does.

    python benchmarks/bench_tokenize.py [--captions 80000] [--clips 1970] [--repeats 1]

Generates a captions table of realistic short English sentences (MSVD has about 80,000 English descriptions of 1970
clips): mixed case, commas, full stops, exclamation and question marks, quotes, brackets, contractions, numbers and
abbreviations. Then times the two steps of `vidcap.datasets.prepare` that grow with the number of captions:
`tokenize_captions` (every caption through coco-caption's PTB tokenizer in one Java call, JVM start included) and
`Vocabulary.build` on the train split's tokens. Prints seconds per step (best of --repeats) and captions per second.
Target: the whole tokenisation under 30 s on a 2-core CPU. Not a test: nothing asserted.
"""

from __future__ import annotations

import argparse
import random
import time

import pandas as pd

from vidcap.datasets import standard_split, tokenize_captions
from vidcap.text.metrics import find_java
from vidcap.text.vocab import Vocabulary

SUBJECTS = ["a man", "a woman", "the boy", "a little girl", "two dogs", "a cat", "someone", "a chef", "the player",
            "people", "a group of kids", "Mr. Smith", "the U.S. team", "a baby"]
VERBS = ["is slicing", "is playing", "cuts", "rides", "is dancing with", "plays", "is cooking", "throws", "holds",
         "isn't holding", "can't find", "'s peeling", "is talking to", "is pouring", "jumps over"]
OBJECTS = ["a tomato", "the guitar", "a ball", "an onion", "a bicycle", "the piano", "some meat", "a horse", "water",
           "3 eggs", "a 2-liter bottle", "the dog's toy", "a pizza (with cheese)", "\"the\" flute"]
TAILS = ["", " in the kitchen", " on stage", " outside", " quickly", ", happily", " with a knife", " at night",
         "; then leaves", " -- slowly", " at 5 p.m.", " on a sunny day", " and smiles"]
ENDINGS = [".", "", "!", ".", "?", "...", " ."]


def make_captions(n: int, clips: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    ids = [f"clip{i:04d}_{rng.randint(0, 99)}_{rng.randint(100, 200)}" for i in range(clips)]
    split_of = standard_split(ids)
    rows = []
    for i in range(n):
        text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}"
        text = (text[0].upper() + text[1:] if rng.random() < 0.7 else text) + rng.choice(ENDINGS)
        clip = ids[i % clips]
        rows.append((clip, split_of[clip], text))
    return pd.DataFrame(rows, columns=["video_id", "split", "caption"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=80_000)
    parser.add_argument("--clips", type=int, default=1970)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    java = find_java()
    captions = make_captions(args.captions, args.clips)
    chars = int(captions["caption"].str.len().sum())
    print(f"{len(captions)} captions of {args.clips} clips, {chars / len(captions):.1f} characters on average")

    times, tokenized, dropped = [], None, 0
    for _ in range(args.repeats):
        start = time.perf_counter()
        tokenized, dropped = tokenize_captions(captions, java)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    print(f"tokenize_captions (one PTB tokenizer JVM): {seconds:.2f} s, {len(captions) / seconds:,.0f} captions/s, "
          f"{dropped} dropped (no token)")

    train = [t.split() for t in tokenized.loc[tokenized["split"] == "train", "tokens"]]
    start = time.perf_counter()
    vocab = Vocabulary.build(train, min_count=2)
    print(f"Vocabulary.build on {len(train)} train captions: {time.perf_counter() - start:.2f} s, "
          f"{len(vocab)} tokens")
    print("example:", captions["caption"].iloc[3], "->", tokenized["tokens"].iloc[3])


if __name__ == "__main__":
    main()
