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
import socket
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
    # The model's own resize before the centre crop to image_size: None or an int resize the short side (None: to
    # image_size), a (height, width) pair resizes to exactly that size (torchvision's video transforms, SigLIP's
    # "squash"). Scaled with image_size when --global-size/--local-size changes it.
    resize: int | tuple[int, int] | None = None
    interpolation: str = "bilinear"  # or "bicubic" (CLIP, most timm models); antialiased either way
    fixed_size: bool = False  # the network takes image_size only (position embeddings of a ViT, MViT)
    library: str = ""  # the PyPI package that builds the network, for meta.json and the docs

    def resize_for(self, image_size: int) -> int | tuple[int, int] | None:
        """The resize before the centre crop for inputs of `image_size` (this spec's resize scaled to it)."""
        if self.resize is None or image_size == self.image_size:
            return self.resize
        scale = image_size / self.image_size
        if isinstance(self.resize, int):
            return max(image_size, round(self.resize * scale))
        return (max(image_size, round(self.resize[0] * scale)), max(image_size, round(self.resize[1] * scale)))

    def preprocessing(self, image_size: int) -> str:
        """How frames become network inputs, in words (meta.json)."""
        if self.resize is None and self.interpolation == "bilinear":
            return "short side resized to image_size (bilinear, antialiased, uint8), centre crop, (x / 255 - mean) / std"
        resize = self.resize_for(image_size)
        if isinstance(resize, tuple):
            how = f"resized to {resize[0]}x{resize[1]} (height x width)"
        else:
            how = f"short side resized to {resize or image_size}"
        return (f"{how} ({self.interpolation}, antialiased, uint8), centre crop to image_size, "
                "(x / 255 - mean) / std")


# --------------------------------------------------------------------------------------------------------------------
# Preprocessing (runs in DataLoader workers: uint8 in, uint8 out)


def resize_and_crop(frames: np.ndarray | torch.Tensor, size: int, resize: int | tuple[int, int] | None = None,
                    interpolation: str = "bilinear", torchvision_geometry: bool = False) -> torch.Tensor:
    """uint8 frames (N, H, W, 3) -> uint8 (N, 3, size, size): short side to `size` (bilinear, antialiased), centre crop.

    resize: an int resizes the short side to it instead, a (height, width) pair resizes to exactly that size; the
    centre crop to `size` follows. interpolation: "bilinear" or "bicubic" (antialiased, as PIL's resize).
    torchvision_geometry: size the resize and place the crop as torchvision's Resize and CenterCrop do (the long side
    truncated, the crop offset rounded half to even), the transforms open_clip, timm and torchvision's video models
    ship; otherwise the long side is rounded and the offset floored (vidcap's original extractors).
    Kept in uint8 so that workers hand small tensors to the model process; rounding is the same on every path.
    """
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    n, h, w, _ = x.shape
    if n == 0:
        return torch.empty((0, 3, size, size), dtype=torch.uint8)
    if isinstance(resize, tuple | list):
        new_h, new_w = max(size, int(resize[0])), max(size, int(resize[1]))
    else:
        short = resize or size
        scale = short / min(h, w)
        if torchvision_geometry:
            new_h, new_w = (short, max(size, int(short * w / h))) if h <= w else (max(size, int(short * h / w)), short)
        else:
            new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = x.permute(0, 3, 1, 2)  # channels-last memory, the layout the uint8 resize kernel is fast on
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode=interpolation, antialias=True, align_corners=False)
    if torchvision_geometry:
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    else:
        top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[:, :, top : top + size, left : left + size].contiguous()


@dataclass(frozen=True)
class ResizeCrop:
    """`resize_and_crop` to `size` as a FrameRequest's shrink: equal sizes compare equal, so the frames that several
    extractors share are resized once."""

    size: int
    resize: int | tuple[int, int] | None = None
    interpolation: str = "bilinear"
    torchvision_geometry: bool = False

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return resize_and_crop(frames, self.size, self.resize, self.interpolation, self.torchvision_geometry).numpy()


# --------------------------------------------------------------------------------------------------------------------
# Weights


class Clip(nn.Module):
    """A 3-D CNN over clips as the extractors hand them over: (N, L, 3, S, S) -> the network's (N, 3, L, S, S)
    -> (N, D)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 2, 1, 3, 4).contiguous())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """A state_dict file: torch.save's format (loaded with weights_only=True) or .safetensors (the format timm and
    open_clip publish on the Hugging Face Hub); neither runs code."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
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


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the host of `url` accepts a connection within `timeout` seconds: checked before a download so that an
    offline machine fails at once instead of after the hub libraries' retries (huggingface_hub: 5, ~25 s). Behind a
    proxy (HTTPS_PROXY set) the download is simply tried."""
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parsed = urllib.parse.urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def offline_error(name: str, kind: str, file: str, where: Path | str, host: str) -> UsageError:
    """The one line for pretrained weights that are neither cached nor downloadable."""
    flag = f"--{kind}-weights" if kind else "weights"
    return UsageError(
        f"{name}: pretrained weights not found offline: {file} is not in {where} and {host} cannot be reached; "
        f"copy the file there, or pass it as a path ({flag} PATH), or use {flag} random"
    )


def from_hf_hub(name: str, kind: str, repo_id: str, filenames: tuple[str, ...]) -> tuple[str, Path]:
    """Pretrained weights through the Hugging Face Hub cache (what open_clip and timm download from): (source,
    file). The cache is looked in first; a download is tried only when the Hub can be reached."""
    from huggingface_hub import constants, hf_hub_download

    for filename in filenames:
        try:
            return f"hf-hub:{repo_id}/{filename}", Path(hf_hub_download(repo_id, filename, local_files_only=True))
        except Exception:  # noqa: BLE001, S112 - LocalEntryNotFoundError and friends: not cached, try the next
            continue
    where = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    if constants.HF_HUB_OFFLINE or not reachable(constants.ENDPOINT):
        raise offline_error(name, kind, " or ".join(filenames), where, urllib.parse.urlparse(constants.ENDPOINT).hostname)
    errors = []
    for filename in filenames:
        try:
            with redirect_stdout(sys.stderr):
                return f"hf-hub:{repo_id}/{filename}", Path(hf_hub_download(repo_id, filename))
        except Exception as exc:  # noqa: BLE001 - the Hub's errors have no common base worth naming
            errors.append(f"{filename}: {' '.join(str(exc).split())[:160]}")
    raise UsageError(f"{name}: cannot download pretrained weights from {repo_id} ({'; '.join(errors)}); pass a "
                     f"state_dict file as a path, or use random weights")


def from_torch_hub(name: str, url: str, kind: str = "") -> tuple[str, Path, dict[str, torch.Tensor]]:
    """Pretrained weights through torch hub's cache: (source, file, state_dict). Downloads when the file is not
    cached, checking the sha256 prefix that torchvision's file names carry."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / os.path.basename(urllib.parse.urlparse(url).path)
    if not path.is_file() and not reachable(url):
        raise offline_error(name, kind, path.name, folder, urllib.parse.urlparse(url).hostname)
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


