"""Benchmark of issue 4: training throughput of the LightningModule vs a plain PyTorch loop, and the attention's
U_a v computed once per video vs once per word.

    python benchmarks/bench_train.py [--steps 12] [--rounds 4] [--batch-size 32] [--device cpu|cuda] [--variant global]

(a) Writes a feature store and a captions table of random data to a temporary folder, reads them with
    `CaptionDataModule` and keeps the collated batches in memory (so that disk and workers do not blur the
    comparison), then trains the same model on the same batches with `Trainer.fit(CaptionModule)` (no logger, no
    checkpoints, no progress bar; gradient clipping as `vidcap fit` configures it) and with a hand-written loop (the same loss,
    Adam, clipping). Prints captions/s of each round (the two back to back, alternating which goes first, so that
    other load on the machine hits both alike) and the median of the per-round ratios; the target is Lightning
    within 5% of the plain loop. On a shared CPU pass --threads 1: oversubscribed threads make timings erratic.
(b) Times a teacher-forced forward + backward and a beam-search decode (beam 5) with the model as written (U_a v
    computed in `init_state`) and with a variant that recomputes U_a v at every step, and prints the ratios.
(c) Self-critical training (issue 12): an SCST step on --scst-videos videos (64) x K = 5 sampled captions, with the
    mean and the greedy baseline, against a cross-entropy step on the same videos with 5 random references each (320
    captions), one model, in this run; and the share of the SCST step spent computing the rewards (CIDEr-D against the
    references). The model first takes --scst-warmup cross-entropy steps on those references, so that its samples end
    at EOS about as a trained model's do (an untrained one runs every caption to max_len). Targets: SCST step <= 3x
    the XE step, rewards <= 10% of it. `--only scst` runs (c) alone.
Not a test: nothing is asserted. Sizes are the toolkit defaults (E 256, H 512, A 256) on 1280-d frame features.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_lightning import Callback, Trainer
from torch.utils.data import DataLoader

from vidcap.model.captioner import CaptionModel, ModelConfig
from vidcap.model.decoding import DecodingOptions, decode
from vidcap.text.vocab import Vocabulary
from vidcap.training.data import CaptionDataModule, collate
from vidcap.training.lightning_cli import TRAINER_DEFAULTS
from vidcap.training.module import CaptionModule
from vidcap.training.scst import CaptionReward, SCSTOptions, SelfCritical


def write_dataset(root: Path, videos: int, refs: int, dim: int, frames: int, words: int, seed: int = 0):
    """Random features (T = frames, D = dim) and captions of 6-14 words from a `words`-word vocabulary."""
    rng = np.random.default_rng(seed)
    data, feats = root / "data", root / "feats"
    (feats / "features").mkdir(parents=True)
    data.mkdir()
    vocab_words = [f"w{i}" for i in range(words)]
    meta = {"format": 1, "num_frames": frames, "dtype": "float16",
            "global": {"name": "random", "weights": "random", "dim": dim, "image_size": 224}, "local": None,
            "versions": {}}
    (feats / "meta.json").write_text(json.dumps(meta))
    rows = []
    for v in range(videos):
        np.savez(feats / "features" / f"v{v}.npz", **{
            "global": rng.standard_normal((frames, dim)).astype(np.float16),
            "mask": np.ones(frames, bool), "times": np.arange(frames, dtype=np.float32)})
        for _ in range(refs):
            rows.append([f"v{v}", "train", " ".join(rng.choice(vocab_words, rng.integers(6, 15)))])
    rows.append(["v0", "val", "w1 w2"])
    with open(data / "captions.csv", "w", newline="") as f:  # these captions are their own PTB tokens
        csv.writer(f).writerows([["video_id", "split", "caption", "tokens"], *[[*r, r[2]] for r in rows]])
    Vocabulary(vocab_words).save(data / "vocab.json")
    return data, feats


def _identity(batch):
    return batch


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock(Callback):
    """Wall-clock time at the end of every training batch."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _sync(self.device)
        self.times.append(time.perf_counter())


def captions_per_second(times: list[float], batches: list[dict], warmup: int) -> float:
    """Captions trained between the end of batch `warmup - 1` and the end of the last batch, per second."""
    captions = sum(len(b["targets"]) for b in batches[warmup:])
    return captions / (times[-1] - times[warmup - 1])


