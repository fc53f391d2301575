"""The newer extractor families: open_clip (CLIP, SigLIP), any timm backbone (`timm:<model>`), torchvision's video
models. Random weights only (no download at test time); the networks are the real ones, run on tiny real videos.

The full path `vidcap extract` -> `vidcap fit` -> `vidcap caption` runs for clip_vit_b32 and r2plus1d_18; the large
models (ViT-L/14, MViT, Swin3D, S3D's 128-frame clips, ...) extract one sampled step each and are marked slow.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import moving_square, write_video
from vidcap.caption import load_captioner, video_features
from vidcap.cli import main
from vidcap.errors import UsageError
from vidcap.experiments.demo import CONFIGS
from vidcap.features.extractors import base as extractor_base
from vidcap.features.extractors import build_extractor, spec_for
from vidcap.features.store import load_features, read_meta
from vidcap.text.vocab import Vocabulary

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = {"red": "a red square moves right", "blue": "a blue square moves left"}
WORDS = sorted({w for c in CAPTIONS.values() for w in c.split()})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A dataset folder: 4 tiny videos (2 train, 1 val, 1 test; an .avi among them), captions.csv, vocab.json."""
    root = tmp_path_factory.mktemp("families") / "data"
    (root / "videos").mkdir(parents=True)
    videos, captions = [], []
    for i, (split, colour) in enumerate([("train", "red"), ("train", "blue"), ("val", "red"), ("test", "blue")]):
        rgb, direction = ((220, 30, 30), 1) if colour == "red" else ((30, 30, 220), -1)
        suffix, codec = (".avi", "mpeg4") if i == 1 else (".mp4", "libx264")
        path = write_video(root / "videos" / f"v{i}{suffix}", moving_square(20 + 4 * i, rgb, direction), codec=codec)
        videos.append((f"v{i}", split, f"videos/{path.name}"))
        captions += [(f"v{i}", split, CAPTIONS[colour], CAPTIONS[colour])] * 2
    with open(root / "videos.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["video_id", "split", "path"], *videos])
    with open(root / "captions.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["video_id", "split", "caption", "tokens"], *captions])
    Vocabulary(WORDS).save(root / "vocab.json")
    return root


def _extract_fit_caption(data: Path, root: Path, extract_args: list[str], model_config: str, kind: str,
                         capsys) -> dict:
    store, run = root / "feats", root / "run"
    assert main(["extract", "--data", str(data), "--out", str(store), "--frames", "4", "--num-workers", "0",
                 "--no-progress", *extract_args]) == 0
    meta = read_meta(store)
    assert meta[kind]["weights"] == "random" and meta[kind]["seed"] == 0
    assert main(["fit", "--config", str(CONFIGS / "data" / "synthetic.yaml"), "--config",
                 str(CONFIGS / "model" / model_config), "--config", str(CONFIGS / "debug.yaml"),
                 "--data.data_dir", str(data), "--data.features_dir", str(store), "--trainer.default_root_dir",
                 str(run), "--trainer.enable_progress_bar", "false"]) == 0
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    capsys.readouterr()
    video = data / "videos" / "v0.mp4"
    assert main(["caption", str(video), "--checkpoint", str(checkpoint), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])  # one JSON object per video
    assert result["path"] == str(video) and set(result["caption"].split()) <= set(WORDS)
    # The checkpoint rebuilt the extractor: the features `caption` computes are the store's.
    captioner = load_captioner(checkpoint)
    assert captioner.extractors[kind].name == meta[kind]["name"]
    computed = video_features(video, captioner)
    stored = load_features(store, "v0")
    np.testing.assert_allclose(computed[kind], stored[kind].astype(np.float32), rtol=2e-3, atol=2e-3)
    return meta


@pytest.mark.slow  # ~10-20 s on the 2 shared cores (building the ViT, training, captioning)
def test_clip_vit_b32_extracts_trains_and_captions(data, tmp_path, capsys):
    meta = _extract_fit_caption(data, tmp_path, ["--global", "clip_vit_b32", "--global-weights", "random"],
                                "global.yaml", "global", capsys)
    described = meta["global"]
    assert described["dim"] == 512 and described["image_size"] == 224
    assert described["library"] == "open-clip-torch" and described["interpolation"] == "bicubic"
    assert described["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    stored = load_features(tmp_path / "feats", "v2")
    # The embedding is L2-normalised (float16 storage rounds the norm).
    np.testing.assert_allclose(np.linalg.norm(stored["global"].astype(np.float32), axis=1), 1.0, atol=2e-3)


@pytest.mark.slow  # ~10-20 s on the 2 shared cores (building the ViT, training, captioning)
def test_r2plus1d_18_extracts_trains_and_captions(data, tmp_path, capsys):
    # The local models read global features too: a small timm backbone gives them.
    meta = _extract_fit_caption(data, tmp_path, ["--local", "r2plus1d_18", "--local-weights", "random",
                                                 "--local-size", "32", "--global", "timm:resnet18",
                                                 "--global-weights", "random", "--global-size", "32"],
                                "local_global.yaml", "local", capsys)
    assert meta["global"]["name"] == "timm:resnet18" and meta["global"]["library"] == "timm"
    described = meta["local"]
    assert (described["dim"], described["clip_length"], described["clip_stride"]) == (512, 16, 2)
    assert described["resize"] == [37, 49]  # torchvision's 128x171 before a 112 crop, scaled to 32


# -- weights from a path ---------------------------------------------------------------------------------------------


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 60, 80, 3), dtype=np.uint8)


def _inputs(extractor, frames: np.ndarray) -> torch.Tensor:
    """The uint8 network inputs (N, L, 3, S, S) of `frames` as extract and caption make them."""
    shrunk = torch.from_numpy(extractor.request.shrink(frames))
    length = extractor.request.frames_per_step
    return shrunk.view(len(frames) // length, length, *shrunk.shape[1:])


def _normalised(extractor, x: torch.Tensor) -> torch.Tensor:
    return (x.float() - extractor.mean) / extractor.std


@pytest.mark.slow  # ~10-20 s on the 2 shared cores (building the ViT, training, captioning)
def test_clip_state_dict_file_gives_the_in_memory_models_features(tmp_path):
    from vidcap.features.extractors.openclip import network

    torch.manual_seed(1)  # not the `random` weights' seed: the file must really be loaded
    net = network("ViT-B-32", "openai").eval()
    path = tmp_path / "clip_b32.pt"
    torch.save(net.state_dict(), path)
    loaded = build_extractor("clip_vit_b32", weights=str(path))
    x = _inputs(loaded, _frames(2))
    with torch.no_grad():
        expected = F.normalize(net.encode_image(_normalised(loaded, x)[:, 0]), dim=-1).numpy()
    np.testing.assert_allclose(loaded.extract(x), expected, rtol=1e-5, atol=1e-6)
    assert loaded.describe()["weights_sha256"] == extractor_base.sha256_of(path)
    assert not np.allclose(build_extractor("clip_vit_b32", weights="random").extract(x), expected, atol=1e-3)


def test_timm_state_dict_file_gives_the_in_memory_models_features(tmp_path):
    import timm

    torch.manual_seed(1)
    net = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    loaded = build_extractor("timm:resnet18", weights=str(path), image_size=48)
    x = _inputs(loaded, _frames(3))
    with torch.no_grad():
        expected = net.forward_head(net.forward_features(_normalised(loaded, x)[:, 0]), pre_logits=True).numpy()
    np.testing.assert_allclose(loaded.extract(x), expected, rtol=1e-4, atol=1e-5)
    assert loaded.dim == 512


def test_torchvision_video_state_dict_file_gives_the_in_memory_models_features(tmp_path):
    import torchvision.models.video as tvm

    torch.manual_seed(1)
    net = tvm.r2plus1d_18().eval()
    path = tmp_path / "r2plus1d_18.pth"
    torch.save(net.state_dict(), path)
    loaded = build_extractor("r2plus1d_18", weights=str(path), image_size=32)
    x = _inputs(loaded, _frames(16))
    net.fc = torch.nn.Identity()
    with torch.no_grad():
        expected = net(_normalised(loaded, x).permute(0, 2, 1, 3, 4)).numpy()
    np.testing.assert_allclose(loaded.extract(x), expected, rtol=1e-4, atol=1e-5)


# -- bad input -------------------------------------------------------------------------------------------------------


def test_unknown_timm_name_is_one_line_with_the_closest_names(data, tmp_path, capsys):
    assert main(["extract", "--data", str(data), "--out", str(tmp_path / "f"), "--global", "timm:convnxt_tiny",
                 "--global-weights", "random", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "timm:convnxt_tiny" in err and "convnext_tiny" in err
    assert not (tmp_path / "f" / "meta.json").exists()


def test_weights_of_another_architecture_name_the_file_and_first_mismatching_key(tmp_path):
    import torchvision.models.video as tvm

    path = tmp_path / "r3d.pth"
    torch.save(tvm.r3d_18().state_dict(), path)
    with pytest.raises(UsageError, match=r"r3d\.pth: not r2plus1d_18 weights: first mismatching key 'stem\.") as err:
        build_extractor("r2plus1d_18", weights=str(path))
    assert "\n" not in str(err.value)


def test_fixed_size_models_refuse_other_sizes():
    with pytest.raises(UsageError, match="clip_vit_b32 takes 224px inputs only"):
        build_extractor("clip_vit_b32", weights="random", image_size=112)


def test_pretrained_offline_is_one_line_naming_model_cache_and_flag(data, tmp_path, monkeypatch, capsys):
    """Not cached and the hub unreachable: exit 2 at once (no retries), saying where the file is looked for."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(extractor_base, "reachable", lambda url, timeout=3.0: False)
    for args, cache, model in ((["--global", "clip_vit_b32"], tmp_path / "hf", "clip_vit_b32"),
                               (["--local", "r2plus1d_18"], tmp_path / "torch", "r2plus1d_18")):
        assert main(["extract", "--data", str(data), "--out", str(tmp_path / model), "--no-progress", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        kind = args[0][2:]
        assert f"{model}: pretrained weights not found offline" in err
        assert str(cache) in err and f"--{kind}-weights PATH" in err


def test_pretrained_fails_fast_when_the_hub_really_is_unreachable(tmp_path, monkeypatch):
    """On a machine without network (as the reference machine): the real check, no stand-in."""
    import time

    from huggingface_hub import constants

    if extractor_base.reachable(constants.ENDPOINT):
        pytest.skip("the Hugging Face Hub is reachable from here")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(UsageError, match="timm:resnet18: pretrained weights not found offline"):
        build_extractor("timm:resnet18", weights="pretrained")
    assert time.perf_counter() - start < 15  # huggingface_hub's own retries take ~25 s


def test_checkpoint_refuses_a_store_with_other_preprocessing():
    from vidcap.model.checkpoint import store_mismatches

    trained = build_extractor("r3d_18", weights="random", image_size=32).describe()
    other = build_extractor("r3d_18", weights="random", image_size=48).describe()
    section = {"model": {"variant": "local", "local_dim": 512}, "features": {"local": trained, "num_frames": 4}}
    problems = store_mismatches(section, {"local": other, "num_frames": 4})
    assert any("image_size=32" in p and "48" in p for p in problems)
    assert any("resize=[37, 49]" in p and "[55, 73]" in p for p in problems)


# -- every name builds and extracts (one step each; the large ones are slow) -----------------------------------------

QUICK = ["mc3_18", "r3d_18", "timm:convnext_tiny"]
SLOW = ["clip_vit_b16", "clip_vit_l14", "siglip_vit_b16", "s3d", "mvit_v2_s", "swin3d_t",
        "timm:vit_small_patch14_dinov2", "timm:eva02_base_patch14_224"]


@pytest.mark.parametrize("name", QUICK + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_every_name_extracts_one_step_of_a_real_video(name, tmp_path):
    spec = spec_for(name)
    size = None if spec.fixed_size else 32  # the smallest input that still runs the real network
    extractor = build_extractor(name, weights="random", image_size=size)
    path = write_video(tmp_path / "v.mp4", moving_square(max(20, spec.clip_length * spec.clip_stride // 4),
                                                           (200, 40, 40), 1))
    from vidcap.features.extractors import extract_video_features

    features = extract_video_features(path, {spec.kind: extractor}, num_frames=1)
    assert features[spec.kind].shape == (1, spec.dim) and features["mask"].all()
    assert np.isfinite(features[spec.kind]).all() and np.abs(features[spec.kind]).sum() > 0


# -- preprocessing: the library's own transform, on uint8 frames -----------------------------------------------------


@pytest.mark.parametrize("name", ["clip_vit_b32", "siglip_vit_b16", "timm:convnext_tiny"])
def test_inputs_are_the_pixels_of_the_librarys_own_pil_transform(name):
    """extract's uint8 resize and crop give the pixels of open_clip's `preprocess` / timm's `create_transform` on PIL
    images, to PIL's rounding: same geometry (bicubic short-side resize or squash, crop_pct, crop offset)."""
    from PIL import Image

    spec = spec_for(name)
    # Smooth content (noise would make every rounding difference large): random frames blown up to 320x240.
    frames = np.stack([np.asarray(Image.fromarray(f).resize((320, 240), Image.BILINEAR)) for f in _frames(2)])
    if spec.library == "timm":
        import timm

        net = timm.create_model(name[len("timm:"):], pretrained=False)
        transform = timm.data.create_transform(**timm.data.resolve_data_config(model=net))
    else:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.build.keywords["arch"], spec.build.keywords["tag"])
        transform = open_clip.image_transform(spec.image_size, is_train=False, mean=cfg["mean"], std=cfg["std"],
                                              resize_mode=cfg["resize_mode"], interpolation=cfg["interpolation"])
    theirs = torch.stack([transform(Image.fromarray(f)) for f in frames])
    levels = (theirs * torch.tensor(spec.std).view(1, 3, 1, 1) + torch.tensor(spec.mean).view(1, 3, 1, 1)) * 255
    ours = torch.from_numpy(spec_request_shrink(spec)(frames)).float()
    difference = (ours - levels).abs()
    assert ours.shape == levels.shape and difference.max() <= 2.5 and difference.mean() < 0.1


def spec_request_shrink(spec):
    from vidcap.features.extractors.base import ResizeCrop

    return ResizeCrop(spec.image_size, spec.resize, spec.interpolation, torchvision_geometry=True)
