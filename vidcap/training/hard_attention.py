"""Hard attention learned by REINFORCE (Xu et al., ICML 2015, "Show, Attend and Tell", section 4.1).

With `attention: hard` (vidcap.model.captioner) the decoder reads one frame per word, s_t ~ Multinoulli(alpha_t), instead of the
expected context sum_i alpha_ti v_i. Picking a frame is not differentiable: the attention is trained as a policy whose
reward is the caption's log-likelihood. Per caption, cross-entropy training maximises

    log p(y | s, v) + lambda_r sum_t (G_t - b_t) log alpha_t[s_t] + lambda_e sum_t H[alpha_t]

The first term trains everything but the attention (the frame was picked, not weighted); the second, REINFORCE with a
baseline, trains the attention; the entropy bonus keeps it from settling on one frame too early. Xu et al. reward
every frame choice of a caption with the whole log-likelihood log p(y | s, v). A frame taken at step t cannot change
the words before t, so here its reward is the return G_t = sum_{t' >= t} log p(y_t' | ...), the log-likelihood of
the words from t on: the same expected gradient, less variance (on the demo's data, 9 epochs, lambda_r = 1: test CIDEr
3.11 against 2.59 with the whole caption's log-likelihood). The baseline b_t is a moving average of the returns of
the steps with as many words left (b <- 0.9 b + 0.1 batch mean, started at the first batch's mean): the return
shrinks towards the end of a caption, and one baseline for all steps would credit late frames for being late. As in
the original, with probability 0.5 a caption uses the expected context instead of a sample (vidcap.model.captioner
tosses the coin): its steps train the attention by backpropagation and add no REINFORCE term.

At test time the model takes the most likely frame (argmax of alpha_t): deterministic, like greedy and beam search,
and what `--explain` marks. Under self-critical training (vidcap.training.scst) the frame choices are part of the sampled
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

    reward_weight: float = 0.1  # lambda_r, weight of the REINFORCE term (configs/experiment/hard.yaml: how chosen)
    entropy_weight: float = 0.002  # lambda_e, weight of the attention entropy bonus
    baseline_decay: float = 0.9  # b <- decay * b + (1 - decay) * the batch's mean return (per number of words left)

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
    """The REINFORCE and entropy terms of cross-entropy training, and the moving-average baselines (a buffer: they
    are saved in checkpoints and resume with them)."""

    def __init__(self, options: HardAttentionOptions, max_steps: int = 128):
        super().__init__()
        self.options = options
        # baseline[n]: moving average of the return of a step with n words left (its own included); NaN: not seen yet.
        # Longer captions share the last entry.
        self.register_buffer("baseline", torch.full((max_steps + 1,), float("nan")))

    def forward(self, word_log_probs: torch.Tensor, alpha: torch.Tensor, frames: torch.Tensor,
                token_mask: torch.Tensor, entropy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """word_log_probs: (B, L) log p(y_t | ...) of each word of each caption (anything on padding); alpha:
        (B, L, T); frames: (B, L) long (-1: the expected context); token_mask: (B, L) bool, the caption's steps (EOS
        included); entropy: the attention entropy summed over those steps, mean over captions
        (vidcap.model.captioner.CaptionModel.attention_entropy) -> (the term to add to the loss, mean over captions; the mean
        baseline the batch's steps were compared with). Updates the baselines."""
        steps = token_mask.to(torch.float32)
        rewards = word_log_probs.detach().float() * steps
        returns = rewards.flip(1).cumsum(1).flip(1)  # G_t = sum_{t' >= t} log p(y_t')
        left = steps.flip(1).cumsum(1).flip(1).long().clamp(max=self.baseline.numel() - 1)  # words left at t
        index, taken = left[token_mask], returns[token_mask]
        sums = torch.zeros_like(self.baseline).index_add_(0, index, taken)
        counts = torch.zeros_like(self.baseline).index_add_(0, index, torch.ones_like(taken))
        seen = counts > 0
        batch_mean = sums / counts.clamp(min=1)
        start = torch.where(torch.isnan(self.baseline), batch_mean, self.baseline)
        decay = self.options.baseline_decay
        self.baseline.copy_(torch.where(seen, decay * start + (1 - decay) * batch_mean, self.baseline))
        baseline = start[left] * steps
        advantage = (returns - baseline) * steps
        reinforce = (advantage * frame_log_probs(alpha, frames)).sum(1).mean()
        mean_baseline = baseline.sum() / steps.sum().clamp(min=1)
        return -(self.options.reward_weight * reinforce + self.options.entropy_weight * entropy), mean_baseline
