"""Sampling captions with gradients: the policy that self-critical training (vidcap.training.scst) learns from.

`sample(model, feats, mask, num_samples=K, ...)` draws K captions for each of B videos from any model with the
`init_state` / `step` interface (vidcap.model.decoding describes it), all B*K together: the frames are encoded, and the
attention's U_a v projected, once per video in `init_state`; the state is then repeated K times (sample k of video b
is row b*K + k), so the gradient of every sample flows back into its video's one encoding.

At each step a word is drawn from softmax(logits / temperature) (temperature 0: the argmax, i.e. greedy search); a
caption ends at EOS, or after `max_len` words, where EOS is forced (its probability under the forced choice is 1:
it adds nothing to the log-probability). The log-probabilities are those of the sampling distribution, with
gradients. With hard attention (vidcap.model.captioner, `attention: hard`) the model also samples a frame per word; its
choice and the attention weights are returned for REINFORCE (vidcap.training.hard_attention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributions import Categorical

from vidcap.model.captioner import PAD_ID


@dataclass
class Samples:
    """N = B*K captions, sample k of video b at row b*K + k; L steps (the longest caption, EOS included).

    tokens: (N, L) long, the words, then EOS (forced after max_len words), then PAD. log_probs: (N, L) float32,
        log-prob of each token under the sampling distribution, 0 after EOS (with gradients). mask: (N, L) bool,
        True on the caption's tokens (words and EOS).
    entropy: (N, L) float32, entropy of the word distribution at each step, 0 after EOS (no gradients).
    alpha: (N, L, T) float32 with gradients, frames: (N, L) long; hard attention only (None otherwise): the
        attention weights of each step and the frame taken (-1 where the caption used the expected context, and
        after EOS).
    """

    tokens: torch.Tensor
    log_probs: torch.Tensor
    mask: torch.Tensor
    entropy: torch.Tensor
    alpha: torch.Tensor | None = None
    frames: torch.Tensor | None = None

    def words(self, eos_id: int = 2) -> list[list[int]]:
        """The word ids of each caption (EOS and padding dropped): N lists, one host transfer."""
        rows = self.tokens.masked_fill(~self.mask, eos_id).tolist()
        return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]


def sample(
    model, feats: torch.Tensor, mask: torch.Tensor, num_samples: int = 5, max_len: int = 30,
    temperature: float = 1.0, bos_id: int = 1, eos_id: int = 2,
) -> Samples:
    """K = num_samples captions per video. feats: (B, T, D) float; mask: (B, T) bool -> Samples of N = B*K rows.

    Runs with gradients in whatever mode the model is in (training: dropout and hard attention's frame sampling
    on). temperature 0 takes the most likely word at every step (greedy search, the self-critical baseline).
    """
    if num_samples < 1 or max_len < 1 or temperature < 0:
        raise ValueError(f"need num_samples >= 1, max_len >= 1, temperature >= 0; got {num_samples}, {max_len}, "
                         f"{temperature}")
    B, device = feats.shape[0], feats.device
    state = model.init_state(feats, mask.bool())
    rows = torch.arange(B, device=device).repeat_interleave(num_samples)
    state = {key: value.index_select(0, rows) for key, value in state.items()}
    N = B * num_samples
    prev = torch.full((N,), bos_id, dtype=torch.long, device=device)
    done = torch.zeros(N, dtype=torch.bool, device=device)
    tokens, log_probs, masks, entropies, alphas, frames = [], [], [], [], [], []
    for t in range(max_len + 1):
        step_log_probs, alpha, state = model.step(prev, state)
        if t == max_len:  # a point mass on EOS: log-prob 0, entropy 0
            step_log_probs = torch.full_like(step_log_probs, float("-inf"))
            step_log_probs[:, eos_id] = 0.0
        elif temperature not in (0, 1):
            step_log_probs = torch.log_softmax(step_log_probs / temperature, dim=-1)
        words = Categorical(logits=step_log_probs, validate_args=False)
        token = step_log_probs.argmax(-1) if temperature == 0 else words.sample()
        live = ~done
        tokens.append(token.masked_fill(done, PAD_ID))
        log_probs.append(words.log_prob(token) * live)
        masks.append(live)
        entropies.append(words.entropy().detach() * live)
        if "frame" in state:
            alphas.append(alpha)
            frames.append(state["frame"].masked_fill(done, -1))
        done = done | (token == eos_id)
        if bool(done.all()):
            break
        prev = token
    alpha, frame = (torch.stack(alphas, 1), torch.stack(frames, 1)) if frames else (None, None)
    return Samples(torch.stack(tokens, 1), torch.stack(log_probs, 1), torch.stack(masks, 1),
                   torch.stack(entropies, 1), alpha, frame)
