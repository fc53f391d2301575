"""`vidcap extract`: videos listed in DIR/videos.csv -> a feature store (global 2-D and/or local clip features)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

HELP = "extract per-frame global (2-D CNN) and per-clip local features of every video into a feature store"
EXAMPLE = """
  vidcap extract --data data/msvd --out feats/msvd_lite0 --global efficientnet_lite0
  vidcap extract --data data/msvd --out feats/msvd_x3d --global googlenet --local x3d_m --device cuda --devices 4
  vidcap extract --data data/synth --out feats/synth --global efficientnet_lite0 \\
      --local frame_delta_efficientnet_lite0 --frames 26

  torchrun --nnodes 2 --node-rank 0 --nproc-per-node 4 --master-addr HOST0 --master-port 29500 \
      -m vidcap extract --data data/msvd --out /shared/feats/msvd --global googlenet --device cuda
  srun --nodes 2 --ntasks-per-node 4 --gpus-per-node 4 vidcap extract ... --device cuda
  vidcap extract --data data/webvid --out /shared/feats/webvid --global googlenet --store shards \\
      --engine ray --ray-address auto --device cuda --devices 8

A rerun skips finished videos (resume after a crash or kill) and extracts again those whose feature file fails
its recorded checksum (`vidcap verify FEATS` lists them); videos that fail are listed in FEATS/manifest.csv and
tried again next time. A decoding worker that hangs (--worker-timeout) or dies ends the run with one line naming
its video (exit 1); what finished is kept. Under torchrun or srun every process extracts its own share of the videos
into the shared --out folder (one GPU each; leave --devices out); manifest.csv's writer column names the process of
each video. With --store shards, --devices N, torchrun, srun and --engine ray each give processes whole shards.
"""


def _split_names(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give split names, e.g. train,val,test")
    return names


def _extractor_name(kind: str, names: list[str]):
    """argparse type of --global/--local: a registry name of that kind, or (global) timm:<model>, checked against
    timm's model list when the options are (ExtractOptions.checked)."""

    def parse(text: str) -> str:
        if text in names or (kind == "global" and text.startswith("timm:") and len(text) > len("timm:")):
            return text
        scheme = ", or timm:<model>" if kind == "global" else ""
        raise argparse.ArgumentTypeError(f"unknown {kind} extractor {text!r}; choose from {', '.join(names)}{scheme}")

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags whose dest is an ExtractOptions field fill that field (run() copies them by name); their defaults and
    choices are ExtractOptions', DTYPES, DEVICES and vidcap.video.reader.BACKENDS."""
    from vidcap.features.extractors import describe_registry, extractor_names
    from vidcap.features.options import DEVICES, DTYPES, ENGINES, STORES, WORKER_TIMEOUT, ExtractOptions
    from vidcap.video.reader import BACKENDS

    default = ExtractOptions()

    parser.formatter_class = argparse.RawTextHelpFormatter
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset folder with videos.csv (vidcap prepare)")
    parser.add_argument("--out", required=True, metavar="FEATS", help="feature store folder (created or resumed)")
    parser.add_argument(
        "--global", dest="global_name", metavar="NAME", type=_extractor_name("global", extractor_names("global")),
        help="frame extractor (efficientnet_lite0 is the offline default):\n" + describe_registry("global"),
    )
    parser.add_argument(
        "--local", dest="local_name", metavar="NAME", type=_extractor_name("local", extractor_names("local")),
        help="local (clip) extractor:\n" + describe_registry("local"),
    )
    parser.add_argument("--frames", dest="num_frames", type=int, default=default.num_frames, metavar="K",
                        help=f"frames sampled per video (default {default.num_frames})")
    parser.add_argument("--batch-size", type=int, default=default.batch_size, metavar="N",
                        help=f"frames (or clips) per forward pass, across videos (default {default.batch_size})")
    parser.add_argument("--num-workers", type=int, default=default.num_workers, metavar="N",
                        help="decoding workers per process (default: 1 on CPU, up to 8 per GPU)")
    parser.add_argument("--threads", type=int, default=default.threads, metavar="N",
                        help="torch threads per process (default: its share of the cores minus one per\n"
                        "decoding worker)")
    parser.add_argument("--decoder-threads", type=int, default=default.decoder_threads, metavar="N",
                        help="threads of each video decoder (default: the process's share of the cores divided\n"
                        "among its decoding workers)")
    parser.add_argument("--worker-timeout", type=float, default=default.worker_timeout, metavar="SECONDS",
                        help="stop with an error naming the video when a decoding worker delivers nothing for\n"
                        f"this long, its start-up included (default {WORKER_TIMEOUT:g}; needs --num-workers >= 1)")
    parser.add_argument("--device", choices=DEVICES, default=default.device,
                        help=f"where the networks run (default {default.device})")
    parser.add_argument("--devices", type=int, default=default.devices, metavar="N",
                        help="processes: one per GPU with --device cuda, or N CPU processes (default "
                        f"{default.devices};\nunder torchrun or srun, the processes the launcher started)")
    weights_help = ("pretrained (the library's own download: torch hub cache for torchvision/pytorchvideo, Hugging\n"
                    "Face Hub cache for open_clip/timm; offline and not cached: exit 2 naming the file), random\n"
                    "(seeded), or PATH to a state_dict (torch.save or .safetensors) (default {})")
    parser.add_argument("--global-weights", default=default.global_weights, metavar="W",
                        help=weights_help.format(default.global_weights))
    parser.add_argument("--local-weights", default=default.local_weights, metavar="W",
                        help=weights_help.format(default.local_weights))
    parser.add_argument("--global-size", type=int, default=None, metavar="PX",
                        help="input size of the global extractor (default: its own, e.g. 224)")
    parser.add_argument("--local-size", type=int, default=None, metavar="PX",
                        help="input size of the local extractor (default: its own, e.g. 182 for x3d_xs)")
    parser.add_argument("--split", dest="splits", type=_split_names, default=default.splits, metavar="S[,S]",
                        help="only these splits of videos.csv, e.g. train,val,test (default: all)")
    parser.add_argument("--dtype", choices=DTYPES, default=default.dtype,
                        help=f"stored feature type (default {default.dtype})")
    parser.add_argument("--backend", choices=BACKENDS, default=default.backend,
                        help=f"video decoder (default {default.backend}: decord where it returns the right frames\n"
                        "and samples faster (VP9, MJPEG), PyAV elsewhere and whenever decord fails)")
    parser.add_argument("--amp", action="store_true",
                        help="bf16 autocast and TF32 on CUDA: faster, features ~1e-2 relative off float32's;\n"
                        "recorded in meta.json, and a store never mixes the two (default: float32, TF32 off)")
    parser.add_argument("--store", choices=STORES, default=default.store,
                        help=f"store layout: one .npz per video, or webdataset tar shards for big data\n"
                        f"(docs/sharded.md; default {default.store})")
    parser.add_argument("--shard-size", type=int, default=default.shard_size, metavar="N",
                        help=f"videos per shard with --store shards (default {default.shard_size})")
    parser.add_argument("--engine", choices=ENGINES, default=default.engine,
                        help="local: this process (--devices, torchrun, srun); ray: decoding tasks and an\n"
                        f"actor per device on a Ray cluster, with --store shards (default {default.engine})")
    parser.add_argument("--ray-address", default=default.ray_address, metavar="auto|HOST:PORT",
                        help="the Ray cluster of --engine ray (default: a local Ray on this machine's cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _report_failure(video_id: str, path: str, reason: str) -> None:
    # Module level so spawned processes can pickle it; tqdm.write keeps the progress bars intact.
    from tqdm import tqdm

    tqdm.write(f"skipping {path}: {reason}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from vidcap.features.extract import ExtractOptions, run_extract

    values = {f.name: getattr(args, f.name) for f in fields(ExtractOptions) if f.name != "image_sizes"}
    options = ExtractOptions(**values, image_sizes={"global": args.global_size, "local": args.local_size})
    summary = run_extract(args.data, args.out, options, progress=not args.no_progress, on_failure=_report_failure)
    if summary.rank != 0:  # under a launcher: rank 0 reports the whole run, every process exits with its code
        return 1 if summary.failed else 0
    rate = summary.extracted / summary.seconds if summary.seconds > 0 else 0.0
    repaired = f" ({summary.corrupt} of them to replace files that failed their checksum)" if summary.corrupt else ""
    print(
        f"{summary.store}: {summary.extracted} extracted{repaired}, {summary.skipped} already done, "
        f"{len(summary.failed)} failed, of {summary.total} videos ({summary.seconds:.1f} s, {rate:.2f} videos/s)"
    )
    if summary.failed:
        print(
            f"vidcap extract: {len(summary.failed)} of {summary.total} videos failed (reasons in "
            f"{summary.store / 'manifest.csv'}); rerun to retry them",
            file=sys.stderr,
        )
        return 1
    return 0
