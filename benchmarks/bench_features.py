"""Throughput of the newer extractor families, every number measured in this one run (a script, not a test).

    python benchmarks/bench_features.py [--videos 4] [--seconds 10] [--frames 26] [--local-frames 8]
                                        [--extractors clip_vit_b32,timm:convnext_tiny,r2plus1d_18] [--rounds 1]
                                        [--threads N]

On the same synthetic 320x240 H.264 videos (those of benchmarks/bench_extract.py), random weights (the compute is the
pretrained model's), for each extractor it measures:
  extract  `vidcap extract` end to end (run_extract with its CPU defaults: decoding worker, torch threads, batches
           across videos, store writes; --threads N sets the torch threads of extract and ceiling): steps/s (a step is one frame for a global extractor, one clip for a local one);
  ceiling  the extractor alone on the same steps, pre-decoded and pre-resized, same batches and torch threads:
           what extract can at best reach;
  naive    the loop each library's README shows: PyAV decodes the whole video, then one frame (or clip) at a time
           goes through the library's own transform (open_clip's `preprocess` and timm's `create_transform` on PIL
           images; torchvision's `weights.transforms()` on a clip tensor) and the model, torch's default threads.
It prints steps/s, extract's share of the ceiling and extract's speed over the naive loop. Targets on a 2-core CPU,
clip_vit_b32: >= 85% of the ceiling and >= 1.5x the naive loop. The machine's load (`uptime`) is printed before
and after: on a shared machine compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_extract import make_videos, timed  # noqa: E402

from vidcap.features.extract import ExtractOptions, default_num_workers, default_threads, run_extract  # noqa: E402
from vidcap.features.extractors import build_extractor, spec_for  # noqa: E402
from vidcap.video.reader import read_sampled_frames, sample_frame_indices  # noqa: E402


def decode_all(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def naive_global(name: str, extractor, paths: list[Path], k: int) -> None:
    """One frame at a time through the library's own PIL transform and model, as its README shows."""
    from PIL import Image

    spec = extractor.spec
    if spec.library == "open-clip-torch":
        import open_clip

        visual = extractor.backbone.visual  # the same weights; encode_image is visual(x)
        cfg = open_clip.get_pretrained_cfg(spec.build.keywords["arch"], spec.build.keywords["tag"])
        preprocess = open_clip.image_transform(visual.image_size, is_train=False, mean=cfg["mean"], std=cfg["std"],
                                               resize_mode=cfg["resize_mode"], interpolation=cfg["interpolation"])

        def model(x):
            return torch.nn.functional.normalize(visual(x), dim=-1)
    else:
        import timm

        net = extractor.backbone.net
        preprocess = timm.data.create_transform(**timm.data.resolve_data_config(model=net))
        model = net
    for path in paths:
        frames = decode_all(path)
        indices, _ = sample_frame_indices(len(frames), k)
        for i in indices:
            with torch.no_grad():
                model(preprocess(Image.fromarray(frames[i])).unsqueeze(0))


def naive_clip(name: str, extractor, paths: list[Path], k: int) -> None:
    """One clip at a time through torchvision's weights.transforms() and the model, as its docs show."""
    import torchvision.models as tvm

    transforms = tvm.get_model_weights(name).KINETICS400_V1.transforms()
    net = extractor.backbone.net
    length, stride = extractor.clip_length, extractor.clip_stride
    from vidcap.video.reader import clip_indices

    for path in paths:
        frames = decode_all(path)
        centres, _ = sample_frame_indices(len(frames), k)
        for clip in clip_indices(centres, len(frames), length, stride):
            video = torch.from_numpy(np.stack([frames[i] for i in clip])).permute(0, 3, 1, 2)  # (T, C, H, W)
            with torch.no_grad():
                net(transforms(video).unsqueeze(0))


