"""2-D ImageNet CNNs from torchvision: GoogLeNet (the paper's global extractor) and ResNets."""

from __future__ import annotations

from functools import partial

from torch import nn

from vidcap.features.extractors.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ExtractorSpec,
    ImageBackbone,
    Weights,
    from_torch_hub,
)

HEAD = ("fc.", "aux1.", "aux2.")
FEATURES = "2-D CNN on the sampled frame; global average pool before the classifier"


def _load(net: nn.Module, spec: ExtractorSpec, weights: Weights, arch: str) -> None:
    import torchvision.models as tvm

    url = tvm.get_model_weights(arch).IMAGENET1K_V1.url
    weights.load(net, head=HEAD, pretrained=lambda: from_torch_hub(spec.name, url))
    net.eval()
    net.fc = nn.Identity()


def build_googlenet(*, spec: ExtractorSpec, weights: Weights) -> nn.Module:
    import torchvision.models as tvm

    # As torchvision's pretrained builder: the weights expect transform_input (inputs in ImageNet norm).
    net = tvm.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=True)
    _load(net, spec, weights, "googlenet")
    net.aux_logits = False
    net.aux1 = net.aux2 = None
    return ImageBackbone(net)


def build_resnet(*, spec: ExtractorSpec, weights: Weights, arch: str) -> nn.Module:
    import torchvision.models as tvm

    net = getattr(tvm, arch)(weights=None)
    _load(net, spec, weights, arch)
    return ImageBackbone(net)


def _spec(name: str, dim: int, summary: str, build) -> ExtractorSpec:
    return ExtractorSpec(name=name, kind="global", dim=dim, image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         summary=summary, features=FEATURES, build=build)


EXTRACTORS = [
    _spec("googlenet", 1024, "GoogLeNet (the paper's), torchvision ImageNet weights", build_googlenet),
    _spec("resnet50", 2048, "ResNet-50, torchvision ImageNet weights", partial(build_resnet, arch="resnet50")),
    _spec("resnet152", 2048, "ResNet-152, torchvision ImageNet weights", partial(build_resnet, arch="resnet152")),
]
