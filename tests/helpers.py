"""What test modules share (never import one test module from another), including what spawned worker processes
must import by module name: tiny videos written with PyAV, and a shrink that stalls a decoding worker."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidcap.features.extractors.base import ResizeCrop
from vidcap.text.vocab import Vocabulary

REPO = Path(__file__).resolve().parents[1]
# `vidcap demo` at a tiny size (the `tiny_demo` fixture of tests/conftest.py): 12 videos (3 in the test split), a tiny
# model trained for 64 steps: long enough for captions with words of the references in them, so that the report's
# per-video scores differ.
TINY_DEMO = ["--num-videos", "12", "--image-size", "32", "--epochs", "8", "--max-steps", "64", "--hidden-dim", "32",
             "--embed-dim", "16", "--attention-dim", "16", "--batch-size", "8", "--beam-size", "2", "--workers", "1",
             "--quiet"]


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: int = 25,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
) -> Path:
    """Encode `frames` (N, H, W, 3) uint8 RGB to `path` with PyAV; the container comes from the suffix."""
    from vidcap.video.writer import write_frames

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_frames(path, np.asarray(frames, dtype=np.uint8), fps=fps, codec=codec, pix_fmt=pix_fmt,
                        options=options)


def numbered_frames(n: int, height: int = 64, width: int = 64) -> np.ndarray:
    """(n, H, W, 3) uint8 frames whose flat grey level encodes the frame index (level 8 * i, i < 32)."""
    levels = (np.arange(n) * 8 % 256).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()


def moving_square(n: int, color: tuple[int, int, int], direction: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """(n, H, W, 3) frames: a 16x16 square of `color` sliding left-to-right (direction 1) or back (-1)."""
    frames = np.full((n, *size, 3), 30, dtype=np.uint8)
    for i in range(n):
        x = int(round((size[1] - 16) * (i / max(n - 1, 1))))
        x = x if direction > 0 else size[1] - 16 - x
        frames[i, 16:32, x : x + 16] = color
    return frames

# What a StallingResizeCrop does to a video of STALL_SIZE frames: "hang" (sleep until killed) or "kill" (SIGKILL
# itself, as the out-of-memory killer would). Read in the worker, which inherits the test's environment.
STALL_ENV = "VIDCAP_TEST_STALL"
STALL_SIZE = (80, 96)  # (height, width): no other test video has it


@dataclass(frozen=True)
class StallingResizeCrop(ResizeCrop):
    """An extractor's shrink (it runs in the decoding worker right after the frames decode) that hangs or kills its
    worker on the video whose frames are STALL_SIZE, while the environment asks for it; otherwise ResizeCrop."""

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        action = os.environ.get(STALL_ENV)
        if action and tuple(frames.shape[1:3]) == STALL_SIZE:
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            while True:  # "hang": a decoder stuck in a lock looks like this from outside
                time.sleep(60)
        return super().__call__(frames)


def smooth_frames(n: int, seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth moving pattern (compresses well, differs per video and frame)."""
    y, x = np.mgrid[0:height, 0:width]
    t = np.arange(n)[:, None, None]
    base = (np.sin((x[None] + 3 * t + 7 * seed) / 6.0) + np.cos((y[None] - 2 * t) / 5.0 + seed)) * 60 + 128
    rgb = np.stack([base, np.roll(base, seed + 1, axis=2), 255 - base], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def write_video_table(data: Path, rows: list[tuple[str, str, str]]) -> None:
    with open(data / "videos.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "split", "path"])
        writer.writerows(rows)


def make_video_dataset(data: Path, n_good: int, broken: bool = True) -> dict[str, Path]:
    """n_good small videos (various lengths; one shorter than K=4 frames; one .avi) + broken files; returns id->path."""
    (data / "videos").mkdir(parents=True, exist_ok=True)
    rows, paths = [], {}
    lengths = [20, 3, 12, 30, 9, 16, 25, 7]
    for i in range(n_good):
        suffix, codec = (".avi", "mpeg4") if i == 2 else (".mp4", "libx264")
        path = write_video(data / "videos" / f"good{i}{suffix}", smooth_frames(lengths[i % len(lengths)], i), codec=codec)
        rows.append((f"good{i}", "train" if i % 2 == 0 else "test", f"videos/{path.name}"))
        paths[f"good{i}"] = path
    if broken:
        (data / "videos" / "empty.mp4").write_bytes(b"")
        (data / "videos" / "text.mp4").write_text("this is not a video\n")
        whole = paths["good0"].read_bytes()
        (data / "videos" / "truncated.mp4").write_bytes(whole[: len(whole) // 4])
        with wave.open(str(data / "videos" / "audio.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(np.zeros(8000, dtype=np.int16).tobytes())
        for name in ["empty.mp4", "text.mp4", "truncated.mp4", "audio.wav", "missing.mp4"]:
            video_id = "bad_" + name.split(".")[0]
            rows.append((video_id, "train", f"videos/{name}"))
            paths[video_id] = data / "videos" / name
    write_video_table(data, rows)
    return paths


# Runs `vidcap extract ARGS...` and SIGKILLs itself in the middle of writing the feature file of video LIMIT + 1:
# the file's temp name holds half a zip when the process dies.
KILL_DURING_WRITE = """
import os, signal, sys
import numpy as np
from vidcap.cli import main

limit, written, savez = int(sys.argv[1]), 0, np.savez

def killed_savez(handle, **arrays):
    global written
    if written == limit:
        handle.write(b"PK\\x03\\x04 half a zip")
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    written += 1
    savez(handle, **arrays)

np.savez = killed_savez
main(sys.argv[2:])
"""


def batcher_item(video_id: str, first: int, n: int):
    """A decoded video as a decoding worker hands it to the extraction's batcher: n steps whose one pixel value is
    first, first + 1, ... (so a fake extractor's features say which step they came from)."""
    import torch

    from vidcap.features.shard import _Item
    from vidcap.video.reader import SampledFrames

    steps = torch.arange(first, first + n, dtype=torch.uint8).view(n, 1, 1, 1, 1).expand(n, 1, 3, 1, 1)
    video = SampledFrames(mask=np.ones(n, dtype=bool), indices=np.arange(n), times=np.zeros(n, np.float32),
                          backend="pyav", fps=25.0, height=1, width=1, num_frames=n,
                          inputs={"global": steps.contiguous()})
    return _Item(video_id, "p", video=video)


# --------------------------------------------------------------------------------------------------------------------
# Several "nodes" on this machine (torchrun, srun)


def free_port() -> int:
    """A port that was free a moment ago. Another process may take it before a launcher binds it: run_nodes tries
    again with a new one when that happens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_once(commands: Sequence[Sequence[str]], envs: Sequence[dict[str, str]], logs: Path, enough: str | None,
              timeout: float) -> list[tuple[int | None, str, str]]:
    logs.mkdir(parents=True, exist_ok=True)
    files = [(logs / f"node{rank}.out", logs / f"node{rank}.err") for rank in range(len(commands))]
    procs = []
    for command, env, (out, err) in zip(commands, envs, files, strict=True):
        with open(out, "w") as stdout, open(err, "w") as stderr:
            procs.append(subprocess.Popen(
                list(command), cwd=REPO, stdout=stdout, stderr=stderr, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}))
    deadline = time.monotonic() + timeout
    try:
        while not all(p.poll() is not None or (enough and enough in err.read_text())
                      for p, (_, err) in zip(procs, files, strict=True)):
            assert time.monotonic() < deadline, f"nodes still running after {timeout} s"
            time.sleep(0.5)
    finally:
        codes = [p.poll() for p in procs]
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # a launcher still waiting, and its workers
            except ProcessLookupError:
                pass
            p.wait()
    return [(code, out.read_text(), err.read_text()) for code, (out, err) in zip(codes, files, strict=True)]


def run_nodes(commands: Callable[[int], Sequence[Sequence[str]]], envs: Callable[[int], Sequence[dict[str, str]]],
              logs: Path, enough: str | None = None, timeout: float = 240,
              tries: int = 3) -> list[tuple[int | None, str, str]]:
    """Start one command per "node" at once, commands(port) with envs(port), port a free rendezvous port;
    [(returncode, stdout, stderr)] once every node has ended, or printed `enough` on stderr (then it is killed:
    returncode None; torchrun waits minutes for a dead node's launcher). When the port was taken between choosing
    and binding it, the nodes run again on another."""
    for attempt in range(tries):
        port = free_port()
        commands_now = commands(port)
        results = _run_once(commands_now, envs(port), logs if attempt == 0 else logs / f"retry{attempt}", enough,
                            timeout)
        if not any("Address already in use" in err or "EADDRINUSE" in err for _, _, err in results):
            break
    return results


def torchrun_nodes(node_args: Sequence[Sequence[str]], logs: Path, module: bool = True,
                   enough: str | None = None, timeout: float = 240) -> list[tuple[int | None, str, str]]:
    """`torchrun --nnodes N --node-rank r --nproc-per-node 1` against a static rendezvous on 127.0.0.1, one per
    entry of node_args: `-m ARGS` (module) or a script and its arguments."""
    def commands(port: int) -> list[list[str]]:
        return [[sys.executable, "-m", "torch.distributed.run", "--nnodes", str(len(node_args)), "--node-rank",
                 str(rank), "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                 *(["-m"] if module else []), *args] for rank, args in enumerate(node_args)]

    return run_nodes(commands, lambda port: [{}] * len(node_args), logs, enough, timeout)


def srun_env(rank: int, port: int) -> dict[str, str]:
    """What srun sets for task `rank` of 2 nodes x 1 task (MASTER_*: a rendezvous on this machine)."""
    return {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2", "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": "0", "SLURM_NODEID": str(rank), "SLURM_JOB_NAME": "extract", "SLURM_JOB_ID": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


# --------------------------------------------------------------------------------------------------------------------
# What a training run did


def training_probe():
    """A Lightning callback that records what a `fit` trained: the steps taken, the metrics logged, whether the
    weights moved, the model's variant, and the dtype of every recurrent module's output (the decoder's LSTM cell
    and a frame encoder's LSTM), which must stay float32 under bf16 autocast. Read its `.seen` dict afterwards."""
    import torch
    from pytorch_lightning import Callback

    class TrainingProbe(Callback):
        def __init__(self):
            self.seen: dict = {"dtypes": {}}
            self._hooks: list = []

        def on_fit_start(self, trainer, pl_module):
            self._before = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
            self.seen["variant"] = pl_module.model.config.variant
            for name, module in pl_module.model.named_modules():
                if isinstance(module, (torch.nn.LSTM, torch.nn.LSTMCell)):
                    def record(module, inputs, output, name=name):
                        first = output[0] if isinstance(output, tuple) else output
                        first = getattr(first, "data", first)  # a PackedSequence's values
                        self.seen["dtypes"][name] = first.dtype
                    self._hooks.append(module.register_forward_hook(record))

        def on_fit_end(self, trainer, pl_module):
            for hook in self._hooks:
                hook.remove()
            after = pl_module.model.state_dict()
            self.seen["moved"] = [k for k, v in self._before.items() if not torch.equal(v, after[k])]
            self.seen["steps"] = trainer.global_step
            self.seen["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}

    return TrainingProbe()

# --------------------------------------------------------------------------------------------------------------------
# A dataset of random features (no videos): tables, vocabulary and a feature store

T, DG = 6, 8  # frames per video, feature width
WORDS = "a man woman dog is cooking riding running playing the horse".split()
SUBJECTS = ["man", "woman", "dog"]
VERBS = ["cooking", "riding", "running", "playing"]


def write_feature_dataset(root: Path) -> tuple[Path, Path]:
    """12 train / 3 val / 5 test videos of random features (some shorter than T), 2 captions each."""
    rng = np.random.default_rng(0)
    data, store = root / "data", root / "feats"
    (store / "features").mkdir(parents=True)
    data.mkdir()
    meta = {"format": 1, "num_frames": T, "dtype": "float16",
            "global": {"name": "fake2d", "weights": "random", "dim": DG, "image_size": 32}, "local": None,
            "versions": {}}
    (store / "meta.json").write_text(json.dumps(meta))
    rows = []
    splits = ["train"] * 12 + ["val"] * 3 + ["test"] * 5
    for i, split in enumerate(splits):
        video_id = f"v{i:02d}"
        n = T if i % 3 else T - 2
        mask = np.arange(T) < n
        arrays = {"global": (rng.standard_normal((T, DG)) * mask[:, None]).astype(np.float16), "mask": mask,
                  "times": np.arange(T, dtype=np.float32)}
        np.savez(store / "features" / f"{video_id}.npz", **arrays)
        subject, verb = SUBJECTS[i % 3], VERBS[i % 4]
        rows += [(video_id, split, f"a {subject} is {verb}"), (video_id, split, f"the {subject} is {verb}")]
    with open(data / "captions.csv", "w", newline="") as handle:  # these captions are their own PTB tokens
        csv.writer(handle).writerows([["video_id", "split", "caption", "tokens"], *[(*r, r[2]) for r in rows]])
    Vocabulary(WORDS).save(data / "vocab.json")
    (data / "prepare.json").write_text(json.dumps({"dataset": "msvd"}))
    return data, store


# --------------------------------------------------------------------------------------------------------------------
# A small captioner that learnt one caption per video, saved as a real checkpoint


def learn_captions(store: Path, captions: dict[str, str], vocab: Vocabulary, checkpoint: Path) -> Path:
    """Train a small global-attention CaptionModule on the features in `store` until it says captions[video_id] for
    each video, and save it with Lightning's own save_checkpoint (so `checkpoint["vidcap"]` is what training stores).
    Returns the checkpoint's path."""
    import torch
    from pytorch_lightning import Trainer

    from vidcap.features.store import load_features, read_meta
    from vidcap.model.captioner import ModelConfig
    from vidcap.training.module import CaptionModule

    torch.manual_seed(0)
    architecture = ModelConfig(vocab_size=len(vocab), global_dim=1280, variant="global", embed_dim=32, hidden_dim=64,
                               attention_dim=32, dropout=0.0)
    module = CaptionModule(architecture, caption_metrics=False, vocab=vocab.to_dict(), feature_meta=read_meta(store))
    feats = {k: load_features(store, k) for k in captions}
    x = torch.stack([torch.from_numpy(feats[k]["global"].astype(np.float32)) for k in captions])
    mask = torch.stack([torch.from_numpy(feats[k]["mask"]) for k in captions])
    targets = torch.tensor([vocab.encode(c.split()) for c in captions.values()])
    inputs = torch.cat([torch.full((len(captions), 1), vocab.BOS), targets[:, :-1]], dim=1)
    optimizer = torch.optim.Adam(module.model.parameters(), lr=1e-2)
    for _ in range(60):
        logits, _ = module.model(x, mask, inputs)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05, f"the model did not learn its captions (loss {loss.item():.3f})"
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", devices=1)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(checkpoint)
    return checkpoint


# --------------------------------------------------------------------------------------------------------------------
# video2dataset-shaped tar shards (vidcap prepare webdataset)

SHARD_CAPTIONS = {"right": "a red square moves right", "left": "a blue square moves left"}


def _add_member(tar, name: str, data: bytes) -> None:
    import io
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_video2dataset_shards(root: Path, samples_per_shard: int = 4, num_shards: int = 4, frames: int = 12
                               ) -> list[Path]:
    """Shards as video2dataset writes them: `{shard:05d}.tar` with `<key>.mp4`, `<key>.txt`, `<key>.json` per sample
    (key: 5 digits of the shard, 4 of the sample), `{shard:05d}.parquet` and `{shard:05d}_stats.json` beside. Sample 1 of
    every shard failed to download (json status, no mp4); shard 1's sample 2 is clipped into `<key>_0`, `<key>_1`;
    the last shard is truncated inside its third sample's video. Videos alternate a red square moving right and a
    blue one moving left (SHARD_CAPTIONS). No video is left on disk outside the shards."""
    import io
    import tarfile

    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for shard in range(num_shards):
        path = root / f"{shard:05d}.tar"
        rows = []
        with tarfile.open(path, "w") as tar:
            for sample in range(samples_per_shard):
                key = f"{shard:05d}{sample:04d}"
                if sample == 1:
                    meta = {"url": f"https://example.com/{key}.mp4", "key": key, "status": "failed_to_download",
                            "error_message": "HTTP 404", "caption": "never downloaded"}
                    _add_member(tar, f"{key}.json", json.dumps(meta).encode())
                    rows.append(meta)
                    continue
                clips = [f"{key}_0", f"{key}_1"] if (shard, sample) == (1, 2) else [key]
                for n, clip in enumerate(clips):
                    direction = "right" if (sample + n) % 2 == 0 else "left"
                    colour = (220, 30, 30) if direction == "right" else (30, 30, 220)
                    buffer = io.BytesIO()
                    with tempfile.TemporaryDirectory() as folder:
                        video = write_video(Path(folder) / "v.mp4", moving_square(frames, colour,
                                                                                  1 if direction == "right" else -1))
                        buffer.write(video.read_bytes())
                    caption = SHARD_CAPTIONS[direction]
                    meta = {"url": f"https://example.com/{key}.mp4", "key": clip, "status": "success",
                            "caption": caption, "width": 64, "height": 48}
                    _add_member(tar, f"{clip}.mp4", buffer.getvalue())
                    _add_member(tar, f"{clip}.txt", caption.encode())
                    _add_member(tar, f"{clip}.json", json.dumps(meta).encode())
                    rows.append(meta)
        pd.DataFrame(rows).to_parquet(root / f"{shard:05d}.parquet")
        (root / f"{shard:05d}_stats.json").write_text(json.dumps({"count": samples_per_shard,
                                                                   "successes": len(rows) - 1}))
        shards.append(path)
    # Truncate the last shard inside its last sample's video: samples 0 and 2 stay complete, 1 failed anyway.
    last = shards[-1]
    with tarfile.open(last) as tar:
        cut = next(m for m in tar.getmembers() if m.name == f"{num_shards - 1:05d}0003.mp4")
    data = last.read_bytes()
    last.write_bytes(data[: cut.offset_data + cut.size // 2])
    return shards


def _seen_videos_class():
    from pytorch_lightning import Callback

    class SeenVideos(Callback):
        """Appends [epoch, video ids] of every training batch to OUT/rank<R>.jsonl (`vidcap fit
        --trainer.callbacks+=tests.helpers.SeenVideos --trainer.callbacks.out OUT`)."""

        def __init__(self, out: str):
            self.out = out

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            with open(Path(self.out) / f"rank{trainer.global_rank}.jsonl", "a") as f:
                f.write(json.dumps([trainer.current_epoch, batch["video_ids"]]) + "\n")

    SeenVideos.__module__ = __name__
    return SeenVideos


def __getattr__(name: str):
    # SeenVideos is made on first use: importing Lightning here would slow down every test module.
    if name == "SeenVideos":
        globals()[name] = _seen_videos_class()
        return globals()[name]
    raise AttributeError(name)


def read_seen_videos(out: Path) -> dict[int, list[tuple[int, list[str]]]]:
    """{rank: [(epoch, video ids of a batch)]} that SeenVideos wrote."""
    return {int(p.stem[4:]): [tuple(json.loads(line)) for line in p.read_text().splitlines()]
            for p in sorted(out.glob("rank*.jsonl"))}


def tiny_dataset(root):
    """A data directory (captions with their tokens, vocab.json) and a feature store of random features: 8 train,
    2 val, 3 test videos of the synthetic dataset's kind of captions."""
    import csv

    import numpy as np

    from vidcap.text.vocab import Vocabulary

    rng = np.random.default_rng(0)
    data, store = root / "data", root / "feats"
    (store / "features").mkdir(parents=True)
    data.mkdir()
    meta = {"format": 1, "num_frames": 6, "dtype": "float16", "local": None, "versions": {},
            "global": {"name": "fake2d", "weights": "random", "dim": 8, "image_size": 32}}
    (store / "meta.json").write_text(json.dumps(meta))
    words = ["a", "red", "blue", "circle", "square", "appears", "moves", "left", "then"]
    rows = []
    for i, split in enumerate(["train"] * 8 + ["val"] * 2 + ["test"] * 3):
        mask = np.arange(6) < 6 - i % 2
        np.savez(store / "features" / f"v{i:02d}.npz", mask=mask, times=np.arange(6, dtype=np.float32),
                 **{"global": (rng.standard_normal((6, 8)) * mask[:, None]).astype(np.float16)})
        for _ in range(3):
            caption = " ".join(rng.choice(words, 5))
            rows.append((f"v{i:02d}", split, caption, caption))
    with open(data / "captions.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["video_id", "split", "caption", "tokens"], *rows])
    Vocabulary(words).save(data / "vocab.json")
    return data, store


# --------------------------------------------------------------------------------------------------------------------
# The training tests' data (tests/test_train.py, tests/test_scst.py): captions, random features, the CLI's options

TRAIN_T, TRAIN_DG, TRAIN_DL = 5, 6, 4  # frames, global and local feature widths
TRAIN_WORDS = "a man woman is cooking riding horse dog running playing guitar the".split()


def write_store(store: Path, lengths: dict[str, int], local: bool = True, seed: int = 0) -> Path:
    """A feature store in the documented format: meta.json, features/<id>.npz, manifest.csv."""
    rng = np.random.default_rng(seed)
    (store / "features").mkdir(parents=True)
    meta = {
        "format": 1, "num_frames": TRAIN_T, "dtype": "float16",
        "global": {"name": "fake2d", "weights": "random", "dim": TRAIN_DG, "image_size": 32},
        "local": {"name": "fake3d", "weights": "random", "dim": TRAIN_DL, "image_size": 32, "clip_length": 4,
                  "clip_stride": 1} if local else None,
        "versions": {},
    }
    (store / "meta.json").write_text(json.dumps(meta))
    for video_id, n in lengths.items():
        mask = np.arange(TRAIN_T) < n
        arrays = {"global": rng.standard_normal((TRAIN_T, TRAIN_DG)).astype(np.float16) * mask[:, None],
                  "mask": mask, "times": np.arange(TRAIN_T, dtype=np.float32)}
        if local:
            arrays["local"] = rng.standard_normal((TRAIN_T, TRAIN_DL)).astype(np.float16) * mask[:, None]
        np.savez(store / "features" / f"{video_id}.npz", **arrays)
    with open(store / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["video_id", "status", "error"], *[[v, "ok", ""] for v in lengths]])
    return store


def write_data(data: Path, captions: list[tuple[str, str, str]]) -> Path:
    """A data directory as `vidcap prepare` writes it (these captions are their own PTB tokens)."""
    data.mkdir(parents=True)
    with open(data / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows([["video_id", "split", "caption", "tokens"], *[(*c, c[2]) for c in captions]])
    with open(data / "videos.csv", "w", newline="") as f:
        rows = sorted({(v, s) for v, s, _ in captions})
        csv.writer(f).writerows([["video_id", "split", "path"], *[[v, s, f"{v}.mp4"] for v, s in rows]])
    Vocabulary(TRAIN_WORDS).save(data / "vocab.json")
    return data


TRAIN_CAPTIONS = [
    *[(f"tr{i}", "train", f"a {w} is {v}") for i, (w, v) in
      enumerate([("man", "cooking"), ("woman", "riding"), ("dog", "running"), ("man", "playing"),
                 ("woman", "cooking"), ("dog", "playing"), ("man", "riding"), ("woman", "running")])],
    ("tr0", "train", "the man is cooking"),
    ("tr1", "train", "a woman is riding a horse"),
    ("gone", "train", "a dog is missing"),  # no features: failed extraction
    ("va0", "val", "a man is cooking"), ("va0", "val", "the man is cooking"),
    ("va1", "val", "a dog is running"),
    ("va2", "val", "a woman is playing guitar"), ("va2", "val", "a woman is playing"),
    ("te0", "test", "a man is riding a horse"), ("te1", "test", "a dog is playing"),
]


def cli_args(dataset, root: Path, *extra: str, model: str = "global") -> list[str]:
    data, feats = dataset
    return ["--config", str(REPO / "configs/data/synthetic.yaml"),
            "--config", str(REPO / f"configs/model/{model}.yaml"),
            "--config", str(REPO / "configs/trainer/cpu.yaml"),
            "--config", str(REPO / "configs/debug.yaml"),
            "--config", str(REPO / "configs/trainer/csv_logger.yaml"),  # metrics_rows reads its metrics.csv
            "--data.data_dir", str(data), "--data.features_dir", str(feats),
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *extra]


def metrics_rows(root: Path) -> list[dict[str, str]]:
    """Rows of every CSVLogger metrics.csv under root, oldest version first."""
    rows = []
    for path in sorted(root.glob("lightning_logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        with open(path) as f:
            rows.extend(dict(r, version=path.parent.name) for r in csv.DictReader(f))
    return rows


def count_score(references, predictions):
    """Stand-in for vidcap.text.metrics.score_captions (no Java) whose values count what it was given."""
    return {"Bleu_1": 0.0, "Bleu_2": 0.0, "Bleu_3": 0.0,
            "Bleu_4": float(sum(len(r) for r in references.values())),  # references scored
            "METEOR": float(sum(len(p.split()) for p in predictions.values())),  # predicted words
            "ROUGE_L": 0.0, "CIDEr": float(len(predictions))}  # videos scored
