"""3-D video CNNs from pytorchvideo's model zoo (Kinetics-400 weights): X3D, Slow, R(2+1)D, C2D, SlowFast.

Each sees a clip of clip_length frames clip_stride apart, centred on the sampled frame.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from vidcap.features.extractors.base import Clip, ExtractorSpec, Weights, from_torch_hub

# pytorchvideo's Kinetics models (torch hub tutorial values).
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
SLOWFAST_ALPHA = 4  # the slow pathway sees every 4th frame of the fast one


def _hub():
    # Never pytorchvideo.transforms: it imports torchvision.transforms.functional_tensor, which is gone.
    # pytorchvideo calls torch.jit.script at import; its deprecation warning says nothing to our users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from pytorchvideo.models import hub
    return hub


def network(arch: str) -> nn.Module:
    """The full architecture (classifier included), freshly initialised."""
    return getattr(_hub(), arch)(pretrained=False)


def _checkpoint_url(arch: str) -> str:
    hub = _hub()
    for module in (hub.x3d, hub.resnet, hub.r2plus1d, hub.slowfast):
        if arch in module.checkpoint_paths:
            return module.checkpoint_paths[arch]
    raise ValueError(f"no pretrained weights known for {arch}")


def _pooled(net: nn.Module) -> nn.Module:
    """Cut the classifier off. The fixed-size AvgPool3d layers assume the training input size; adaptive pooling makes
    the pooled features (the input of head.proj) work at any size."""
    head = net.blocks[-1]
    head.proj = head.activation = head.dropout = None
    if isinstance(head.pool, nn.AvgPool3d):
        head.pool = nn.AdaptiveAvgPool3d(1)
    elif head.pool is not None and isinstance(getattr(head.pool, "pool", None), nn.AvgPool3d):  # X3D ProjectedPool
        head.pool.pool = nn.AdaptiveAvgPool3d(1)
    return net


def _loaded(spec: ExtractorSpec, weights: Weights) -> nn.Module:
    net = network(spec.name)
    head = (f"blocks.{len(net.blocks) - 1}.proj.",)
    weights.load(net, head=head, pretrained=lambda: from_torch_hub(spec.name, _checkpoint_url(spec.name)))
    return _pooled(net.eval())


class SlowFast(Clip):
    def __init__(self, net: nn.Module, clip_length: int):
        super().__init__(net)
        # Slow pathway: clip_length / alpha frames spread over the clip (pytorchvideo's PackPathway). Computed once,
        # on the CPU, and moved with the module: built on the CPU in every forward it cost a copy and a sync on GPU.
        slow = torch.linspace(0, clip_length - 1, clip_length // SLOWFAST_ALPHA).long()
        self.register_buffer("slow_index", slow, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clip = x.permute(0, 2, 1, 3, 4).contiguous()  # (N, 3, L, S, S), the fast pathway
        # A fresh list each call: SlowFast's forward overwrites the list it is given.
        return self.net([clip.index_select(2, self.slow_index), clip])


def build_clip(*, spec: ExtractorSpec, weights: Weights) -> nn.Module:
    return Clip(_loaded(spec, weights))


def build_slowfast(*, spec: ExtractorSpec, weights: Weights) -> nn.Module:
    net = _loaded(spec, weights)
    pathway_pool = net.blocks[-2]
    pathway_pool.pool = nn.ModuleList([nn.AdaptiveAvgPool3d(1) for _ in pathway_pool.pool])
    return SlowFast(net, spec.clip_length)


CLIP_FEATURES = "3-D CNN on a clip centred on the sampled frame; adaptive average pool before the classifier"


def _spec(name: str, size: int, length: int, stride: int, summary: str, *, dim: int = 2048, build=build_clip,
          features: str = CLIP_FEATURES) -> ExtractorSpec:
    return ExtractorSpec(name=name, kind="local", dim=dim, image_size=size, clip_length=length, clip_stride=stride,
                         mean=KINETICS_MEAN, std=KINETICS_STD, summary=f"{summary}, Kinetics-400 (pytorchvideo hub)",
                         features=features, build=build)


EXTRACTORS = [
    _spec("x3d_xs", 182, 4, 12, "X3D-XS 4x12"),
    _spec("x3d_s", 182, 13, 6, "X3D-S 13x6"),
    _spec("x3d_m", 256, 16, 5, "X3D-M 16x5"),
    _spec("slow_r50", 256, 8, 8, "Slow R50 8x8"),
    _spec("r2plus1d_r50", 256, 16, 4, "R(2+1)D R50 16x4"),
    _spec("c2d_r50", 256, 8, 8, "C2D R50 8x8"),
    _spec("slowfast_r50", 256, 32, 2, "SlowFast R50 8x8 (32 fast frames, alpha 4)", dim=2304, build=build_slowfast,
          features="SlowFast on a clip centred on the sampled frame; pooled pathways concatenated before the "
          "classifier"),
]
