"""The GPU paths of issue 17 that run on a CPU: the extraction batcher's non-blocking copies (with stand-in events),
thread/worker/prefetch defaults, the shared-memory hint, meta.json's compute record and the store's mixing rule,
decoding's one-copy transfers, slowfast's slow-pathway index. The CUDA runs of the same paths are tests/test_gpu.py
and benchmarks/gpu_check.py."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import batcher_item
from vidcap.errors import UsageError
from vidcap.features import shard as extract_shard
from vidcap.features.extract import (
    ExtractOptions,
    default_decoder_threads,
    default_num_workers,
    default_threads,
    make_meta,
)
from vidcap.features.shard import _Batcher, _shared_memory_hint, prefetch_factor, video_bytes
from vidcap.features.store import check_meta, prepare_store
from vidcap.model.decoding import _in_one_copy
from vidcap.precision import compute_record


# -- the batcher's copies --------------------------------------------------------------------------------------------
class _FirstPixel(torch.nn.Module):
    """Stand-in extractor: the feature of a step is its first pixel value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, 0, :1].float()


class _Copy:
    """Stand-in for the CUDA event of a copy to the host: not done until the test says so (or someone waits)."""

    def __init__(self):
        self.done = self.waited = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.done = self.waited = True


def test_batcher_hands_over_a_video_only_when_the_copies_of_its_features_are_done(monkeypatch):
    copies: list[_Copy] = []

    def start_copy(features):
        copies.append(_Copy())
        return features.clone(), copies[-1]

    monkeypatch.setattr(extract_shard, "start_copy_to_host", start_copy)
    batcher = _Batcher({"global": _FirstPixel()}, batch_size=4)
    first = batcher_item("a", 0, 5)
    batcher.add(first)
    assert first.video.inputs == {}  # the host copy of the inputs is let go once they are on the device
    batcher.add(batcher_item("b", 5, 3))
    batcher.run()
    assert len(copies) == 2 and batcher.finished() == []  # computed, still copying: nothing waits for it
    copies[0].done = True
    assert batcher.finished() == []  # rows 0-3 are here, but "a" has 5
    copies[1].done = True
    done = batcher.finished()
    assert [(item.video_id, feats["global"][:, 0].tolist()) for item, feats in done] == [
        ("a", [0, 1, 2, 3, 4]), ("b", [5, 6, 7])]
    batcher.add(batcher_item("c", 8, 2))
    batcher.run(flush=True)
    assert batcher.finished() == []
    done = batcher.finished(wait=True)
    assert copies[-1].waited and [feats["global"][:, 0].tolist() for _, feats in done] == [[8, 9]]


def test_copies_to_the_host_start_only_from_a_gpu():
    features = torch.ones(3, 2)
    host, copied = extract_shard.start_copy_to_host(features)
    assert host is features and copied is None


# -- threads, workers, prefetch, shared memory -----------------------------------------------------------------------
@pytest.mark.parametrize("cores, device, devices, workers, threads, decoders", [
    (2, "cpu", 1, 1, 1, 2),      # this machine: what bench_extract measured
    (16, "cuda", 1, 8, 8, 2),    # one GPU: 8 decoding workers, 2 decoder threads each, 8 torch threads
    (64, "cuda", 8, 7, 1, 1),    # 8 GPUs: nothing gets more than its share of the 64 cores
])
def test_thread_and_worker_defaults_share_the_cores(monkeypatch, cores, device, devices, workers, threads, decoders):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert default_num_workers(device, devices) == workers
    assert default_threads(device, devices, workers) == threads
    assert default_decoder_threads(devices, workers) == decoders
    assert devices * workers * decoders <= cores  # every decoder thread of every worker has a core


def test_prefetch_is_sized_by_the_extractors_inputs():
    def extractor(frames_per_step: int, size: int):
        return SimpleNamespace(request=SimpleNamespace(frames_per_step=frames_per_step), image_size=size)

    x3d_m, slowfast, lite0 = extractor(16, 256), extractor(32, 256), extractor(1, 224)
    assert video_bytes({"local": x3d_m}, 26) == 26 * 16 * 3 * 256 * 256  # 82 MB, as issue 17 counted
    assert video_bytes({"global": lite0, "local": slowfast}, 26) == 26 * (3 * 224 * 224 + 32 * 3 * 256 * 256)
    assert prefetch_factor(video_bytes({"global": lite0}, 26), 8) == 4  # small inputs: as before
    assert prefetch_factor(video_bytes({"local": x3d_m}, 26), 8) == 1  # 8 videos in flight, not 32
    assert prefetch_factor(video_bytes({"local": slowfast}, 26), 1) == 4  # 1 worker: 4 x 164 MB < 1 GiB
    assert prefetch_factor(video_bytes({"local": slowfast}, 26), 2) == 3


