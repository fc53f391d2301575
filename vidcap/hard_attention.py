"""Hard attention learned by REINFORCE (Xu et al., ICML 2015, "Show, Attend and Tell", section 4.1).

With `attention: hard` (vidcap.model) the decoder reads one frame per word, s_t ~ Multinoulli(alpha_t), instead of the
expected context sum_i alpha_ti v_i. Picking a frame is not differentiable: the attention is trained as a policy whose
reward is the caption's log-likelihood. Per caption, cross-entropy training maximises

    log p(y | s, v) + lambda_r (log p(y | s, v) - b) sum_t log alpha_t[s_t] + lambda_e sum_t H[alpha_t]

where b is a moving average of log p(y | s, v) over batches (b <- 0.9 b + 0.1 batch mean, started at the first
batch's mean). The first term trains everything but the attention (the frame was picked, not weighted); the second,
REINFORCE with a baseline, trains the attention; the entropy bonus keeps it from settling on one frame too early.
As in the original, with probability 0.5 a caption uses the expected context instead of a sample (vidcap.model
tosses the coin): its steps train the attention by backpropagation and add no REINFORCE term.

At test time the model takes the most likely frame (argmax of alpha_t): deterministic, like greedy and beam search,
and what `--explain` marks. Under self-critical training (vidcap.scst) the frame choices are part of the sampled
caption and share its reward (CIDEr-D) and baseline; the entropy bonus stays.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vidcap.errors import UsageError

_TINY = 1e-12  # keeps log(alpha) finite on padded frames (alpha = 0), which are never taken


@dataclass(frozen=True)
class HardAttentionOptions:
    """REINFORCE for hard attention (the `model.hard_attention` section; used only with `attention: hard`)."""

    reward_weight: float = 1.0  # lambda_r, weight of the REINFORCE term
    entropy_weight: float = 0.002  # lambda_e, weight of the attention entropy bonus
    baseline_decay: float = 0.9  # b <- decay * b + (1 - decay) * mean log-likelihood of the batch

    def __post_init__(self) -> None:
        if self.reward_weight < 0 or self.entropy_weight < 0:
            raise UsageError(f"hard_attention weights must be >= 0 (got reward_weight={self.reward_weight}, "
                             f"entropy_weight={self.entropy_weight})")
        if not 0 <= self.baseline_decay < 1:
            raise UsageError(f"hard_attention.baseline_decay must be in [0, 1) (got {self.baseline_decay})")


def frame_log_probs(alpha: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """log alpha[frame] of the frames taken: alpha (..., T), frames (...) long, -1 where the expected context was
    used -> (...) float, 0 at those."""
    taken = frames >= 0
    picked = alpha.gather(-1, frames.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.log(picked.clamp(min=_TINY)) * taken


class HardAttentionObjective(nn.Module):
    """The REINFORCE and entropy terms of cross-entropy training, and the moving-average baseline b (a buffer: it
    is saved in checkpoints and resumes with them)."""

    def __init__(self, options: HardAttentionOptions):
        super().__init__()
        self.options = options
        self.register_buffer("baseline", torch.tensor(float("nan")))  # NaN: no batch seen yet

    def forward(self, log_likelihood: torch.Tensor, alpha: torch.Tensor, frames: torch.Tensor,
                token_mask: torch.Tensor, entropy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log_likelihood: (B,) log p(y | s, v) of each caption; alpha: (B, L, T); frames: (B, L) long (-1: the
        expected context); token_mask: (B, L) bool, the caption's steps (EOS included); entropy: the attention
        entropy summed over those steps, mean over captions (vidcap.model.CaptionModel.attention_entropy) ->
        (the term to add to the loss, mean over captions; the baseline this batch was compared with). Updates the
        baseline."""
        reward = log_likelihood.detach().float()
        mean = reward.mean()
        baseline = torch.where(torch.isnan(self.baseline), mean, self.baseline)
        self.baseline.copy_(self.options.baseline_decay * baseline + (1 - self.options.baseline_decay) * mean)
        steps = token_mask.to(alpha.dtype)
        reinforce = ((reward - baseline) * (frame_log_probs(alpha, frames) * steps).sum(1)).mean()
        return -(self.options.reward_weight * reinforce + self.options.entropy_weight * entropy), baseline
