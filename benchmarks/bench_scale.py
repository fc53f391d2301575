"""Benchmark of issue 15 (LSMDC-size on one machine): does every stage's cost grow about linearly with the clips?

    python benchmarks/bench_scale.py [--sizes 10000,40000,118000 | --quick] [--stages prepare,store,setup]
                                     [--root /tmp] [--keep]

Generates an LSMDC-size dataset in a temporary folder under --root (deleted at the end unless --keep):
- LSMDC16_annos_{training,val,test,blindtest}.csv in the real format (tab-separated, no header, six columns, five
  for the blind test; ids like `3001_21_JUMP_STREET_00.02.55.644-00.02.56.718`), about 590 clips per movie, movies
  split 77 / 6 / 8.5 / 8.5 % into training / val / test / blindtest (at 118k clips: ~200 movies, 10k test clips), 18.5 %
  of the captioned clips with a second sentence (118k clips, ~128k sentences), English-like sentences about
  "SOMEONE" over a Zipf-distributed lexicon of 30k words. Each size is a prefix of the next (the same first movies).
- An empty placeholder file per clip under VIDEOS/<MOVIE>/: `vidcap prepare lsmdc` keeps only the clips whose video
  file exists (one listing per movie folder), so the files must be there; nothing reads them.
- A feature store written through vidcap.features.store.save_features (so through vidcap.atomic, fsync included): K = 26,
  global googlenet 1024-d + local x3d_m 2048-d, float16 (160 KB per clip, 19 GB at 118k clips), random numbers
  (a pool of 16 random clips, so that generating them does not dominate; npz is uncompressed, the bytes do not
  matter). It grows with the sizes: the clips of the next size are added to the same store.

Every measured stage runs in a fresh subprocess (`--child`) after the same imports; its memory is its peak RSS minus
its RSS before it starts (the peak is reset then: /proc/self/clear_refs); the JVMs it starts are sampled from /proc
every 0.2 s.
- prepare: `vidcap.datasets.prepare("lsmdc", ...)` (reading, one PTB tokenizer JVM, vocabulary, tables).
- store: list the store, read meta.json, check it against videos.csv, rebuild manifest.csv.
- setup: `CaptionDataModule(...).setup("fit")` with configs/data/lsmdc.yaml's data options.
- loader: samples/s of the train loader (lsmdc.yaml's batch size and workers) after a warm-up, with the store first
  evicted from the page cache (posix_fadvise DONTNEED on every feature file: a cold first epoch); then
- model: samples/s of `CaptionModule.training_step` + backward + clipping + Adam on batches of that loader, default
  model sizes (E 256, H 512, A 256, local_global + position encoder), `--threads` CPU threads.
- evaluate: `vidcap.evaluation.evaluate` on the test split, beam 5, with a tiny random-init checkpoint (E 32, H 64,
  A 32; random weights seldom pick EOS, so every caption has the decoder's 30 words: a worst case for METEOR),
  coco-caption metrics through vidcap.text.metrics.score_captions (also timed on its own).
--stages runs only some of them (with the ones they need: prepare before every other, setup before loader, loader
before model). Prints one table: each stage's time, memory or rate at each size; the cost per extra clip (the slope from the
smallest to the largest size, so that fixed costs such as a JVM's start stay out); and the growth from the smallest
to the largest size next to the growth of the clips it works on ("linear"). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import vidcap.text.metrics
from vidcap.datasets import prepare, read_videos, registry
from vidcap.evaluation import evaluate
from vidcap.features.store import (
    FORMAT,
    feature_path,
    list_features,
    prepare_store,
    read_meta,
    save_features,
    write_manifest,
)
from vidcap.model.captioner import ModelConfig
from vidcap.model.checkpoint import read_decoding, with_overrides
from vidcap.text.vocab import Vocabulary
from vidcap.training.data import CaptionDataModule
from vidcap.training.lightning_cli import TRAINER_DEFAULTS
from vidcap.training.module import CaptionModule
from vidcap.video.reader import SAMPLING_RULE

REPO = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "store", "setup", "loader", "model", "evaluate")
NEEDS = {"store": "prepare", "setup": "prepare", "loader": "setup", "model": "loader", "evaluate": "prepare"}
DATA_CONFIG = REPO / "configs" / "data" / "lsmdc.yaml"
SEED = 15
FRAMES = 26
GLOBAL = ("googlenet", 1024)
LOCAL = ("x3d_m", 2048)
CLIPS_PER_MOVIE = 590
# annotation file part -> share of the movies (the real LSMDC16 split, about 101k / 7.4k / 10k / 9.6k clips)
SHARES = {"training": 0.77, "val": 0.06, "test": 0.085, "blindtest": 0.085}
SECOND_SENTENCE = 0.185
LEXICON_SIZE = 30_000
TITLE_WORDS = ("21", "JUMP", "STREET", "BAD", "SANTA", "HARRY", "POTTER", "SOCIAL", "NETWORK", "BIG", "FISH", "ZOMBIE",
               "LAND", "THE", "HELP", "NIGHT", "DAY", "LOVE", "ACTUALLY", "GIRL", "WITH", "DRAGON", "TATTOO", "RUBY")
COMMON_WORDS = ("the", "a", "his", "her", "to", "of", "and", "in", "at", "on", "up", "out", "back", "into", "with",
                "from", "down", "looks", "turns", "walks", "stares", "smiles", "takes", "door", "room", "car", "away",
                "gets", "sits", "stands", "holds", "puts", "hand", "face", "eyes", "over", "around", "off", "through")


# ---------------------------------------------------------------------------------------------------------------
# The generated dataset


def movie_parts(count: int) -> list[str]:
    """The annotation file part of each of the first `count` movies: every prefix is split close to SHARES (the
    part furthest behind its share takes the next movie)."""
    given = dict.fromkeys(SHARES, 0)
    parts = []
    for i in range(count):
        part = max(SHARES, key=lambda p: SHARES[p] * (i + 1) - given[p])
        given[part] += 1
        parts.append(part)
    return parts


def movie_name(i: int, rng: np.random.Generator) -> str:
    """M-VAD (3xxx) and MPII-MD (0xxx/1xxx) movies alternate."""
    number = 3001 + i // 2 if i % 2 == 0 else 1 + i // 2
    return f"{number:04d}_" + "_".join(rng.choice(TITLE_WORDS, rng.integers(1, 4)))


def timestamp(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}.{ms // 60_000 % 60:02d}.{ms // 1000 % 60:02d}.{ms % 1000:03d}"


class Sentences:
    """English-like sentences about SOMEONE: Zipf-distributed words (common words first, then pseudo-words)."""

    def __init__(self) -> None:
        rng = np.random.default_rng(SEED)
        syllables = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
        words = dict.fromkeys(COMMON_WORDS)
        while len(words) < LEXICON_SIZE:
            words.setdefault("".join(rng.choice(syllables, rng.integers(1, 4))))
        self.words = np.array(list(words))
        weights = 1.0 / np.arange(1, LEXICON_SIZE + 1) ** 1.05
        self.cumulative = np.cumsum(weights / weights.sum())

    def sample(self, rng: np.random.Generator) -> str:
        picked = self.words[np.minimum(np.searchsorted(self.cumulative, rng.random(rng.integers(3, 14))),
                                       LEXICON_SIZE - 1)]
        words = ["SOMEONE", *picked]
        if rng.random() < 0.3:
            words.insert(int(rng.integers(2, len(words) + 1)), rng.choice(["and SOMEONE", ", SOMEONE's", "as SOMEONE"]))
        return " ".join(words).replace(" ,", ",") + "."


def generate(root: Path, clips: int, per_movie: int = CLIPS_PER_MOVIE) -> dict[str, int]:
    """Write root/annotations/LSMDC16_annos_*.csv for the first `clips` clips (`per_movie` clips per movie) and the
    placeholder videos still missing under root/videos. Returns counts: clips per file part, sentences, placeholders
    created."""
    sentences = Sentences()
    movies = -(-clips // per_movie)
    rows: dict[str, list[str]] = {part: [] for part in SHARES}
    counts = {f"clips_{part}": 0 for part in SHARES} | {"sentences": 0, "placeholders": 0}
    for i, part in enumerate(movie_parts(movies)):
        rng = np.random.default_rng((SEED, i))  # a movie is the same at every size
        movie = movie_name(i, rng)
        folder = root / "videos" / movie
        folder.mkdir(parents=True, exist_ok=True)
        present = set(os.listdir(folder))
        start = float(rng.uniform(60, 300))
        for _ in range(min(per_movie, clips - i * per_movie)):
            end = start + float(rng.uniform(1, 12))
            clip = f"{movie}_{timestamp(start)}-{timestamp(end)}"
            times = [timestamp(start), timestamp(end), timestamp(max(start - 0.5, 0)), timestamp(end + 0.5)]
            if part == "blindtest":
                rows[part].append("\t".join([clip, *times]))
            else:
                for _ in range(1 + (rng.random() < SECOND_SENTENCE)):
                    rows[part].append("\t".join([clip, *times, sentences.sample(rng)]))
                    counts["sentences"] += 1
            if f"{clip}.avi" not in present:
                (folder / f"{clip}.avi").touch()
                counts["placeholders"] += 1
            counts[f"clips_{part}"] += 1
            start = end + float(rng.uniform(0, 5))
    (root / "annotations").mkdir(exist_ok=True)
    for part, lines in rows.items():
        (root / "annotations" / f"LSMDC16_annos_{part}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return counts


def store_meta() -> dict:
    def describe(kind: str, name: str, dim: int) -> dict:
        return {"name": name, "kind": kind, "dim": dim, "image_size": 224 if kind == "global" else 256,
                "clip_length": 1 if kind == "global" else 16, "clip_stride": 1 if kind == "global" else 5,
                "weights": "random"}

    return {"format": FORMAT, "num_frames": FRAMES, "dtype": "float16",
            "sampling": {"rule": SAMPLING_RULE, "num_frames": FRAMES},
            "global": describe("global", *GLOBAL), "local": describe("local", *LOCAL), "versions": {}}


def grow_store(store: Path, video_ids: list[str]) -> int:
    """Add features for every id of `video_ids` not in the store yet (vidcap.features.store.save_features); how many."""
    prepare_store(store, store_meta())
    rng = np.random.default_rng(SEED)
    pool = [(rng.standard_normal((FRAMES, GLOBAL[1])).astype(np.float16),
             rng.standard_normal((FRAMES, LOCAL[1])).astype(np.float16)) for _ in range(16)]
    mask, times = np.ones(FRAMES, bool), np.linspace(0, 5, FRAMES, dtype=np.float32)
    added = 0
    for n, video_id in enumerate(video_ids):
        if not feature_path(store, video_id).exists():
            g, loc = pool[n % len(pool)]
            save_features(store, video_id, {"global": g, "local": loc, "mask": mask, "times": times})
            added += 1
    return added


# ---------------------------------------------------------------------------------------------------------------
# The measured stages (each in its own subprocess)


def _status_mb(key: str) -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def reset_peak() -> float:
    """Reset this process's peak RSS (VmHWM) to its current RSS, which is returned (MB; Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def peak_mb() -> float:
    return _status_mb("VmHWM")


