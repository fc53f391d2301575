"""Any timm image backbone as a global extractor: `timm:<model name>` (e.g. timm:convnext_tiny,
timm:vit_small_patch14_dinov2, timm:eva02_base_patch14_224).

The feature of a sampled frame is the model's pooled pre-classifier feature (timm's forward_head(pre_logits=True):
what `timm.create_model(name, num_classes=0)` returns), its width read from the model. Preprocessing is the model's
own data config (timm.data.resolve_data_config: input size, interpolation, crop_pct, crop mode, mean/std): the short
side resized to input size / crop_pct, a centre crop (crop mode "squash": the whole frame resized, no crop).

Pretrained weights are the file timm itself loads from the Hugging Face Hub (its cache or a download) for the
model's default tag; a path loads a state_dict (timm's format, .safetensors or torch.save).
"""

from __future__ import annotations

import difflib
import math
from functools import partial

import torch
from torch import nn

from vidcap.errors import UsageError
from vidcap.features.extractors.base import (
    ExtractorSpec,
    ImageBackbone,
    Weights,
    from_hf_hub,
    read_state_dict,
)

PREFIX = "timm:"
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's order
FEATURES = "timm backbone on the sampled frame; pooled pre-classifier feature (forward_head(pre_logits=True))"


def _check_name(model: str) -> None:
    import timm

    if timm.is_model(model):
        return
    known = timm.list_models()
    close = difflib.get_close_matches(model, known, n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else "see timm.list_models()"
    raise UsageError(f"{PREFIX}{model}: timm {timm.__version__} has no model {model!r}; {hint}")


def _data_config(model: str) -> dict:
    import timm
    from timm.data import resolve_data_config

    with torch.device("meta"):  # the config only: no weights are allocated
        net = timm.create_model(model, pretrained=False, num_classes=0)
    config = resolve_data_config({}, model=net)
    config["dim"] = int(getattr(net, "head_hidden_size", None) or net.num_features)
    config["fixed"] = bool(net.pretrained_cfg.get("fixed_input_size", False))
    return config


def spec(name: str) -> ExtractorSpec:
    """The spec of `timm:<model>`; UsageError naming the closest models timm knows for an unknown one."""
    model = name[len(PREFIX):]
    _check_name(model)
    config = _data_config(model)
    _, height, width = config["input_size"]
    size = min(height, width)
    mode = config.get("crop_mode", "center")
    scaled = math.floor(size / config.get("crop_pct", 1.0))
    resize: int | tuple[int, int] = (scaled, scaled) if mode == "squash" else scaled
    return ExtractorSpec(
        name=name, kind="global", dim=config["dim"], image_size=size, mean=tuple(config["mean"]),
        std=tuple(config["std"]), interpolation="bicubic" if config["interpolation"] == "bicubic" else "bilinear",
        resize=resize, fixed_size=config["fixed"], library="timm",
        summary=f"timm {model}: pooled pre-classifier feature ({config['dim']}-d)", features=FEATURES,
        build=partial(build, model=model),
    )


def build(*, spec: ExtractorSpec, weights: Weights, model: str) -> nn.Module:
    import timm

    def pretrained():
        config = timm.get_pretrained_cfg(model)
        repo = config.hf_hub_id if config is not None else None
        if not repo:
            raise UsageError(f"{spec.name}: timm has no Hugging Face Hub weights for {model}; pass a state_dict file "
                             "as a path, or use random weights")
        source, path = from_hf_hub(spec.name, weights.kind, repo, HUB_FILES)
        return source, path, read_state_dict(path, spec.name)

    weights.fetch(pretrained)
    net = timm.create_model(model, pretrained=False)
    classifier = net.pretrained_cfg.get("classifier") or "head"
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    weights.load(net, head=tuple(f"{h}." for h in heads), pretrained=pretrained)
    net.reset_classifier(0)
    return ImageBackbone(net.eval())


EXTRACTORS: list[ExtractorSpec] = []  # names are open-ended: vidcap.features.extractors.spec_for builds them