def lightning_round(module: CaptionModule, batches: list[dict], args, device: torch.device) -> float:
    clock = StepClock(device)
    trainer = Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=args.precision,
        max_steps=len(batches), logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[clock],
        **TRAINER_DEFAULTS,  # gradient clipping as `vidcap fit` configures it
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, collate_fn=_identity))
    return captions_per_second(clock.times, batches, args.warmup)


def plain_loss(model: CaptionModel, batch: dict, penalty: float) -> torch.Tensor:
    """The loss of CaptionModule.training_step, written out."""
    feats = model.combine_features(batch["global"], batch["local"])
    targets, mask = batch["targets"], batch["mask"]
    logits, alpha = model(feats, mask, batch["inputs"])
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=Vocabulary.PAD,
                          reduction="sum")
    loss = nll / targets.shape[0]
    if model.config.attends and penalty:
        loss = loss + penalty * model.attention_penalty(alpha, targets != Vocabulary.PAD, mask)
    return loss


def plain_round(model: CaptionModel, batches: list[dict], args, device: torch.device, penalty: float) -> float:
    model = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(batches, batch_size=None, collate_fn=_identity)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    times = []
    for batch in loader:
        batch = _to(batch, device)
        with autocast:
            loss = plain_loss(model, batch, penalty)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TRAINER_DEFAULTS["gradient_clip_val"])
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter())
    return captions_per_second(times, batches, args.warmup)


class RecomputingModel(CaptionModel):
    """The same model, but U_a v is computed again at every word, as a direct reading of the equations would."""

    def _attend(self, h, state):
        return super()._attend(h, {**state, "ctx_proj": self.att_v(state["ctx"])})