def data_options() -> dict:
    return yaml.safe_load(DATA_CONFIG.read_text())["data"]


def stage_prepare(root: Path, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    report = prepare("lsmdc", annotations=str(root / "annotations"), videos=str(root / "videos"),
                     out=str(root / "data"))
    return {"time": time.perf_counter() - start, "captions": report["captions_kept"], "vocab": report["vocab_size"]}


def stage_store(root: Path, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    read_meta(root / "feats")
    have = set(list_features(root / "feats"))
    want = set(read_videos(root / "data")["video_id"])
    ok, failed = write_manifest(root / "feats")
    return {"time": time.perf_counter() - start, "missing": len(want - have), "extra": len(have - want), "ok": ok}


def evict(store: Path) -> None:
    """Drop the store's feature files from the page cache (no root needed), so that the loader reads the disk."""
    for entry in os.scandir(store / "features"):
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _children() -> list[str]:
    return [pid for task in os.listdir("/proc/self/task")
            for pid in Path(f"/proc/self/task/{task}/children").read_text().split()]


def _proc_kb(pid: str, file: str, keys: tuple[str, ...]) -> int:
    try:
        lines = Path(f"/proc/{pid}/{file}").read_text().splitlines()
    except OSError:  # exited meanwhile
        return 0
    return sum(int(line.split()[1]) for line in lines if line.startswith(keys))


class JavaMemory:
    """The largest total RSS of this process's java children (the JVMs), sampled every 0.2 s while in the block.
    (getrusage's RUSAGE_CHILDREN would also count a forked child's copy of this process before it execs.)"""

    def __enter__(self) -> JavaMemory:
        self.peak_mb, self._done = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            java = [pid for pid in _children() if _proc_name(pid) == "java"]
            self.peak_mb = max(self.peak_mb, sum(_proc_kb(pid, "status", ("VmRSS:",)) for pid in java) / 1024)

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()


def _proc_name(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def stage_setup(root: Path, args: argparse.Namespace) -> dict:
    """setup time and memory, then (--stages) the train loader's throughput, then the model's training step on its
    batches."""
    options = {**data_options(), "num_workers": args.workers if args.workers is not None else data_options()["num_workers"]}
    dm = CaptionDataModule(str(root / "data"), str(root / "feats"), **options)
    base = reset_peak()
    start = time.perf_counter()
    dm.setup("fit")
    out = {"time": time.perf_counter() - start, "setup_mb": peak_mb() - base,
           "train_items": len(dm.datasets["train"]), "workers": options["num_workers"]}
    if "loader" not in args.stages:
        return out

    evict(root / "feats")
    # The workers start together and deliver their first batches in a burst: time from after the burst.
    warmup = max(args.warmup, 2 * options["num_workers"])
    loader, batches, kept = iter(dm.train_dataloader()), [], []
    for n in range(warmup + args.batches):
        if n == warmup:
            start = time.perf_counter()
        batch = next(loader)
        batches.append(len(batch["targets"]))
        if len(kept) < args.warmup + args.model_batches:
            kept.append(batch)
    out["loader_sps"] = sum(batches[warmup:]) / (time.perf_counter() - start)
    del loader  # stops the workers before the model is timed
    if "model" not in args.stages:
        return out

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=dm.vocab_size, global_dim=dm.global_dim, local_dim=dm.local_dim,
                         max_frames=dm.num_frames)
    module = CaptionModule(config, caption_metrics=False, vocab=dm.vocab.to_dict(), feature_meta=dm.feature_meta)
    optimizer = module.configure_optimizers()
    samples = 0
    for n, batch in enumerate(kept):
        if n == args.warmup:
            start, samples = time.perf_counter(), 0
        loss = module.training_step(batch, n)  # self.log without a Trainer: a warning, nothing logged
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), TRAINER_DEFAULTS["gradient_clip_val"])
        optimizer.step()
        samples += len(batch["targets"])
    out["model_sps"] = samples / (time.perf_counter() - start)
    out["threads"] = torch.get_num_threads()
    return out


