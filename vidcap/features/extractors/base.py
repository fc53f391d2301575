"""What every extractor family shares: the spec, the uint8 preprocessing, weights resolution and the Extractor module.

A family module (efficientnet.py, torchvision2d.py, ...) lists `ExtractorSpec`s in its `EXTRACTORS` and gives each a
keyword-only builder `build(*, spec, weights) -> nn.Module` that makes the full network (classifier included, so that
published state_dicts load strictly), loads `weights` into it, cuts the classifier off and returns a backbone mapping
normalised inputs (N, L, 3, S, S) float32 to pooled features (N, D).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import urllib.parse
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidcap.errors import UsageError
from vidcap.precision import check_precision, numerics
from vidcap.video.reader import FrameRequest

logger = logging.getLogger(__name__)

WEIGHT_CHOICES = "'pretrained' (online, or the file in the torch hub cache), 'random' or a path to a state_dict file"
# Seed of the `random` weights: the same untrained network at extract and at caption time, in every process.
RANDOM_SEED = 0

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, kw_only=True)
class ExtractorSpec:
    """What an extractor is: output size, input geometry, normalisation, and the builder that makes its network.

    clip_length/clip_stride: the frames read around each sampled frame (1/1 for a 2-D CNN); ends_only: only the
    clip's first and last frame reach the network (frame delta).
    """

    name: str
    kind: str  # "global" (one frame per step) or "local" (a clip per step)
    dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    summary: str  # one line for --help
    features: str  # what the features are, for meta.json
    build: Callable[..., nn.Module]  # build(*, spec, weights) -> backbone
    clip_length: int = 1
    clip_stride: int = 1
    ends_only: bool = False


# --------------------------------------------------------------------------------------------------------------------
# Preprocessing (runs in DataLoader workers: uint8 in, uint8 out)


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
class ResizeCrop:
    """`resize_and_crop` to `size` as a FrameRequest's shrink: equal sizes compare equal, so the frames that several
    extractors share are resized once."""

    size: int

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return resize_and_crop(frames, self.size).numpy()


# --------------------------------------------------------------------------------------------------------------------
# Weights


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - on a foreign file torch.load raises anything from KeyError to EOFError
        reason = " ".join(str(exc).split())[:200]
        raise UsageError(f"{path}: cannot load {name} weights with torch.load(weights_only=True): {reason}") from exc
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj: Any, path: Path | str) -> dict[str, torch.Tensor]:
    # pytorchvideo's .pyth checkpoints and Lightning-style files wrap the state_dict.
    for key in ("model_state", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path}: not a state_dict (a dict of tensors saved with torch.save)")
    return obj


def from_torch_hub(name: str, url: str) -> tuple[str, Path, dict[str, torch.Tensor]]:
    """Pretrained weights through torch hub's cache: (source, file, state_dict). Downloads when the file is not
    cached, checking the sha256 prefix that torchvision's file names carry."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / os.path.basename(urllib.parse.urlparse(url).path)
    try:
        with redirect_stdout(sys.stderr):  # torch hub announces downloads on stdout, which is the CLI's output
            state = torch.hub.load_state_dict_from_url(url, model_dir=str(folder), map_location="cpu",
                                                       check_hash=True, weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; a hash mismatch a RuntimeError
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(
            f"{name}: pretrained weights are not available ({url} is not in the torch hub cache {folder} and "
            f"cannot be downloaded: {reason}); choose weights {WEIGHT_CHOICES}"
        ) from exc
    return url, path, unwrap_state_dict(state, path)


class Weights:
    """The weights an extractor was asked for ("pretrained", "random" or a file), and, once loaded, where they came
    from and the sha256 of their file (both recorded in meta.json)."""

    def __init__(self, name: str, choice: str):
        self.name = name
        self.choice = str(choice)
        self.source: str | None = f"random init, torch.manual_seed({RANDOM_SEED})" if self.choice == "random" else None
        self.sha256: str | None = None
        if self.choice not in ("pretrained", "random"):
            path = Path(self.choice).expanduser()
            if not path.is_file():
                raise UsageError(f"{choice}: no such weights file for {name}; choose weights {WEIGHT_CHOICES}")
            self.choice = self.source = str(path.resolve())

    def load(self, net: nn.Module, *, head: tuple[str, ...],
             pretrained: Callable[[], tuple[str, Path, dict[str, torch.Tensor]]]) -> None:
        """Load into the full network `net`; keys under the `head` prefixes (the classifier) may be absent or extra.
        pretrained() -> (source, file, state_dict) fetches the published weights."""
        if self.choice == "random":
            return
        if self.choice == "pretrained":
            self.source, path, state = pretrained()
        else:
            path = Path(self.choice)
            state = read_state_dict(path, self.name)
        try:
            result = net.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise UsageError(f"{path}: not {self.name} weights: {' '.join(str(exc).split())[:240]}") from exc
        missing = [k for k in result.missing_keys if not k.startswith(head)]
        unexpected = [k for k in result.unexpected_keys if not k.startswith(head)]
        if missing or unexpected:
            raise UsageError(
                f"{path}: not {self.name} weights: {len(missing)} missing keys (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected keys (e.g. {unexpected[:2]})"
            )
        self.sha256 = sha256_of(path)


# --------------------------------------------------------------------------------------------------------------------
# The extractor module


class ImageBackbone(nn.Module):
    """A 2-D CNN on one frame per step: (N, 1, 3, S, S) -> (N, D)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, 0].contiguous(memory_format=torch.channels_last))


class Extractor(nn.Module):
    """A feature extractor: uint8 inputs (N, L, 3, S, S) -> float32 features (N, D).

    Attributes: name, kind ("global"|"local"), dim (D), image_size (S), clip_length, clip_stride, weights
    ("pretrained", "random" or a file path), request (the frames to decode: vidcap.video.reader.FrameRequest), precision
    ("32-true" or "bf16-mixed": vidcap.precision.numerics). Inputs come resized from the request's shrink;
    normalisation happens here, on the extractor's device.
    """

    def __init__(self, spec: ExtractorSpec, backbone: nn.Module, weights: Weights, image_size: int,
                 precision: str = "32-true"):
        super().__init__()
        self.precision = check_precision(precision)
        self.spec = spec
        self.name, self.kind, self.dim = spec.name, spec.kind, spec.dim
        self.image_size = image_size
        self.clip_length, self.clip_stride = spec.clip_length, spec.clip_stride
        self.weights, self.weights_source, self.weights_sha256 = weights.choice, weights.source, weights.sha256
        self.request = FrameRequest(spec.clip_length, spec.clip_stride, spec.ends_only, ResizeCrop(image_size))
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 1, 3, 1, 1) * 255, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: uint8 (N, L, 3, S, S) with L = request.frames_per_step -> float32 (N, D)."""
        x = x.to(self.device, non_blocking=True)
        with numerics(self.device, self.precision):
            return self.backbone((x.float() - self.mean) / self.std).float()

    @torch.inference_mode()
    def extract(self, x: torch.Tensor | np.ndarray, batch_size: int = 64) -> np.ndarray:
        """uint8 inputs (N, L, 3, S, S) -> float32 numpy features (N, D), `batch_size` steps per forward pass."""
        x = torch.as_tensor(x)
        if len(x) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [self(x[i : i + batch_size]).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(out).numpy()

    def describe(self) -> dict[str, Any]:
        """Plain-typed description for meta.json: enough to rebuild the same extractor (build_extractor_from_meta)."""
        spec = self.spec
        return {
            "name": self.name,
            "kind": self.kind,
            "summary": spec.summary,
            "dim": self.dim,
            "image_size": self.image_size,
            "clip_length": self.clip_length,
            "clip_stride": self.clip_stride,
            "frames_per_step": self.request.frames_per_step,
            "features": spec.features,
            "preprocessing": "short side resized to image_size (bilinear, antialiased, uint8), centre crop, "
            "(x / 255 - mean) / std",
            "mean": list(spec.mean),
            "std": list(spec.std),
            "weights": self.weights,
            "weights_source": self.weights_source,
            "weights_sha256": self.weights_sha256,
            "seed": RANDOM_SEED if self.weights == "random" else None,
        }