def best_time(fn, rounds: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def bench_attention(module: CaptionModule, batch: dict, args, device: torch.device) -> None:
    fast = copy.deepcopy(module.model).to(device)
    slow = RecomputingModel(fast.config).to(device)
    slow.load_state_dict(fast.state_dict())
    batch = _to(batch, device)
    feats = fast.combine_features(batch["global"], batch["local"])
    mask, inputs = batch["mask"], batch["inputs"]

    def train_step(model):
        model.train()
        logits, _ = model(feats, mask, inputs)
        logits.float().logsumexp(-1).sum().backward()

    options = DecodingOptions(beam_size=5, max_len=20)
    rows = []
    for name, run in (("forward + backward", train_step),
                      ("beam search (5)", lambda m: decode(m.eval(), feats, mask, options))):
        run(fast), run(slow)  # warm-up
        t_fast = best_time(lambda run=run: run(fast), args.rounds, device)
        t_slow = best_time(lambda run=run: run(slow), args.rounds, device)
        rows.append((name, t_fast, t_slow))
    B, T = mask.shape
    print(f"\n(b) attention, batch of {B} videos x {T} frames, {inputs.shape[1]} words (best of {args.rounds}):")
    print(f"  {'':<20} {'U_a v once (ms)':>16} {'every step (ms)':>16} {'ratio':>7}")
    for name, t_fast, t_slow in rows:
        print(f"  {name:<20} {1000 * t_fast:16.1f} {1000 * t_slow:16.1f} {t_slow / t_fast:6.2f}x")


def bench_scst(model: CaptionModel, vocab: Vocabulary, args, device: torch.device) -> None:
    """(c): the median of --rounds steps each, after one untimed step."""
    rng = np.random.default_rng(1)
    B, K, R = args.scst_videos, 5, 5
    refs = {f"v{b}": [list(rng.choice(vocab.itos[4:], rng.integers(6, 15))) for _ in range(R)] for b in range(B)}
    feats = torch.randn(B, args.frames, args.dim)
    items = [{"video_id": v, "global": feats[b].numpy(), "local": None, "mask": np.ones(args.frames, bool),
              "references": [" ".join(r) for r in refs[v]], "tokens": [vocab.encode(r) for r in refs[v]]}
             for b, v in enumerate(refs)]
    batch = _to(collate(items), device)
    feats, mask, index = batch["global"], batch["mask"], batch["caption_video"]
    model = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def update(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def xe_step() -> None:
        logits, _ = model(feats[index], mask[index], batch["inputs"])
        update(F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=Vocabulary.PAD,
                               reduction="sum") / len(index))

    for _ in range(args.scst_warmup):
        xe_step()
    reward = CaptionReward(refs)
    critics = {name: SelfCritical(SCSTOptions(num_samples=K, baseline=name), reward, vocab, max_len=args.max_len)
               for name in ("mean", "greedy")}
    lengths = []

    def scst_step(critic: SelfCritical) -> float:
        """One step; returns the seconds it spent on rewards."""
        before = critic.reward_seconds
        loss, values = critic(model, feats, mask, list(refs))
        update(loss)
        lengths.append(values["length"])
        return critic.reward_seconds - before

    def timed(step) -> tuple[float, float]:
        """(median seconds per step, median share of the step spent on rewards)."""
        step()
        times, shares = [], []
        for _ in range(args.rounds):
            _sync(device)
            start = time.perf_counter()
            spent = step() or 0.0
            _sync(device)
            times.append(time.perf_counter() - start)
            shares.append(spent / times[-1])
        return float(np.median(times)), float(np.median(shares))

    xe, _ = timed(xe_step)
    print(f"\n(c) self-critical training, {B} videos (after {args.scst_warmup} XE steps), median of {args.rounds}:")
    print(f"  XE step, {B} x {R} references          {1000 * xe:8.1f} ms")
    for name, critic in critics.items():
        step, share = timed(lambda critic=critic: scst_step(critic))
        print(f"  SCST step, {B} x {K} samples, {name:<6} {1000 * step:8.1f} ms  {step / xe:5.2f}x XE (target <= 3)"
              f"  rewards {100 * share:4.1f}% (target <= 10%)")
    print(f"  sampled captions: {np.mean(lengths):.1f} words on average; XE references 6-14 words")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="training steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="steps not timed at the start of each round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--variant", default="global", choices=["basic", "global"])
    parser.add_argument("--dim", type=int, default=1280, help="feature width (EfficientNet-Lite0: 1280)")
    parser.add_argument("--frames", type=int, default=26)
    parser.add_argument("--words", type=int, default=3000, help="vocabulary size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on cuda, 32-true on cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--only", choices=["scst"], default=None, help="run one part only")
    parser.add_argument("--scst-videos", type=int, default=64, help="(c): videos per step")
    parser.add_argument("--scst-warmup", type=int, default=30, help="(c): XE steps before timing")
    parser.add_argument("--max-len", type=int, default=20, help="(c): most words per sampled caption")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        videos = max(4, (args.steps * args.batch_size) // 4 + 1)
        data, feats = write_dataset(Path(tmp), videos, 4, args.dim, args.frames, args.words)
        dm = CaptionDataModule(str(data), str(feats), batch_size=args.batch_size, num_workers=0)
        dm.setup("fit")
        loader = dm.train_dataloader()
        batches = [b for b, _ in zip(loader, range(args.steps), strict=False)]
    config = ModelConfig(vocab_size=dm.vocab_size, global_dim=dm.global_dim, max_frames=dm.num_frames,
                         variant=args.variant)
    module = CaptionModule(config, caption_metrics=False, vocab=dm.vocab.to_dict(), feature_meta=dm.feature_meta)
    print(f"device {device} ({args.precision}), {torch.get_num_threads()} CPU threads, variant {args.variant}, "
          f"batch {args.batch_size}, {args.steps} steps ({args.warmup} warm-up), "
          f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f}M parameters")

    if args.only == "scst":
        bench_scst(module.model, dm.vocab, args, device)
        return
    plain_model = copy.deepcopy(module.model)
    light, plain = [], []
    for r in range(args.rounds):
        # Alternate which goes first: the machine's load drifts, and the first run of a round warms the caches.
        runs = [lambda: light.append(lightning_round(module, batches, args, device)),
                lambda: plain.append(plain_round(plain_model, batches, args, device, module.attention_penalty))]
        for run in runs if r % 2 == 0 else runs[::-1]:
            run()
        print(f"  round {r + 1}: Lightning {light[-1]:8.1f} captions/s, plain loop {plain[-1]:8.1f} captions/s")
    best_light, best_plain = max(light), max(plain)
    # The two runs of a round are back to back, so their ratio is the least disturbed by the machine's load drifting.
    ratio = float(np.median([a / b for a, b in zip(light, plain, strict=True)]))
    print("\n(a) training throughput:")
    print(f"  LightningModule + Trainer {best_light:8.1f} captions/s (best round)")
    print(f"  plain PyTorch loop        {best_plain:8.1f} captions/s (best round)")
    print(f"  Lightning / plain = {ratio:.3f}, median over rounds (target >= 0.95)")

    bench_attention(module, batches[0], args, device)
    bench_scst(module.model, dm.vocab, args, device)


if __name__ == "__main__":
    main()