def first_mismatch(net: nn.Module, state: dict[str, torch.Tensor], head: tuple[str, ...]) -> str | None:
    """The first key of `net`'s state_dict that `state` lacks, has in another shape, or has extra (keys under the
    `head` prefixes aside), in words; None when `state` fits."""
    own = net.state_dict()
    for key, value in own.items():
        if key.startswith(head):
            continue
        if key not in state:
            return f"first mismatching key {key!r} is missing ({len(set(own) - set(state))} missing in all)"
        if tuple(state[key].shape) != tuple(value.shape):
            return f"first mismatching key {key!r} has shape {tuple(state[key].shape)}, the network {tuple(value.shape)}"
    extra = [key for key in state if key not in own and not key.startswith(head)]
    if extra:
        return f"first mismatching key {extra[0]!r} is not in the network ({len(extra)} unexpected in all)"
    return None


class Weights:
    """The weights an extractor was asked for ("pretrained", "random" or a file), and, once loaded, where they came
    from and the sha256 of their file (both recorded in meta.json)."""

    def __init__(self, name: str, choice: str, kind: str = ""):
        self.name = name
        self.kind = kind  # "global" or "local": names the flag in messages
        self._fetched: tuple[str, Path, dict[str, torch.Tensor]] | None = None
        self.choice = str(choice)
        self.source: str | None = f"random init, torch.manual_seed({RANDOM_SEED})" if self.choice == "random" else None
        self.sha256: str | None = None
        if self.choice not in ("pretrained", "random"):
            path = Path(self.choice).expanduser()
            if not path.is_file():
                raise UsageError(f"{choice}: no such weights file for {name}; choose weights {WEIGHT_CHOICES}")
            self.choice = self.source = str(path.resolve())

    def fetch(self, pretrained: Callable[[], tuple[str, Path, dict[str, torch.Tensor]]]) -> None:
        """Get pretrained weights before the network is built (a large network takes seconds to initialise: an
        offline machine hears at once that the file is missing); load() then uses them."""
        if self.choice == "pretrained" and self._fetched is None:
            self._fetched = pretrained()

    def load(self, net: nn.Module, *, head: tuple[str, ...],
             pretrained: Callable[[], tuple[str, Path, dict[str, torch.Tensor]]],
             select: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> None:
        """Load into the full network `net`; keys under the `head` prefixes (the classifier) may be absent or extra.
        pretrained() -> (source, file, state_dict) fetches the published weights; select(state_dict) -> the part of
        it that `net` is (open_clip: the image tower of an image-text model)."""
        if self.choice == "random":
            return
        if self.choice == "pretrained":
            self.source, path, state = self._fetched or pretrained()
        else:
            path = Path(self.choice)
            state = read_state_dict(path, self.name)
        if select is not None:
            state = select(state)
        mismatch = first_mismatch(net, state, head)
        if mismatch:
            raise UsageError(f"{path}: not {self.name} weights: {mismatch}")
        own = net.state_dict()  # a classifier for other classes is not loaded (it is cut off anyway)
        net.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False)
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
        if spec.fixed_size and image_size != spec.image_size:
            raise UsageError(f"{spec.name} takes {spec.image_size}px inputs only (its position embeddings are "
                             f"fixed), not {image_size}px")
        # The families that ship torchvision-style transforms (library set) get their geometry too.
        shrink = ResizeCrop(image_size, spec.resize_for(image_size), spec.interpolation, bool(spec.library))
        self.request = FrameRequest(spec.clip_length, spec.clip_stride, spec.ends_only, shrink)
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
            "preprocessing": spec.preprocessing(self.image_size),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "weights": self.weights,
            "weights_source": self.weights_source,
            "weights_sha256": self.weights_sha256,
            "seed": RANDOM_SEED if self.weights == "random" else None,
        } | self._new_family_keys()

    def _new_family_keys(self) -> dict[str, Any]:
        # Only for the extractors that resize their own way: the descriptions of the others (and so the stores they
        # wrote) stay as they were.
        spec = self.spec
        if spec.resize is None and spec.interpolation == "bilinear" and not spec.library:
            return {}
        resize = spec.resize_for(self.image_size)
        return {"library": spec.library, "resize": list(resize) if isinstance(resize, tuple) else resize,
                "interpolation": spec.interpolation}
