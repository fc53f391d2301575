"""The GPU check of issues 15 and 17: run by hand on a machine with CUDA, prints one table with a PASS/FAIL/SKIP line
per check and exits 1 if any failed. Aims at under 5 minutes on one modern GPU.

    python benchmarks/gpu_check.py                      # on CUDA; prints "no CUDA device" and exits 0 without one
    python benchmarks/gpu_check.py --device cpu --quick  # the same script on the CPU, tiny sizes (its own test)

Checks, in order:
  extract     `vidcap extract` on generated videos (EfficientNet-Lite0, then X3D-XS from pytorchvideo, random
              weights) against the decode-only ceiling (the same DataLoader workers without the networks); videos/s,
              peak host and GPU memory, and meta.json's device/precision/TF32 record
  families    `vidcap extract` with clip_vit_b32 (open_clip, 224 px) and r2plus1d_18 (torchvision, 16-frame clips),
              random weights: frames (clips) per second and the share of the decode-only ceiling (CUDA only)
  overlap     features come back through pinned memory; the host hands a batch to the GPU and goes on (submitting a
              batch takes < 50% of computing it)
  fit         one epoch in bf16-mixed vs 32-true on those features: speed ratio, mean train loss within 2%
  step        training samples/s at the paper's sizes (E 468, H 3518, V 12k) in bf16-mixed vs 32-true, and the
              output projection with V padded to a multiple of 8 vs unpadded; GPU utilisation while it runs
  syncs       torch.cuda.set_sync_debug_mode("warn"): none in a training step, at most one per decoding step
  ddp         one epoch with DDP on every visible GPU (skipped with one)
  evaluate    `vidcap evaluate` on CUDA gives the CPU's captions and metrics (needs Java)
  caption     `vidcap caption --device cuda` gives the CPU's captions; seconds per video on each
  tests       pytest -m gpu tests/test_gpu.py
Nothing here has run on a GPU yet when this was written (no GPU was lent): the README's GPUs section keeps the record.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from pytorch_lightning import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass
class Row:
    check: str
    status: str  # PASS, FAIL or SKIP
    detail: str


@dataclass(frozen=True)
class Sizes:
    videos: int
    frames: int  # frames per generated video
    frame_size: int
    image_size: int  # extractor input size
    steps: int  # timed training steps at the paper's sizes
    hidden: int
    embed: int
    vocab: int
    batch: int = 64  # training-step batch (the paper's); the CPU test of this script uses a small one


FULL = Sizes(videos=160, frames=64, frame_size=112, image_size=112, steps=20, hidden=3518, embed=468, vocab=12_001)
QUICK = Sizes(videos=12, frames=32, frame_size=32, image_size=32, steps=2, hidden=64, embed=32, vocab=101)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Utilisation:
    """Samples GPU utilisation (%) in a thread while the block runs: torch.cuda.utilization (pynvml), else
    nvidia-smi; `mean` is None when neither is there."""

    def __init__(self, device: str):
        self.device, self.samples, self._stop = device, [], threading.Event()

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization())
        except Exception:  # noqa: BLE001 - pynvml missing or unsupported: fall back to nvidia-smi
            if shutil.which("nvidia-smi") is None:
                return None
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  f"--id={torch.cuda.current_device()}"], capture_output=True, text=True)
            return float(out.stdout.strip() or "nan")

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            value = self._read()
            if value is None:
                return
            self.samples.append(value)

    def __enter__(self) -> Utilisation:
        if self.device == "cuda":
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()

    @property
    def text(self) -> str:
        return f"GPU busy {statistics.mean(self.samples):.0f}%" if self.samples else "GPU utilisation n/a"


# --------------------------------------------------------------------------------------------------------------------
# The checks


def make_dataset(root: Path, sizes: Sizes) -> Path:
    from vidcap.datasets import prepare

    data = root / "data"
    prepare("synthetic", out=str(data), num_videos=sizes.videos, num_frames=sizes.frames, frame_size=sizes.frame_size,
            workers=4, no_progress=True)
    return data


def check_extract(data: Path, root: Path, device: str, sizes: Sizes) -> tuple[list[Row], Path]:
    from vidcap.features.extract import ExtractOptions, read_video_table, run_extract
    from vidcap.features.extractors import build_extractor
    from vidcap.features.shard import VideoDataset, decoding_loader

    rows, stores = [], {}
    items = read_video_table(data)
    for name, kind in (("efficientnet_lite0", "global"), ("x3d_xs", "local")):
        options = ExtractOptions(**{f"{kind}_name": name, f"{kind}_weights": "random"}, device=device,
                                 image_sizes={kind: sizes.image_size}).checked()
        extractor = build_extractor(name, weights="random", image_size=sizes.image_size)
        loader = decoding_loader(VideoDataset(items, {kind: extractor.request}, options), options)
        _, decode_seconds = timed(lambda loader=loader: sum(1 for _ in loader))
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        store = root / f"feats-{name}"
        summary, seconds = timed(lambda store=store, options=options: run_extract(data, store, options,
                                                                                  progress=False))
        gpu_peak = f", GPU peak {torch.cuda.max_memory_allocated() >> 20} MB" if device == "cuda" else ""
        host_peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                     + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) >> 10
        meta = json.loads((store / "meta.json").read_text())["compute"]
        ceiling, rate = len(items) / decode_seconds, summary.extracted / seconds
        ok = summary.extracted == len(items) and not summary.failed and meta["device"] == device
        ok = ok and meta["precision"] == "32-true" and meta["tf32"] is False
        rows.append(Row(f"extract {name}", "PASS" if ok else "FAIL",
                        f"{rate:.1f} videos/s = {rate / ceiling:.0%} of decode-only {ceiling:.1f}/s; host peak "
                        f"{host_peak} MB{gpu_peak}; meta {meta['device']}/{meta['precision']}/tf32={meta['tf32']}"))
        stores[kind] = store
    return rows, stores["global"]


def check_families(data: Path, root: Path, device: str) -> list[Row]:
    """The newer families on the GPU: with a fast network, decoding is the bottleneck, so the figure to watch is the
    share of the decode-only ceiling (the same DataLoader workers without the networks)."""
    if device != "cuda":
        return [Row("families", "SKIP", "CUDA only (bench_features.py measures the CPU)")]
    from vidcap.features.extract import ExtractOptions, read_video_table, run_extract
    from vidcap.features.extractors import build_extractor
    from vidcap.features.shard import VideoDataset, decoding_loader

    rows, items = [], read_video_table(data)
    for name, kind in (("clip_vit_b32", "global"), ("r2plus1d_18", "local")):
        options = ExtractOptions(**{f"{kind}_name": name, f"{kind}_weights": "random"}, device=device).checked()
        extractor = build_extractor(name, weights="random")
        loader = decoding_loader(VideoDataset(items, {kind: extractor.request}, options), options)
        _, decode_seconds = timed(lambda loader=loader: sum(1 for _ in loader))
        summary, seconds = timed(lambda name=name, options=options: run_extract(
            data, root / f"feats-{name}", options, progress=False))
        steps = summary.extracted * options.num_frames
        ok = summary.extracted == len(items) and not summary.failed
        rows.append(Row(f"families {name}", "PASS" if ok else "FAIL",
                        f"{steps / seconds:.0f} {'frames' if kind == 'global' else 'clips'}/s = "
                        f"{decode_seconds / seconds:.0%} of decode-only"))
    return rows


def check_overlap(device: str, sizes: Sizes) -> list[Row]:
    if device != "cuda":
        return [Row("overlap", "SKIP", "CUDA only (the CPU path makes no copies)")]
    from tests.helpers import batcher_item
    from vidcap.features.extractors import build_extractor
    from vidcap.features.shard import _Batcher, start_copy_to_host

    host, copied = start_copy_to_host(torch.ones(8, device="cuda"))
    copied.synchronize()
    extractor = build_extractor("x3d_xs", weights="random", device="cuda", image_size=160)
    x = torch.randint(0, 256, (64, 4, 3, 160, 160), dtype=torch.uint8).pin_memory()
    batcher = _Batcher({"local": extractor}, batch_size=64, device=torch.device("cuda"))
    for _ in range(2):  # the second round is timed (cudnn.benchmark and the allocator settle in the first)
        item = batcher_item("v", 0, 64)
        item.video.inputs = {"local": x}
        with torch.inference_mode():
            sync(device)
            start = time.perf_counter()
            batcher.add(item)
            batcher.run()
            submitted = time.perf_counter() - start
            batcher.finished(wait=True)
            total = time.perf_counter() - start
    ok = host.is_pinned() and submitted < 0.5 * total
    return [Row("overlap", "PASS" if ok else "FAIL", f"pinned={host.is_pinned()}; submitting a 64-clip batch took "
                f"{submitted * 1e3:.1f} ms of its {total * 1e3:.1f} ms")]


class EpochRecorder(Callback):
    """The training loss of every step, and the seconds the training epoch took."""

    def __init__(self):
        self.losses: list[float] = []
        self.seconds = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sync(pl_module.device.type)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sync(pl_module.device.type)
        self.seconds = time.perf_counter() - self._start


def fit_args(data: Path, store: Path, run: Path, device: str, precision: str, *extra: str) -> list[str]:
    return ["--config", str(REPO / "configs/data/synthetic.yaml"), "--config", str(REPO / "configs/experiment/demo.yaml"), "--data.data_dir", str(data),
            "--data.features_dir", str(store), "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "1",
            "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.accelerator", "gpu" if device == "cuda" else "cpu", "--trainer.precision", precision,
            "--model.architecture.embed_dim", "32", "--model.architecture.hidden_dim", "64",
            "--model.architecture.attention_dim", "32", *extra]


def check_fit(data: Path, store: Path, root: Path, device: str) -> tuple[list[Row], Path]:
    from vidcap.training.lightning_cli import run_lightning

    runs = {}
    for precision in ("32-true", "bf16-mixed"):
        losses = EpochRecorder()
        code = run_lightning("fit", fit_args(data, store, root / f"run-{precision}", device, precision),
                             callbacks=[losses])
        if code != 0:
            return [Row("fit", "FAIL", f"{precision}: exit code {code}")], root / "run-32-true"
        runs[precision] = losses
    fp32, bf16 = runs["32-true"], runs["bf16-mixed"]
    mean32, mean16 = statistics.mean(fp32.losses), statistics.mean(bf16.losses)
    agree = abs(mean16 - mean32) <= 0.02 * abs(mean32)
    return [Row("fit", "PASS" if agree else "FAIL",
                f"1 epoch: bf16-mixed {bf16.seconds:.1f} s vs 32-true {fp32.seconds:.1f} s "
                f"(speed x{fp32.seconds / bf16.seconds:.2f}); mean train loss {mean16:.4f} vs {mean32:.4f}")], \
        root / "run-bf16-mixed" / "checkpoints" / "last.ckpt"


def check_step(device: str, sizes: Sizes) -> list[Row]:
    """Training steps on random batches at the paper's sizes (T 26, L 20, 1280 + 2048-d features; batch 64 unless
    `sizes.batch` says otherwise)."""
    import vidcap.model.captioner
    from vidcap.model.captioner import ModelConfig
    from vidcap.training.module import CaptionModule

    B, T, L = sizes.batch, 26, 20
    config = ModelConfig(vocab_size=sizes.vocab, global_dim=1280, local_dim=2048, embed_dim=sizes.embed,
                         hidden_dim=sizes.hidden, attention_dim=512, max_frames=T)
    batch = {"global": torch.randn(B, T, 1280), "local": torch.randn(B, T, 2048),
             "mask": torch.ones(B, T, dtype=torch.bool), "inputs": torch.randint(4, sizes.vocab, (B, L)),
             "targets": torch.randint(4, sizes.vocab, (B, L)), "caption_video": torch.arange(B)}
    batch = {k: v.to(device) for k, v in batch.items()}
    results = {}
    for label, precision, multiple in (("32-true", "32-true", 8), ("bf16-mixed", "bf16-mixed", 8),
                                       ("bf16-mixed, V unpadded", "bf16-mixed", 1)):
        vidcap.model.captioner.VOCAB_MULTIPLE = multiple  # read by CaptionModel._output at each call; set back below
        module = CaptionModule(config).to(device)
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
        autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

        def step(module=module, optimizer=optimizer, autocast=autocast):
            with autocast, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # self.log without a Trainer
                loss = module.training_step(batch, 0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def steps(step=step) -> None:
            for _ in range(sizes.steps):
                step()
            sync(device)

        step()
        sync(device)
        with Utilisation(device) as busy:
            _, seconds = timed(steps)
        results[label] = (B * sizes.steps / seconds, busy.text)
    vidcap.model.captioner.VOCAB_MULTIPLE = 8
    text = "; ".join(f"{label} {rate:.0f} samples/s ({busy})" for label, (rate, busy) in results.items())
    return [Row("step (paper sizes)" if sizes.hidden == 3518 else "step (quick sizes)", "PASS", text)]


def check_syncs(device: str) -> list[Row]:
    if device != "cuda":
        return [Row("syncs", "SKIP", "CUDA only (torch.cuda.set_sync_debug_mode)")]
    from tests.test_gpu import beam_search_syncs, training_step_syncs
    from vidcap.model.decoding import DecodingOptions

    train = training_step_syncs()
    options = DecodingOptions(beam_size=5, max_len=20)
    beams, steps = beam_search_syncs(options)
    ok = train == 0 and beams <= options.max_len + 1
    return [Row("syncs", "PASS" if ok else "FAIL", f"bf16-mixed training step: {train}; beam search (K 5): {beams} "
                f"over up to {steps} steps (one copy of each step's top-k)")]


def check_ddp(data: Path, store: Path, root: Path, device: str) -> list[Row]:
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if gpus < 2:
        return [Row("ddp", "SKIP", f"{gpus} GPU(s) visible; DDP needs 2 or more")]
    args = fit_args(data, store, root / "run-ddp", device, "bf16-mixed", "--trainer.devices", "-1",
                    "--trainer.strategy", "ddp")
    (out, seconds) = timed(lambda: subprocess.run([sys.executable, "-m", "vidcap", "fit", *args], capture_output=True,
                                                  text=True))
    ok = out.returncode == 0 and (root / "run-ddp" / "checkpoints" / "last.ckpt").is_file()
    tail = "" if ok else ": " + " ".join(out.stderr.split()[-30:])
    return [Row("ddp", "PASS" if ok else "FAIL", f"{gpus} GPUs, 1 epoch bf16-mixed in {seconds:.1f} s{tail}")]


def check_evaluate(checkpoint: Path, data: Path, store: Path, device: str) -> list[Row]:
    from vidcap.evaluation import evaluate

    if device != "cuda":
        result, seconds = timed(lambda: evaluate(checkpoint, data, store, progress=False))
        return [Row("evaluate", "PASS", f"CPU only: CIDEr {result.metrics['CIDEr']:.4f} in {seconds:.1f} s")]
    cpu, cpu_s = timed(lambda: evaluate(checkpoint, data, store, progress=False))
    gpu, gpu_s = timed(lambda: evaluate(checkpoint, data, store, progress=False, accelerator="gpu"))
    same = gpu.predictions == cpu.predictions and all(abs(gpu.metrics[k] - cpu.metrics[k]) < 1e-4
                                                      for k in cpu.metrics)
    return [Row("evaluate", "PASS" if same else "FAIL", f"CUDA {gpu_s:.1f} s vs CPU {cpu_s:.1f} s; same captions "
                f"and metrics: {same} (CIDEr {gpu.metrics['CIDEr']:.4f})")]


def check_caption(checkpoint: Path, data: Path, device: str) -> list[Row]:
    from vidcap.caption import caption_video, load_captioner
    from vidcap.datasets import read_videos

    videos = [str(path) for path in read_videos(data)["path"][:4]]
    captions, seconds = {}, {}
    for where in dict.fromkeys((device, "cpu")):
        captioner = load_captioner(checkpoint, where)
        caption_video(videos[0], captioner)  # warm-up
        sync(where)
        captions[where], total = timed(lambda c=captioner: [caption_video(v, c).caption for v in videos])
        seconds[where] = total / len(videos)
    same = captions[device] == captions["cpu"]
    timing = ", ".join(f"{where} {s:.2f} s/video" for where, s in seconds.items())
    return [Row("caption", "PASS" if same else "FAIL", f"--device {device} gives the CPU's captions: {same}; {timing}")]


def check_tests(device: str) -> list[Row]:
    if device != "cuda":
        return [Row("tests", "SKIP", "pytest -m gpu needs CUDA")]
    out = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", str(REPO / "tests/test_gpu.py"), "-q",
                          "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr.strip()[-200:]
    return [Row("tests", "PASS" if out.returncode == 0 else "FAIL", f"pytest -m gpu tests/test_gpu.py: {last}")]


# --------------------------------------------------------------------------------------------------------------------


def print_table(rows: list[Row], header: str) -> None:
    width = max(len(r.check) for r in rows)
    print(header)
    print(f"| {'check':<{width}} | result | detail")
    print(f"|{'-' * (width + 2)}|--------|-------")
    for r in rows:
        print(f"| {r.check:<{width}} | {r.status:<6} | {r.detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for exercising the script itself)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temp one)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 0
    sizes = QUICK if args.quick else FULL
    if args.device == "cpu" and not args.quick:
        sizes = replace(FULL, steps=2)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as temp:
        root = args.keep or Path(temp)
        root.mkdir(parents=True, exist_ok=True)
        data = make_dataset(root, sizes)
        rows, store = check_extract(data, root, args.device, sizes)
        rows += check_families(data, root, args.device)
        rows += check_overlap(args.device, sizes)
        fit_rows, checkpoint = check_fit(data, store, root, args.device)
        rows += fit_rows
        rows += check_step(args.device, sizes)
        rows += check_syncs(args.device)
        rows += check_ddp(data, store, root, args.device)
        if checkpoint.is_file():
            rows += check_evaluate(checkpoint, data, store, args.device)
            rows += check_caption(checkpoint, data, args.device)
        rows += check_tests(args.device)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print_table(rows, f"gpu_check on {device}, torch {torch.__version__}, {time.perf_counter() - started:.0f} s"
                      f"{' (--quick)' if args.quick else ''}")
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