def ceilings(names: list[str], steps: int) -> None:
    """Model-alone steps/s of each extractor on `steps` steps of one 320x240 video, vidcap extract's torch threads."""
    torch.set_num_threads(default_threads("cpu", 1, default_num_workers("cpu", 1)))
    print(f"before: {uptime()}")
    print(f"model alone, {torch.get_num_threads()} torch thread(s), {steps} steps per extractor")
    print("| extractor | width | input | clip | steps/s | frames into the network per s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        (path,) = make_videos(Path(tmp), 1, 10.0)
        for name in names:
            extractor = build_extractor(name, weights="random")
            x = torch.from_numpy(read_sampled_frames(path, steps, requests={"x": extractor.request}).inputs["x"])
            extractor.extract(x[:1])  # warm-up
            seconds = timed(lambda e=extractor, x=x: e.extract(x, steps))
            frames = steps * extractor.request.frames_per_step
            print(f"| {name} | {extractor.dim} | {extractor.image_size}px | {extractor.clip_length}x"
                  f"{extractor.clip_stride} | {steps / seconds:.2f} | {frames / seconds:.1f} |", flush=True)
    print(f"after: {uptime()}")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--frames", type=int, default=26, help="K for global extractors")
    parser.add_argument("--local-frames", type=int, default=8, help="K for local (clip) extractors")
    parser.add_argument("--extractors", default="clip_vit_b32,timm:convnext_tiny,r2plus1d_18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="repeat each measurement; the median is reported")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of extract and ceiling (default: vidcap extract's own default)")
    parser.add_argument("--ceiling-only", type=int, default=0, metavar="STEPS",
                        help="only the model alone, on STEPS steps of one video, for every name in --extractors "
                        "(the docs' frames/s column for the large models)")
    args = parser.parse_args()
    if args.ceiling_only:
        ceilings(args.extractors.split(","), args.ceiling_only)
        return
    default_torch_threads = torch.get_num_threads()
    workers = default_num_workers("cpu", 1)
    threads = args.threads or default_threads("cpu", 1, workers)
    print(f"before: {uptime()}")
    chosen = "--threads" if args.threads else "vidcap extract's default"
    print(f"cpus={os.cpu_count()}; extract and ceiling: {threads} torch thread(s) ({chosen}), {workers} decoding "
          f"worker(s) (vidcap extract's default); naive: torch's default {default_torch_threads} thread(s)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data" / "videos").mkdir(parents=True)
        paths = make_videos(tmp / "data" / "videos", args.videos, args.seconds)
        with open(tmp / "data" / "videos.csv", "w", newline="") as f:
            csv.writer(f).writerows([["video_id", "split", "path"],
                                     *[(p.stem, "test", f"videos/{p.name}") for p in paths]])
        for name in args.extractors.split(","):
            spec = spec_for(name)
            k = args.frames if spec.kind == "global" else args.local_frames
            steps = k * len(paths)
            torch.set_num_threads(threads)
            extractor = build_extractor(name, weights="random")
            inputs = [read_sampled_frames(p, k, requests={"x": extractor.request}).inputs["x"] for p in paths]
            stacked = torch.from_numpy(np.concatenate(inputs))
            extractor.extract(stacked[:2], args.batch_size)  # warm-up (oneDNN primitives)
            times: dict[str, list[float]] = {"extract": [], "ceiling": [], "naive": []}
            for r in range(args.rounds):
                torch.set_num_threads(threads)
                names = {"global_name": name} if spec.kind == "global" else {"local_name": name}
                options = ExtractOptions(**names, num_frames=k, batch_size=args.batch_size, threads=threads,
                                         global_weights="random", local_weights="random")
                store = tmp / f"feats_{name.replace(':', '_')}_{r}"
                times["extract"].append(timed(lambda s=store, o=options: run_extract(tmp / "data", s, o,
                                                                                     progress=False)))
                times["ceiling"].append(timed(lambda e=extractor, x=stacked: e.extract(x, args.batch_size)))
                torch.set_num_threads(default_torch_threads)
                naive = naive_global if spec.kind == "global" else naive_clip
                times["naive"].append(timed(lambda n=naive, a=(name, extractor, paths, k): n(*a)))
            rate = {key: steps / statistics.median(values) for key, values in times.items()}
            rows.append((name, spec.kind, k, rate))
            print(f"{name}: extract {rate['extract']:.2f} steps/s, ceiling {rate['ceiling']:.2f}, naive "
                  f"{rate['naive']:.2f} (raw seconds: " + ", ".join(f"{key}=" + "/".join(f"{v:.1f}" for v in vals)
                                                            for key, vals in times.items()) + ")", flush=True)
    print()
    print("| extractor | kind | K | extract steps/s | share of ceiling | naive steps/s | extract / naive |")
    print("|---|---|---|---|---|---|---|")
    for name, kind, k, rate in rows:
        print(f"| {name} | {kind} | {k} | {rate['extract']:.2f} | {100 * rate['extract'] / rate['ceiling']:.0f}% | "
              f"{rate['naive']:.2f} | {rate['extract'] / rate['naive']:.2f}x |")
    print(f"after: {uptime()}")


if __name__ == "__main__":
    main()
