"""torchvision's video models as local extractors (Kinetics-400 weights through torchvision): R3D-18, MC3-18,
R(2+1)D-18, S3D, MViTv2-S and Swin3D-T.

Each sees a clip centred on the sampled frame. Clip length and stride come from each model's own evaluation
settings (its weights' documentation: `clip_len` frames at `frame_rate` fps, taken from ~30 fps Kinetics videos, so
stride = 30 / frame_rate), preprocessing from its own transforms (VideoClassification: resize, centre crop,
mean/std). The feature is the input of the classifier: the pooled 512-d vector of the ResNet-style models, S3D's
1024 channels averaged over time and space, MViT's 768-d class token, Swin3D's 768-d pooled vector.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from vidcap.features.extractors.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Clip,
    ExtractorSpec,
    Weights,
    from_torch_hub,
)

KINETICS_MEAN_TV = (0.43216, 0.394666, 0.37645)  # torchvision's R(2+1)D family and S3D
KINETICS_STD_TV = (0.22803, 0.22145, 0.216989)
KINETICS_MEAN = (0.45, 0.45, 0.45)  # MViT (from SlowFast)
KINETICS_STD = (0.225, 0.225, 0.225)
SOURCE_FPS = 30  # Kinetics clips: the frame rate the models' frame_rate is taken from


def build(*, spec: ExtractorSpec, weights: Weights, arch: str) -> nn.Module:
    import torchvision.models as tvm

    url = tvm.get_model_weights(arch).KINETICS400_V1.url
    pretrained = partial(from_torch_hub, spec.name, url, weights.kind)
    weights.fetch(pretrained)
    net = tvm.get_model(arch, weights=None)
    head = {"s3d": "classifier", "mvit_v2_s": "head", "swin3d_t": "head"}.get(arch, "fc")
    weights.load(net, head=(f"{head}.",), pretrained=pretrained)
    net.eval()
    if arch == "s3d":
        # features -> AvgPool3d(2, 7, 7) -> classifier (1x1x1 conv) -> mean over time and space. The 224px pool does
        # not fit other sizes; without it the forward's mean is a global average of the last feature map.
        net.avgpool = nn.Identity()
    setattr(net, head, nn.Identity())
    return Clip(net)


def _spec(name: str, dim: int, size: int, resize, length: int, frame_rate: float, mean, std, summary: str,
          fixed: bool = False) -> ExtractorSpec:
    stride = round(SOURCE_FPS / frame_rate)
    return ExtractorSpec(
        name=name, kind="local", dim=dim, image_size=size, resize=resize, clip_length=length, clip_stride=stride,
        mean=mean, std=std, fixed_size=fixed, library="torchvision",
        summary=f"{summary} {length}x{stride}, Kinetics-400 (torchvision)",
        features="3-D network on a clip centred on the sampled frame; the classifier's input",
        build=partial(build, arch=name),
    )


EXTRACTORS = [
    _spec("r3d_18", 512, 112, (128, 171), 16, 15, KINETICS_MEAN_TV, KINETICS_STD_TV, "R3D-18"),
    _spec("mc3_18", 512, 112, (128, 171), 16, 15, KINETICS_MEAN_TV, KINETICS_STD_TV, "MC3-18"),
    _spec("r2plus1d_18", 512, 112, (128, 171), 16, 15, KINETICS_MEAN_TV, KINETICS_STD_TV, "R(2+1)D-18"),
    _spec("s3d", 1024, 224, (256, 256), 128, 15, KINETICS_MEAN_TV, KINETICS_STD_TV, "S3D"),
    _spec("mvit_v2_s", 768, 224, 256, 16, 7.5, KINETICS_MEAN, KINETICS_STD, "MViTv2-S", fixed=True),
    _spec("swin3d_t", 768, 224, 256, 32, 15, IMAGENET_MEAN, IMAGENET_STD, "Swin3D-T"),
]
