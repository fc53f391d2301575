"""benchmarks/gpu_check.py itself, on the CPU: its one line without CUDA, and its checks on a hand-made tiny dataset
(the CUDA-only ones report SKIP). Its CUDA runs are by hand (the README's GPUs section)."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import write_video
from vidcap.text.vocab import Vocabulary

REPO = Path(__file__).resolve().parents[1]
WORDS = "a red blue square circle moves left right".split()


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def _dataset(root: Path) -> Path:
    """6 videos of 32 frames (4 train, 1 val, 1 test), 2 captions each, in `vidcap prepare`'s layout."""
    data = root / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    captions, videos = [], []
    for i, split in enumerate(["train"] * 4 + ["val", "test"]):
        colour, shape, way = WORDS[1 + i % 2], WORDS[3 + i % 2], WORDS[6 + i // 2 % 2]
        frames = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
        path = write_video(data / "videos" / f"v{i}.mp4", frames)
        videos.append((f"v{i}", split, str(path)))
        for text in (f"a {colour} {shape} moves {way}", f"{colour} {shape} moves {way}"):
            captions.append((f"v{i}", split, text, text))
    with open(data / "captions.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("video_id", "split", "caption", "tokens"), *captions])
    with open(data / "videos.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("video_id", "split", "path"), *videos])
    Vocabulary(WORDS).save(data / "vocab.json")
    return data


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without CUDA")
def test_without_cuda_it_prints_one_line_and_exits_0(gpu_check, capsys):
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out == "no CUDA device\n"


@pytest.mark.slow
def test_its_checks_run_on_the_cpu(gpu_check, tmp_path, capsys, one_thread):
    """The script's own code, quick sizes: extraction (both extractors), fit in both precisions, the training step,
    captioning, and the table. (evaluate needs Java and runs in `gpu_check.py --device cpu --quick`.)"""
    data = _dataset(tmp_path)
    sizes = dataclasses.replace(gpu_check.QUICK, batch=4)  # the paper's widths, a small batch: the code, not speed
    rows, store = gpu_check.check_extract(data, tmp_path, "cpu", sizes)
    fit_rows, checkpoint = gpu_check.check_fit(data, store, tmp_path, "cpu")
    rows += fit_rows + gpu_check.check_step("cpu", sizes) + gpu_check.check_caption(checkpoint, data, "cpu")
    assert [(r.check, r.status) for r in rows] == [
        ("extract efficientnet_lite0", "PASS"), ("extract x3d_xs", "PASS"), ("fit", "PASS"),
        ("step (quick sizes)", "PASS"), ("caption", "PASS")]
    skipped = (gpu_check.check_overlap("cpu", sizes) + gpu_check.check_syncs("cpu") + gpu_check.check_tests("cpu")
               + gpu_check.check_ddp(data, store, tmp_path, "cpu") + gpu_check.check_families(data, tmp_path, "cpu"))
    assert {r.status for r in skipped} == {"SKIP"}
    capsys.readouterr()
    gpu_check.print_table(rows + skipped, "header")
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "header" and len(table) == 3 + len(rows) + len(skipped)
    assert table[3].startswith("| extract efficientnet_lite0 | PASS   | ")
