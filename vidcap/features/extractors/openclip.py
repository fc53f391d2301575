"""Image-text encoders from open_clip (PyPI open-clip-torch): OpenAI's CLIP ViT-B/32, B/16, L/14 and SigLIP ViT-B/16.

The feature of a sampled frame is the image embedding the model is trained to align with text: the image tower's
output after its projection (CLIP: the class token through ln_post and proj; SigLIP: the attention-pooled token
through its head), L2-normalised, as the contrastive loss compares it. Width: 512 (B/32, B/16), 768 (L/14, SigLIP
B/16). Preprocessing is the model's own (open_clip's preprocess_cfg): bicubic resize of the short side to 224 and a
centre crop for CLIP, a bicubic resize of the whole frame to 224x224 ("squash") for SigLIP, and each model's mean/std.

Pretrained weights are the files open_clip itself loads, from the Hugging Face Hub (its cache or a download); a path
loads the same file (the full image-text model's state_dict, .bin or .safetensors) copied elsewhere.
"""

from __future__ import annotations

import logging
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from vidcap.features.extractors.base import ExtractorSpec, Weights, from_hf_hub, read_state_dict

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# What open_clip publishes for each (model, tag) on the Hub, in the order open_clip prefers them.
HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
FEATURES = ("image embedding the model aligns with text (the image tower's projected output), L2-normalised, "
            "one per sampled frame")


def network(arch: str, tag: str) -> nn.Module:
    """The full image-text model of `arch` as open_clip builds it for `tag`'s weights, freshly initialised (the
    published state_dicts are this model's)."""
    import open_clip

    root = logging.getLogger()
    quiet = _DropRandomInitWarning()
    root.addFilter(quiet)  # vidcap loads the weights itself, after open_clip warned that it did not
    try:
        return open_clip.create_model(arch, pretrained=None, force_quick_gelu=_quick_gelu(arch, tag))
    finally:
        root.removeFilter(quiet)


def image_tower(arch: str, tag: str) -> nn.Module:
    """Only the image tower of `network(arch, tag)` (the text tower is never used: half the build time, and 123M
    parameters fewer for ViT-L/14), freshly initialised; its state_dict keys are the full model's "visual." ones."""
    import open_clip
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    config = open_clip.get_model_config(arch)
    return _build_vision_tower(config["embed_dim"], CLIPVisionCfg(**config["vision_cfg"]), _quick_gelu(arch, tag))


def _quick_gelu(arch: str, tag: str) -> bool:
    import open_clip

    # OpenAI's CLIP weights need QuickGELU (open_clip sets it when it loads them; random weights get the same network).
    return bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False)
                or open_clip.get_model_config(arch).get("quick_gelu", False))


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


class ImageEmbedding(nn.Module):
    """open_clip's image tower on one frame per step: (N, 1, 3, S, S) -> L2-normalised embeddings (N, D)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(x[:, 0]), dim=-1)


def build(*, spec: ExtractorSpec, weights: Weights, arch: str, tag: str) -> nn.Module:
    import open_clip

    def pretrained():
        repo = open_clip.get_pretrained_cfg(arch, tag)["hf_hub"].strip("/")
        source, path = from_hf_hub(spec.name, weights.kind, repo, HUB_FILES)
        return source, path, read_state_dict(path, spec.name)

    weights.fetch(pretrained)
    visual = image_tower(arch, tag)

    # The file is the published state_dict of the whole image-text model: its "visual." keys are the image tower's.
    weights.load(visual, head=(), pretrained=pretrained, select=image_keys)
    return ImageEmbedding(visual.eval())


def image_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower's part of a whole-model state_dict (a state_dict of the tower alone is kept as it is)."""
    if not any(key.startswith("visual.") for key in state):
        return state
    return {key[len("visual."):]: value for key, value in state.items() if key.startswith("visual.")}


def _spec(name: str, arch: str, tag: str, dim: int, summary: str, *, mean=OPENAI_MEAN, std=OPENAI_STD,
          squash: bool = False) -> ExtractorSpec:
    return ExtractorSpec(
        name=name, kind="global", dim=dim, image_size=224, mean=mean, std=std, interpolation="bicubic",
        resize=(224, 224) if squash else 224, fixed_size=True, library="open-clip-torch",
        summary=f"{summary} (open_clip {arch} '{tag}'): the projected image embedding aligned with text, "
        "L2-normalised",
        features=FEATURES, build=partial(build, arch=arch, tag=tag),
    )


EXTRACTORS = [
    _spec("clip_vit_b32", "ViT-B-32", "openai", 512, "CLIP ViT-B/32, OpenAI weights"),
    _spec("clip_vit_b16", "ViT-B-16", "openai", 512, "CLIP ViT-B/16, OpenAI weights"),
    _spec("clip_vit_l14", "ViT-L-14", "openai", 768, "CLIP ViT-L/14, OpenAI weights"),
    _spec("siglip_vit_b16", "ViT-B-16-SigLIP", "webli", 768, "SigLIP ViT-B/16, WebLI weights", mean=(0.5,) * 3,
          std=(0.5,) * 3, squash=True),
]
