"""Building blocks of the captioner (vidcap.model.captioner): the frame encoder, the padded output projection, and the
original code's initialisation and padded-step attention (docs/model.md, docs/paper_vs_original.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

# Standard deviation of the original code's Gaussian initialisation (`init: paper`).
PAPER_INIT_STD = 0.01


def padded_linear(x: torch.Tensor, layer: nn.Linear, multiple: int) -> torch.Tensor:
    """layer(x) computed with the output rows padded with zeros to a multiple of `multiple`, then sliced back:
    x (..., in) -> (..., out), the same values and gradients as layer(x) to float rounding."""
    pad = -layer.out_features % multiple
    if not pad:
        return layer(x)
    bias = None if layer.bias is None else F.pad(layer.bias, (0, pad))
    return F.linear(x, F.pad(layer.weight, (0, 0, 0, pad)), bias)[..., : layer.out_features]


class FrameEncoder(nn.Module):
    """(B, T, D) frame features -> (B, T, C) context vectors; the valid frames of each video come first."""

    def __init__(self, kind: str, feature_dim: int, hidden_dim: int, max_frames: int):
        super().__init__()
        self.kind = kind
        self.max_frames = max_frames
        if kind == "position":
            self.position = nn.Embedding(max_frames, feature_dim)
            # Small so that the frame features dominate at the start of training.
            nn.init.normal_(self.position.weight, std=0.02)
        elif kind in ("lstm", "bilstm"):
            bidirectional = kind == "bilstm"
            self.rnn = nn.LSTM(
                feature_dim,
                hidden_dim // 2 if bidirectional else hidden_dim,
                batch_first=True,
                bidirectional=bidirectional,
            )

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """feats: (B, T, D) float; mask: (B, T) bool, True on real frames -> (B, T, C)."""
        T = feats.shape[1]
        if self.kind == "none":
            return feats
        if self.kind == "position":
            if T > self.max_frames:
                raise ValueError(f"{T} frames, but the position embedding has {self.max_frames}")
            return feats + self.position.weight[:T].to(feats.dtype)
        # Pack so that the backward direction starts at each video's last real frame, not at the padding.
        lengths = mask.sum(1).clamp(min=1).cpu()
        # float32 even under autocast: oneDNN has no bf16 LSTM on many CPUs, and this runs once per video.
        with torch.autocast(feats.device.type, enabled=False):
            packed = pack_padded_sequence(feats.float(), lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        return out


def original_steps(alpha: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """alpha (B, L, T) of a teacher-forced batch, token_mask (B, L) bool (real steps first) -> the attention the
    original computes at every step: it runs each caption for all L steps, holding h and c after the caption ends,
    so every padded step repeats the first one's attention (computed, here too, from the last real h)."""
    first_padded = token_mask.sum(1).clamp(max=alpha.shape[1] - 1)  # (B,); = L - 1 when nothing is padded
    repeated = alpha.gather(1, first_padded.view(-1, 1, 1).expand(-1, 1, alpha.shape[2]))  # (B, 1, T)
    return torch.where(token_mask.unsqueeze(-1), alpha, repeated)


def paper_init_(model: nn.Module) -> None:
    """The original code's initialisation, in place: every weight matrix and embedding N(0, 0.01), each gate's
    block of an LSTM's recurrent matrix orthogonal, every bias 0 (the padding embedding stays 0).

    The original also made any other square matrix orthogonal; at its sizes (docs/paper_vs_original.md) the only
    square one is the attention's feature projection, which it draws from the Gaussian as here.
    """
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if "bias" in name:
                    param.zero_()
                elif name.startswith("weight_hh"):  # (4H, H): one orthogonal H x H block per gate
                    for block in param.chunk(4, dim=0):
                        nn.init.orthogonal_(block)
                else:
                    param.normal_(0.0, PAPER_INIT_STD)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
