"""Benchmark (issue 5, item 6): batched beam search vs one video at a time, and scoring an MSVD-sized test split.

    python benchmarks/bench_decode.py [--videos 64] [--beam-size 5] [--max-len 30] [--repeats 2]
                                      [--score-videos 670] [--references 40] [--skip-scoring] [--compare-pycoco]

Decoding: a randomly initialised `vidcap.model.captioner.CaptionModel` of realistic size (variant "global": attention over
T=26 frames of D=1280 features, hidden 512, vocabulary 3000) decodes B videos with beam K, first in one batch
(`vidcap.model.decoding.decode`, one model step per time step for all B*K beams), then one video at a time with the same
options. Untrained, the model rarely picks EOS, so both runs go to max_len: the worst case, the same work for both.
Prints seconds per run (best of --repeats) and the ratio (target: >= 5x on a 2-core CPU).

Scoring: `vidcap.text.metrics.score_captions` on synthetic captions (670 videos x 40 references, MSVD's test split),
wall-clock time including the JVM starts (PTB tokenizer, METEOR). `--compare-pycoco` also times pycocoevalcap's
own sequence (tokenizer twice, then Bleu, Meteor, Rouge, Cider one after the other). Not a test: nothing asserted.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from vidcap.model.captioner import CaptionModel, ModelConfig
from vidcap.model.decoding import DecodingOptions, decode

BOS, EOS = 1, 2

SUBJECTS = ["a man", "a woman", "the boy", "a girl", "two dogs", "a cat", "someone", "a chef", "the player", "People"]
VERBS = ["is slicing", "is playing", "cuts", "rides", "is dancing with", "plays", "is cooking", "throws", "holds"]
OBJECTS = ["a tomato", "the guitar", "a ball", "an onion", "a bicycle", "the piano", "some meat", "a horse", "water"]
TAILS = ["", " in the kitchen", " on stage", " outside", " quickly", ", happily", " with a knife", " at night"]


def _sentence(rng: random.Random) -> str:
    text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}"
    return text[0].upper() + text[1:] + rng.choice([".", "", "!", "."])


def bench_decoding(args) -> None:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=args.vocab, global_dim=args.dim, variant="global", hidden_dim=512,
                         max_frames=args.frames)
    model = CaptionModel(config).eval()
    feats = torch.randn(args.videos, args.frames, args.dim)
    mask = torch.ones(args.videos, args.frames, dtype=torch.bool)
    mask[::3, 20:] = False  # some shorter videos
    options = DecodingOptions(beam_size=args.beam_size, max_len=args.max_len)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"decoding: CaptionModel {params:.1f}M parameters (V={args.vocab}, H=512, T={args.frames}, D={args.dim}), "
          f"B={args.videos}, K={args.beam_size}, max_len={args.max_len}, torch threads={torch.get_num_threads()}")

    def batched():
        return decode(model, feats, mask, options, BOS, EOS)

    def one_at_a_time():
        return [decode(model, feats[i:i + 1], mask[i:i + 1], options, BOS, EOS)[0] for i in range(args.videos)]

    decode(model, feats[:2], mask[:2], options, BOS, EOS)  # warm-up
    times = {"batched": [], "one video at a time": []}
    results = {}
    for _ in range(args.repeats):  # interleaved, so that other load on the machine hits both alike
        for name, fn in (("batched", batched), ("one video at a time", one_at_a_time)):
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    same = sum(a[0].tokens == b[0].tokens for a, b in zip(results["batched"], results["one video at a time"],
                                                          strict=True))
    lengths = [len(h[0].tokens) for h in results["batched"]]
    for name, values in times.items():
        print(f"  {name:20s} {min(values):8.2f} s  ({min(values) / args.videos * 1000:.0f} ms per video)")
    ratio = min(times["one video at a time"]) / min(times["batched"])
    print(f"  speed-up of batching: {ratio:.1f}x (target >= 5x); same best caption for {same}/{args.videos} videos; "
          f"mean caption length {sum(lengths) / len(lengths):.1f} words")


def bench_scoring(args) -> None:
    from vidcap.text.metrics import score_captions

    rng = random.Random(0)
    ids = [f"vid{i}" for i in range(1301, 1301 + args.score_videos)]
    references = {i: [_sentence(rng) for _ in range(args.references)] for i in ids}
    predictions = {i: _sentence(rng).lower().rstrip(".!") for i in ids}
    print(f"scoring: {len(ids)} videos x {args.references} references (synthetic), JVM starts included")
    start = time.perf_counter()
    scores = score_captions(references, predictions)
    elapsed = time.perf_counter() - start
    print(f"  score_captions        {elapsed:8.2f} s   " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    if args.compare_pycoco:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        start = time.perf_counter()
        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({i: [{"caption": c} for c in references[i]] for i in ids})
        res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in ids})
        Bleu(4).compute_score(gts, res, verbose=0)
        meteor = Meteor()
        meteor.compute_score(gts, res)
        Rouge().compute_score(gts, res)
        Cider().compute_score(gts, res)
        print(f"  pycocoevalcap direct  {time.perf_counter() - start:8.2f} s")
        with meteor.lock:
            meteor.meteor_p.stdin.close()
            meteor.meteor_p.kill()
            meteor.meteor_p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=64, help="B, videos decoded")
    parser.add_argument("--beam-size", type=int, default=5, help="K")
    parser.add_argument("--max-len", type=int, default=30)
    parser.add_argument("--vocab", type=int, default=3000, help="V")
    parser.add_argument("--frames", type=int, default=26, help="T")
    parser.add_argument("--dim", type=int, default=1280, help="D, feature width (EfficientNet-Lite0)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds; the best is reported")
    parser.add_argument("--score-videos", type=int, default=670)
    parser.add_argument("--references", type=int, default=40)
    parser.add_argument("--skip-scoring", action="store_true")
    parser.add_argument("--compare-pycoco", action="store_true", help="also time pycocoevalcap's own pipeline")
    args = parser.parse_args()
    bench_decoding(args)
    if not args.skip_scoring:
        bench_scoring(args)


if __name__ == "__main__":
    main()