def tiny_checkpoint(root: Path) -> Path:
    """A random-init CaptionModule (E 32, H 64, A 32) saved as `vidcap fit` would (state_dict + "vidcap")."""
    torch.manual_seed(0)
    vocab = Vocabulary.load(root / "data" / "vocab.json")
    config = ModelConfig(vocab_size=len(vocab), global_dim=GLOBAL[1], local_dim=LOCAL[1], max_frames=FRAMES,
                         embed_dim=32, hidden_dim=64, attention_dim=32)
    module = CaptionModule(config, vocab=vocab.to_dict(), feature_meta=read_meta(root / "feats"))
    path = root / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "vidcap": module.vidcap_metadata(),
                "datamodule_hyper_parameters": {"max_caption_len": data_options()["max_caption_len"]}}, path)
    return path


def stage_evaluate(root: Path, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    scoring = {}
    score_captions = vidcap.text.metrics.score_captions

    def timed(references, predictions, **kwargs):  # the LightningModule imports it at call time: this wrapper is seen
        start = time.perf_counter()
        result = score_captions(references, predictions, **kwargs)
        scoring["time"] = time.perf_counter() - start
        scoring["words"] = sum(len(p.split()) for p in predictions.values()) / len(predictions)
        return result

    vidcap.text.metrics.score_captions = timed
    checkpoint = tiny_checkpoint(root)
    start = time.perf_counter()
    beam5 = with_overrides(read_decoding(checkpoint), beam_size=5)
    result = evaluate(checkpoint, root / "data", root / "feats", beam5, split="test", progress=False)
    return {"time": time.perf_counter() - start, "clips": len(result.predictions), "score_time": scoring["time"],
            "words": scoring["words"], "METEOR": result.metrics["METEOR"]}


def run_child(stage: str, root: Path, args: argparse.Namespace) -> dict:
    """Run `stage` in a fresh interpreter; its result plus the peak memory of it and of its largest child."""
    cmd = [sys.executable, __file__, "--child", stage, "--root", str(root), "--threads", str(args.threads),
           "--batches", str(args.batches), "--warmup", str(args.warmup), "--model-batches", str(args.model_batches),
           "--stages", ",".join(args.stages)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    log = root / f"{stage}.log"
    with log.open("ab") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"stage {stage} failed (exit {done.returncode}); its log: {log}\n"
                 + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return json.loads(done.stdout.decode().splitlines()[-1])


def child_main(stage: str, root: Path, args: argparse.Namespace) -> None:
    registry()  # imports every dataset module: a stage's memory is its peak minus this baseline
    base = reset_peak()
    stages = {"prepare": stage_prepare, "store": stage_store, "setup": stage_setup, "evaluate": stage_evaluate}
    with JavaMemory() as java:
        out = stages[stage](root, args)
    print(json.dumps({"memory_mb": peak_mb() - base, "java_mb": java.peak_mb, **out}))


# ---------------------------------------------------------------------------------------------------------------
# The table


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def print_table(sizes: list[int], results: dict[int, dict], stages: list[str], setting: str) -> None:
    """Rows of the stages run: stage, label, unit, value of one size's results, per-clip unit (None: a rate), which
    clips it scales with."""
    rows = [
        ("prepare", "vocabulary (min count 2)", "words", lambda r: r["prepare"]["vocab"], None, "all"),
        ("prepare", "prepare", "s", lambda r: r["prepare"]["time"], "ms", "all"),
        ("prepare", "  memory, Python", "MB", lambda r: r["prepare"]["memory_mb"], "KB", "all"),
        ("prepare", "  PTB tokenizer JVM (RSS)", "MB", lambda r: r["prepare"]["java_mb"], "KB", "all"),
        ("write", "store write (setting up)", "s", lambda r: r["write_time"], "ms", "all"),
        ("store", "store list+check+manifest", "s", lambda r: r["store"]["time"], "ms", "all"),
        ("store", "  memory", "MB", lambda r: r["store"]["memory_mb"], "KB", "all"),
        ("setup", "setup('fit')", "s", lambda r: r["setup"]["time"], "ms", "all"),
        ("setup", "  memory", "MB", lambda r: r["setup"]["setup_mb"], "KB", "all"),
        ("loader", "loader, cold page cache", "samples/s", lambda r: r["setup"]["loader_sps"], None, "rate"),
        ("model", "model training step", "samples/s", lambda r: r["setup"]["model_sps"], None, "rate"),
        ("model", "loader / model", "x", lambda r: r["setup"]["loader_sps"] / r["setup"]["model_sps"], None, "rate"),
        ("evaluate", "evaluate: test clips", "clips", lambda r: r["evaluate"]["clips"], None, "test"),
        ("evaluate", "  decode + score", "s", lambda r: r["evaluate"]["time"], "ms", "test"),
        ("evaluate", "  of which score_captions", "s", lambda r: r["evaluate"]["score_time"], "ms", "test"),
        ("evaluate", "  memory, Python", "MB", lambda r: r["evaluate"]["memory_mb"], "KB", "test"),
        ("evaluate", "  METEOR / PTB JVM (RSS)", "MB", lambda r: r["evaluate"]["java_mb"], "KB", "test"),
    ]
    ran = {*stages, "write"} if "write_time" in results[sizes[0]] else set(stages)
    clips = {"all": sizes, "rate": [1] * len(sizes)}
    if "evaluate" in ran:
        clips["test"] = [results[s]["evaluate"]["clips"] for s in sizes]
    print(f"\n{setting}")
    print(f"{'stage':<28}{'unit':>10}" + "".join(f"{s:>10,}" for s in sizes)
          + f"{'per clip':>12}{'growth':>9}{'linear':>9}")
    for stage, label, unit, value, per, scale in rows:
        if stage not in ran:
            continue
        values = [value(results[s]) for s in sizes]
        n = clips[scale]
        # the slope from the smallest to the largest size: fixed costs (JVM start, imports) left out
        per_clip = f"{(values[-1] - values[0]) / (n[-1] - n[0]) * 1000:.3g} {per}" if per and n[-1] > n[0] else ""
        growth = values[-1] / values[0] if values[0] else float("nan")
        # a cost growing 25 % faster than the clips, or a rate falling by a quarter, is flagged
        flag = "  <- not linear" if (growth > 1.25 * n[-1] / n[0] if per else growth < 0.75 and scale == "rate") else ""
        print(f"{label:<28}{unit:>10}" + "".join(f"{_fmt(v):>10}" for v in values)
              + f"{per_clip:>12}{growth:>8.2f}x{n[-1] / n[0]:>8.2f}x{flag}")
    if "model" in ran:
        ratio = min(results[s]["setup"]["loader_sps"] / results[s]["setup"]["model_sps"] for s in sizes)
        print(f"loader / model at least {ratio:.1f}x at every size (target: 3x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,40000,118000", help="clip counts, comma-separated")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: --sizes 2000,4000 --clips-per-movie 50 --batches 10 --model-batches 3")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"stages to run, comma-separated, of {','.join(STAGES)} (default: all); the ones they "
                             "need run too")
    parser.add_argument("--clips-per-movie", type=int, default=CLIPS_PER_MOVIE)
    parser.add_argument("--root", default=None, help="parent of the temporary folder (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: configs/data/lsmdc.yaml)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for the model and evaluate")
    parser.add_argument("--batches", type=int, default=40, help="loader batches timed")
    parser.add_argument("--model-batches", type=int, default=6, help="training steps timed")
    parser.add_argument("--warmup", type=int, default=2, help="batches / steps not timed first")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    asked = [stage.strip() for stage in args.stages.split(",") if stage.strip()]
    unknown = sorted(set(asked) - set(STAGES))
    if unknown or not asked:
        parser.error(f"--stages: unknown stage(s) {', '.join(unknown) or '(none given)'} (of {', '.join(STAGES)})")
    for stage in reversed(STAGES):  # each stage's needs come before it in STAGES
        if stage in asked and stage in NEEDS:
            asked.append(NEEDS[stage])
    args.stages = [stage for stage in STAGES if stage in asked]
    if args.child:
        child_main(args.child, Path(args.root), args)
        return
    if args.quick:
        args.sizes, args.clips_per_movie, args.batches, args.model_batches = "2000,4000", 50, 10, 3
    sizes = sorted(int(s) for s in args.sizes.split(","))

    began = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="vidcap-bench-scale-", dir=args.root))
    results: dict[int, dict] = {}
    try:
        for size in sizes:
            load = os.getloadavg()[0]
            start = time.perf_counter()
            counts = generate(root, size, args.clips_per_movie)
            generated = time.perf_counter() - start
            shutil.rmtree(root / "data", ignore_errors=True)
            result = {"load": load, "counts": counts, "prepare": run_child("prepare", root, args)}
            added = 0
            if {"store", "setup", "evaluate"} & set(args.stages):
                start = time.perf_counter()
                added = grow_store(root / "feats", list(read_videos(root / "data")["video_id"]))
                result["write_time"] = time.perf_counter() - start
            for stage in ("store", "setup", "evaluate"):
                if stage in args.stages:
                    result[stage] = run_child(stage, root, args)
            results[size] = result
            print(f"{size:,} clips: generated in {generated:.1f} s; {added} feature files added in "
                  f"{result.get('write_time', 0):.1f} s; {json.dumps(result)}", file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    last = results[sizes[-1]]
    counts = ", ".join(f"{part} {last['counts'][f'clips_{part}']:,}" for part in SHARES)
    lines = [
        f"{sizes[-1]:,} clips ({counts}), {last['counts']['sentences']:,} sentences, vocabulary "
        f"{last['prepare']['vocab']:,}; K={FRAMES}, {GLOBAL[0]} {GLOBAL[1]}-d + {LOCAL[0]} {LOCAL[1]}-d float16 "
        f"({FRAMES * (GLOBAL[1] + LOCAL[1]) * 2 / 1024:.0f} KB/clip, {sizes[-1] * FRAMES * (GLOBAL[1] + LOCAL[1]) * 2 / 1e9:.1f} GB)"
    ]
    runs = []
    if "loader" in args.stages:
        runs.append(f"loader: batch {data_options()['batch_size']}, {last['setup']['workers']} workers")
    if "model" in args.stages:
        runs.append(f"model: default sizes (E 256, H 512, A 256, local_global), {last['setup']['threads']} thread(s)")
    if "evaluate" in args.stages:
        runs.append(f"evaluate: beam 5, tiny random-init checkpoint, {last['evaluate']['words']:.0f} words per caption")
    if runs:
        lines.append("; ".join(runs))
    lines.append(f"{os.cpu_count()} CPUs; load average (1 min) at the start of each size: "
                 + ", ".join(f"{results[s]['load']:.2f}" for s in sizes) + f"; {time.perf_counter() - began:.0f} s in all")
    print_table(sizes, results, args.stages, "\n".join(lines))


if __name__ == "__main__":
    main()