def test_a_bus_error_in_the_workers_is_one_line_about_shm_size():
    message = ("DataLoader worker (pid 4242) is killed by signal: Bus error. It is possible that dataloader's "
               "workers are out of shared memory. Please try to raise your shared memory limit.")
    with pytest.raises(UsageError, match=r"--shm-size") as error, _shared_memory_hint(1 << 20):
        raise RuntimeError(message)
    assert "\n" not in str(error.value)
    with pytest.raises(RuntimeError, match="something else"), _shared_memory_hint(1 << 20):
        raise RuntimeError("something else")


def test_a_small_dev_shm_is_reported_before_the_run(caplog):
    with caplog.at_level(logging.WARNING, logger="vidcap.features.shard"), _shared_memory_hint(1 << 50):
        pass
    assert "--shm-size" in caplog.text


# -- meta.json ---------------------------------------------------------------------------------------------------------
def test_meta_records_device_precision_and_tf32():
    assert ExtractOptions().precision == "32-true" and ExtractOptions(amp=True).precision == "bf16-mixed"
    meta = make_meta({}, 26, "float16", compute_record("cpu", "bf16-mixed"))
    assert {k: meta["compute"][k] for k in ("device", "precision", "tf32")} == {
        "device": "cpu", "precision": "bf16-mixed", "tf32": False}
    assert isinstance(meta["compute"]["device_name"], str)
    assert make_meta({}, 26, "float16")["compute"]["precision"] == "32-true"


def _compute(device: str, precision: str = "32-true", tf32: bool = False) -> dict:
    return {"device": device, "device_name": device.upper(), "precision": precision, "tf32": tf32}


def test_store_refuses_other_precision_and_warns_on_another_device(tmp_path, caplog):
    cpu = make_meta({}, 26, "float16", _compute("cpu"))
    prepare_store(tmp_path, cpu)
    with caplog.at_level(logging.WARNING, logger="vidcap.features.store"):
        check_meta(tmp_path, {**cpu, "compute": _compute("cuda")})  # float32 without TF32: float rounding only
    assert "computed on cpu, these on cuda" in caplog.text
    for other in (_compute("cuda", "bf16-mixed", True), _compute("cuda", "32-true", True)):
        with pytest.raises(UsageError, match="holds other features.*compute"):
            check_meta(tmp_path, {**cpu, "compute": other})


def test_store_written_before_the_compute_record_is_warned_about(tmp_path, caplog):
    old = make_meta({}, 26, "float16")
    del old["compute"]
    prepare_store(tmp_path, old)
    with caplog.at_level(logging.WARNING, logger="vidcap.features.store"):
        check_meta(tmp_path, make_meta({}, 26, "float16", _compute("cuda", "bf16-mixed", True)))
    assert "does not record the device and precision" in caplog.text
    assert "compute" not in json.loads((tmp_path / "meta.json").read_text())


# -- host-device transfers --------------------------------------------------------------------------------------------
def test_one_copy_brings_back_every_tensor_exactly():
    log_probs = torch.tensor([[-0.5, float("-inf")], [-1e-300, -3.25]], dtype=torch.float64)
    index = torch.tensor([[0, 2**52 + 1], [7, 3]])
    alpha = torch.rand(4, 3)
    got = _in_one_copy((log_probs, index, alpha))
    for before, after in zip((log_probs, index, alpha), got, strict=True):
        assert after.dtype == before.dtype and torch.equal(after, before)


def test_slowfast_slow_pathway_index_is_built_once_and_moves_with_the_module():
    from vidcap.features.extractors.pytorchvideo3d import SLOWFAST_ALPHA, SlowFast

    seen = []

    class Pathways(torch.nn.Module):
        def forward(self, pathways):
            seen.append([p.shape[2] for p in pathways])
            return pathways[0].flatten(1)[:, :2]

    module = SlowFast(Pathways(), 32)
    expected = torch.linspace(0, 31, 32 // SLOWFAST_ALPHA).long()  # what every forward used to build on the CPU
    assert torch.equal(module.slow_index, expected) and "slow_index" not in module.state_dict()
    module(torch.zeros(2, 32, 3, 4, 4))
    assert seen == [[8, 32]]
    assert module.to(torch.float64).slow_index.dtype == torch.long


def test_decoder_threads_reach_pyav(tiny_video):
    from vidcap.video.pyav_backend import PyAVBackend

    backend = PyAVBackend(str(tiny_video), threads=1)
    try:
        assert backend._container.streams.video[0].codec_context.thread_count == 1
    finally:
        backend.close()
