"""`frame_delta_efficientnet_lite0`: an offline stand-in for a 3-D CNN, and *not* one.

Its feature for a sampled frame is the change of the 2-D EfficientNet-Lite0 features across the clip around it (the
clip's last frame minus its first), which carries the direction of motion that one frame cannot (issue 7).
"""

from __future__ import annotations

import torch
from torch import nn

from vidcap.features.extractors import efficientnet
from vidcap.features.extractors.base import ExtractorSpec, Weights


class FrameDelta(nn.Module):
    """(N, 2, 3, S, S) first and last frame of each clip -> (N, D) difference of their 2-D features."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        both = self.net(x.flatten(0, 1).contiguous(memory_format=torch.channels_last)).view(n, 2, -1)
        return both[:, 1] - both[:, 0]


def build(*, spec: ExtractorSpec, weights: Weights) -> nn.Module:
    return FrameDelta(efficientnet.pooled_features(spec=spec, weights=weights))


EXTRACTORS = [
    ExtractorSpec(
        name="frame_delta_efficientnet_lite0", kind="local", dim=1280, image_size=224, clip_length=4, clip_stride=2,
        ends_only=True, mean=efficientnet.LITE_MEAN, std=efficientnet.LITE_STD,
        summary="not a 3-D CNN: EfficientNet-Lite0 features of the clip's last frame minus its first (motion, offline)",
        features="2-D feature difference, not a 3-D CNN: pooled 2-D CNN features of the clip's last frame minus "
        "those of its first frame",
        build=build,
    ),
]
