"""The CUDA paths of issue 17, on a real GPU: they skip without one (benchmarks/gpu_check.py runs them where CUDA is).

None of these has been run by the session that wrote them (no GPU was lent); the README's GPUs section says which
have run on a GPU since.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import batcher_item
from vidcap.model.captioner import CaptionModel, ModelConfig
from vidcap.model.decoding import DecodingOptions, decode

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _model(variant: str = "local_global", encoder: str = "position", seed: int = 0) -> CaptionModel:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=29, global_dim=12, local_dim=6, variant=variant, encoder=encoder, embed_dim=16,
                         hidden_dim=32, attention_dim=16, max_frames=8)
    model = CaptionModel(config).eval()
    with torch.no_grad():
        model.out.weight.mul_(4)
    return model


def _inputs(model: CaptionModel, seed: int = 0, device: str = "cuda") -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    feats = torch.randn(6, 8, model.config.feature_dim, generator=generator)
    mask = torch.ones(6, 8, dtype=torch.bool)
    mask[2, 5:] = False
    return feats.to(device), mask.to(device)


class _Syncs:
    """Counts the host-device synchronisations inside the block (torch.cuda.set_sync_debug_mode("warn"))."""

    def __enter__(self) -> _Syncs:
        torch.cuda.synchronize()
        self._warnings = warnings.catch_warnings(record=True)
        self.caught = self._warnings.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc_info) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._warnings.__exit__(*exc_info)
        self.count = sum("synchronizing" in str(w.message) for w in self.caught)


def test_decoder_step_is_float32_under_bf16_autocast_on_cuda():
    model = _model().cuda()
    feats, mask = _inputs(model)
    tokens = torch.randint(4, 29, (6, 5), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        state = model.init_state(feats, mask)
        log_probs, _, state = model.step(tokens[:, 0], state)
        logits, _ = model(feats, mask, tokens)
    assert state["h"].dtype == state["c"].dtype == log_probs.dtype == logits.dtype == torch.float32


def test_bf16_autocast_decodes_the_float32_captions_on_cuda():
    options = DecodingOptions(beam_size=3, max_len=12)
    for seed in range(6):
        for variant in ("basic", "global", "local_global"):
            model = _model(variant, "position", seed).cuda()
            feats, mask = _inputs(model, seed)
            fp32 = decode(model, feats, mask, options)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                bf16 = decode(model, feats, mask, options)
            assert [h[0].tokens for h in bf16] == [h[0].tokens for h in fp32], (seed, variant)


def test_padded_output_projection_on_cuda_gives_the_cpu_logits():
    model = _model()  # V = 29: padded to 32 on CUDA
    feats, mask = _inputs(model, device="cpu")
    tokens = torch.randint(4, 29, (6, 5))
    with torch.no_grad():
        cpu, _ = model(feats, mask, tokens)
        gpu, _ = model.cuda()(feats.cuda(), mask.cuda(), tokens.cuda())
    assert gpu.shape == cpu.shape
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


def training_step_syncs() -> int:
    """Host-device syncs in a bf16-mixed training step (forward, loss, backward) of a small CaptionModule on CUDA,
    after a warm-up step (lazy CUDA initialisation may synchronise). Also run by benchmarks/gpu_check.py."""
    from vidcap.training.module import CaptionModule

    module = CaptionModule(ModelConfig(vocab_size=29, global_dim=12, local_dim=6, embed_dim=16, hidden_dim=32,
                                       attention_dim=16, max_frames=8)).cuda()
    B, L = 8, 6
    batch = {"global": torch.randn(B, 8, 12), "local": torch.randn(B, 8, 6), "mask": torch.ones(B, 8, dtype=torch.bool),
             "inputs": torch.randint(4, 29, (B, L)), "targets": torch.randint(4, 29, (B, L)),
             "caption_video": torch.arange(B)}
    batch = {k: v.cuda() for k, v in batch.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        module.training_step(batch, 0).backward()
        with _Syncs() as syncs, torch.autocast("cuda", dtype=torch.bfloat16):
            module.training_step(batch, 0).backward()
    return syncs.count


def beam_search_syncs(options: DecodingOptions) -> tuple[int, int]:
    """(host-device syncs, steps) of a beam search on CUDA, after a warm-up one. Also run by gpu_check.py."""
    model = _model().cuda()
    feats, mask = _inputs(model)
    decode(model, feats, mask, options)
    with _Syncs() as syncs:
        hypotheses = decode(model, feats, mask, options)
    return syncs.count, max(len(h.tokens) + 1 for nbest in hypotheses for h in nbest)


def test_training_step_does_not_synchronise():
    assert training_step_syncs() == 0


def test_beam_search_synchronises_once_per_step():
    options = DecodingOptions(beam_size=3, max_len=10)
    syncs, steps = beam_search_syncs(options)
    assert 0 < syncs <= options.max_len + 1 and steps <= options.max_len + 1


def test_extraction_on_cuda_overlaps_and_matches_the_cpu():
    from vidcap.features.extractors import build_extractor
    from vidcap.features.shard import _Batcher, start_copy_to_host
    from vidcap.precision import numerics

    host, copied = start_copy_to_host(torch.ones(4, 3, device="cuda"))
    assert host.is_pinned() and copied is not None
    copied.synchronize()
    cpu = build_extractor("efficientnet_lite0", weights="random", image_size=64)
    gpu = build_extractor("efficientnet_lite0", weights="random", image_size=64, device="cuda")
    x = torch.randint(0, 256, (10, 1, 3, 64, 64), dtype=torch.uint8)
    expected = cpu.extract(x)
    with torch.inference_mode():
        batcher = _Batcher({"global": gpu}, batch_size=4, device=torch.device("cuda"))
        item = batcher_item("v", 0, 10)
        item.video.inputs = {"global": x.pin_memory()}
        batcher.add(item)
        batcher.run(flush=True)
        (_, feats), = batcher.finished(wait=True)
    np.testing.assert_allclose(feats["global"], expected, rtol=1e-3, atol=1e-4)  # TF32 off: float rounding only
    with numerics("cuda", "bf16-mixed"):
        assert torch.backends.cudnn.allow_tf32
    amp = build_extractor("efficientnet_lite0", weights="random", image_size=64, device="cuda", precision="bf16-mixed")
    np.testing.assert_allclose(amp.extract(x), expected, rtol=0.1, atol=0.05)


def test_smoke_extract_fit_bf16_and_caption_through_the_cli(tmp_path):
    """prepare -> extract --device cuda -> fit 1 epoch in bf16-mixed on the GPU -> caption --device cuda == cpu."""
    from vidcap.cli import main

    data, feats, run = tmp_path / "data", tmp_path / "feats", tmp_path / "run"
    assert main(["prepare", "synthetic", "--out", str(data), "--num-videos", "24", "--num-frames", "32",
                 "--frame-size", "64", "--no-progress"]) == 0
    assert main(["extract", "--data", str(data), "--out", str(feats), "--global", "efficientnet_lite0",
                 "--global-weights", "random", "--global-size", "64", "--frames", "8", "--device", "cuda",
                 "--no-progress"]) == 0
    meta = json.loads((feats / "meta.json").read_text())
    assert (meta["compute"]["device"], meta["compute"]["precision"], meta["compute"]["tf32"]) == ("cuda", "32-true",
                                                                                                  False)
    assert main(["fit", "--config", str(REPO / "configs/data/synthetic.yaml"), "--config", str(REPO / "configs/experiment/demo.yaml"), "--config",
                 str(REPO / "configs/trainer/gpu.yaml"), "--data.data_dir", str(data), "--data.features_dir",
                 str(feats), "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "1",
                 "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
                 "--model.architecture.embed_dim", "32", "--model.architecture.hidden_dim", "64",
                 "--model.architecture.attention_dim", "32"]) == 0
    checkpoint = run / "checkpoints" / "last.ckpt"
    from vidcap.caption import caption_video, load_captioner
    from vidcap.datasets import read_videos

    videos = [str(path) for path in read_videos(data)["path"][:3]]

    on_gpu, on_cpu = load_captioner(checkpoint, "cuda"), load_captioner(checkpoint, "cpu")
    for video in videos:
        assert caption_video(video, on_gpu).caption == caption_video(video, on_cpu).caption
    assert main(["caption", *videos, "--checkpoint", str(checkpoint), "--device", "cuda", "--precision",
                 "bf16-mixed"]) == 0
