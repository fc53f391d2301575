"""The captioner: an LSTM decoder with temporal soft attention over frame features (Yao et al., ICCV 2015).

A pure `nn.Module`: no Lightning, no data loading, no decoding. Training (`vidcap.training.module`) calls `forward`
(teacher forcing); decoding (`vidcap.model.decoding`) calls `init_state` once per batch of videos and then `step` once
per word. Equations (docs/model.md), with v_1..v_T the (encoded) frame features:

    h_0 = tanh(W_h mean(v)),  c_0 = tanh(W_c mean(v))                      (mean over unmasked frames)
    e_ti = w^T tanh(W_a h_{t-1} + U_a v_i + b_a),  alpha_t = softmax(e_t)    (padded frames masked out)
    phi_t = sigmoid(w_s h_{t-1} + b_s) * sum_i alpha_ti v_i                  (selector gate, Show-Attend-Tell)
    h_t, c_t = LSTM([E y_{t-1}; phi_t], (h_{t-1}, c_{t-1}))
    logits_t = W_o dropout(tanh(W_l h_t + E y_{t-1} + W_p phi_t))            (deep output layer)

The variants are the rows of the paper's Table 1:
    basic         global features, phi_t = their masked mean at every step (no attention)
    local         basic over [global; local] features
    global        attention over global features
    local_global  attention over [global; local] features

Soft attention scores each frame from its own features and then sums, so it cannot see frame order. The optional
frame encoder gives the frames a sense of time: `position` adds a learned embedding of the frame index, `lstm` /
`bilstm` run a (bi)directional LSTM over the frames. `none` is the paper's model.

Sizes: the defaults (embed 256, hidden 512, attention 256) suit a CPU toolkit and MSVD-sized data. The paper used
word embeddings of 468, an LSTM of 3518 units and an attention projection as wide as the features
(configs/experiment/paper.yaml).

The original code's choices where vidcap's default differs (initialisation, a zero first input, non-inverted dropout
at three sites, attention over padded frames) are ModelConfig options; docs/paper_vs_original.md lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from vidcap.errors import UsageError
from vidcap.model.layers import FrameEncoder, original_steps, padded_linear, paper_init_

# The one definition of the choices: the config's type hints (LightningCLI) and the checks below both read these.
Variant = Literal["basic", "local", "global", "local_global"]
Encoder = Literal["none", "position", "lstm", "bilstm"]
Init = Literal["default", "paper"]
FirstInput = Literal["bos", "zero"]
DropoutSites = Literal["readout", "paper"]
Attention = Literal["soft", "hard"]
VARIANTS: tuple[str, ...] = get_args(Variant)
ENCODERS: tuple[str, ...] = get_args(Encoder)
_CHOICES = {"init": get_args(Init), "first_input": get_args(FirstInput), "dropout_sites": get_args(DropoutSites)}
ATTENTION_VARIANTS = ("global", "local_global")
LOCAL_VARIANTS = ("local", "local_global")

# Ids of the padding and begin tokens (vidcap.text.vocab.Vocabulary.PAD, .BOS); the padding embedding stays zero.
PAD_ID = 0
BOS_ID = 1
# On CUDA the output projection runs on a vocabulary padded to a multiple of this (tensor-core GEMM shapes); the
# padded logits are sliced off, so the results are those of the unpadded layer (issue 17).
VOCAB_MULTIPLE = 8


@dataclass
class ModelConfig:
    """Everything needed to rebuild a `CaptionModel`; plain types only, stored in checkpoints (`asdict`).

    The `model.architecture` section of the training config (vidcap.training.module); the data-derived sizes
    (vocab_size, global_dim, local_dim, max_frames) are filled in from the data module, never written by hand.
    Invalid values raise UsageError.
    """

    vocab_size: int  # V, including the 4 special tokens
    global_dim: int  # Dg, per-frame 2-D CNN features
    local_dim: int = 0  # Dl, per-frame 3-D CNN clip features (0: none in the store)
    variant: Variant = "local_global"  # a row of the paper's Table 1
    # "auto": "position" for the attention variants, "none" (the paper) for basic/local; stored resolved
    encoder: Literal[Encoder, "auto"] = "auto"
    embed_dim: int = 256  # E, word embedding and deep-output width
    hidden_dim: int = 512  # H, decoder LSTM (and frame encoder LSTM) width
    attention_dim: int = 256  # A, width of W_a h + U_a v
    dropout: float = 0.5  # before the output projection W_o
    max_frames: int = 26  # T at most (size of the position embedding table)
    selector: bool = True  # gate the attended context with beta_t = sigmoid(w_s h + b_s)
    # -- the original code's choices (issue 13; docs/paper_vs_original.md). The defaults are vidcap's. ------------
    # paper: weights and embeddings N(0, 0.01), each LSTM gate's recurrent block orthogonal, biases 0
    init: Init = "default"
    first_input: FirstInput = "bos"  # zero: the first step's input word is a zero vector instead of a learned BOS
    # readout: inverted dropout after the readout tanh. paper: non-inverted dropout (kept units unscaled, everything
    # times 1 - dropout at test) on the LSTM's i/f/o gate pre-activations, on h_t before the readout, after its tanh
    dropout_sites: DropoutSites = "readout"
    mask_attention: bool = True  # False: the softmax covers all T frames, zero-padded ones included (the original)
    prev2out: bool = True  # the previous word's embedding enters the deep output layer (the original's prev2out)
    ctx2out: bool = True  # the context phi_t enters the deep output layer (the original's ctx2out)
    # -- learning from rewards (issue 12; docs/model.md, "Hard attention") -------------------------------------
    # soft: phi_t = sum_i alpha_ti v_i. hard: phi_t = v_s, one frame s ~ alpha_t per word in training (learned by
    # REINFORCE, vidcap.training.hard_attention; half the captions use the expected context instead), argmax at test
    attention: Attention = "soft"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise UsageError(f"unknown variant {self.variant!r} (choose from {', '.join(VARIANTS)})")
        if self.encoder == "auto":
            self.encoder = "position" if self.variant in ATTENTION_VARIANTS else "none"
        if self.encoder not in ENCODERS:
            raise UsageError(f"unknown encoder {self.encoder!r} (choose from {', '.join(ENCODERS)})")
        if self.global_dim <= 0:
            raise UsageError(f"variant {self.variant!r} needs global features (global_dim={self.global_dim})")
        if self.variant in LOCAL_VARIANTS and self.local_dim <= 0:
            raise UsageError(
                f"variant {self.variant!r} needs local (3-D CNN) features, and local_dim={self.local_dim}"
            )
        if self.encoder == "bilstm" and self.hidden_dim % 2:
            raise UsageError(f"encoder 'bilstm' needs an even hidden_dim (got {self.hidden_dim})")
        if self.vocab_size <= PAD_ID + 1:
            raise UsageError(f"vocab_size must be > 1 (got {self.vocab_size})")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1) (got {self.dropout})")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise UsageError(f"unknown {name} {getattr(self, name)!r} (choose from {', '.join(choices)})")
        if self.attention not in get_args(Attention):
            raise UsageError(f"unknown attention {self.attention!r} (choose from soft, hard)")
        if self.attention == "hard" and not self.attends:
            raise UsageError(f"attention 'hard' needs an attention variant ({', '.join(ATTENTION_VARIANTS)}); "
                             f"{self.variant!r} reads the mean of the frames")

    @property
    def attends(self) -> bool:
        """Whether the decoder attends over the frames (the attention variants)."""
        return self.variant in ATTENTION_VARIANTS

    @property
    def feature_dim(self) -> int:
        """D, the width of `combine_features`' output."""
        return self.global_dim + (self.local_dim if self.variant in LOCAL_VARIANTS else 0)

    @property
    def context_dim(self) -> int:
        """C, the width of the encoded frames v_i that the decoder attends over."""
        return self.hidden_dim if self.encoder in ("lstm", "bilstm") else self.feature_dim


class CaptionModel(nn.Module):
    """Temporal-attention LSTM captioner; see the module docstring for the equations."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        V, E, H, A = config.vocab_size, config.embed_dim, config.hidden_dim, config.attention_dim
        C = config.context_dim
        self.encoder = FrameEncoder(config.encoder, config.feature_dim, H, config.max_frames)
        self.embed = nn.Embedding(V, E, padding_idx=PAD_ID)
        self.init_h = nn.Linear(C, H)
        self.init_c = nn.Linear(C, H)
        if config.attends:
            self.att_h = nn.Linear(H, A)  # W_a, b_a
            self.att_v = nn.Linear(C, A, bias=False)  # U_a
            self.att_w = nn.Linear(A, 1, bias=False)  # w (a bias would cancel in the softmax)
            self.select = nn.Linear(H, 1) if config.selector else None
        self.lstm = nn.LSTMCell(E + C, H)
        self.out_h = nn.Linear(H, E)  # W_l
        self.out_phi = nn.Linear(C, E, bias=False) if config.ctx2out else None  # W_p
        self.out_drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(E, V)  # W_o
        if config.init == "paper":
            paper_init_(self)
        if config.first_input == "zero":
            with torch.no_grad():  # never used: keep it out of the weight decay's sum
                self.embed.weight[BOS_ID].zero_()

    # -- features ------------------------------------------------------------------------------------------
    def combine_features(self, global_feats: torch.Tensor, local_feats: torch.Tensor | None) -> torch.Tensor:
        """global_feats: (B, T, Dg), local_feats: (B, T, Dl) or None -> feats (B, T, D) for this variant."""
        if self.config.variant in LOCAL_VARIANTS:
            if local_feats is None:
                raise ValueError(f"variant {self.config.variant!r} needs local features")
            return torch.cat([global_feats, local_feats.to(global_feats.dtype)], dim=-1)
        return global_feats

    # -- decoding interface --------------------------------------------------------------------------------
    def init_state(self, feats: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """feats: (B, T, D), mask: (B, T) bool -> the decoder state, every tensor batch-first.

        Keys: `h`, `c` (B, H); `mask` (B, T); attention variants `ctx` (B, T, C) and `ctx_proj` (B, T, A), the
        projection U_a v computed once per video here rather than once per word; basic variants `mean` (B, C)
        and `uniform` (B, T), the attention weights they report.
        """
        mask = mask.bool()
        ctx = self.encoder(feats, mask)
        weights = mask.to(ctx.dtype).unsqueeze(-1)
        mean = (ctx * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        state = {"h": torch.tanh(self.init_h(mean)), "c": torch.tanh(self.init_c(mean)), "mask": mask}
        if self.config.attends:
            # In the weights' dtype (float32 under bf16 autocast too): every decoding step reads them (`_advance`).
            dtype = self.lstm.weight_ih.dtype
            state["ctx"] = ctx.to(dtype)
            state["ctx_proj"] = self.att_v(ctx).to(dtype)
            if self.config.attention == "hard" and self.training:
                # Xu et al. 2015, section 4.1: with probability 0.5 a caption uses the expected context (one coin per
                # caption here, where the original tossed one per minibatch).
                state["expected"] = torch.rand(mask.shape[0], device=mask.device) < 0.5
        else:
            state["mean"] = mean
            frames = mask.to(torch.promote_types(ctx.dtype, torch.float32))
            state["uniform"] = frames / frames.sum(1, keepdim=True).clamp(min=1.0)
        return state

    def step(
        self, prev_tokens: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """prev_tokens: (B,) long -> (log_probs (B, V), alpha (B, T), new_state); float32 (or wider)."""
        emb = self._embed(prev_tokens)
        h, c, phi, alpha, frame = self._advance(emb, state)
        logits = self._output(h, emb, phi)
        new_state = {**state, "h": h, "c": c} if frame is None else {**state, "h": h, "c": c, "frame": frame}
        return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1), alpha, new_state

    # -- training ------------------------------------------------------------------------------------------
    def forward(
        self, feats: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing. feats: (B, T, D); mask: (B, T) bool; tokens: (B, L) long, `[BOS, w1, ..., wn]`
        padded with PAD -> (logits (B, L, V) predicting `[w1, ..., wn, EOS]`, alpha (B, L, T) float32)."""
        logits, alpha, _ = self.teacher_forcing(feats, mask, tokens)
        return logits, alpha

    def teacher_forcing(
        self, feats: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`forward`, and the frames that hard attention took: (logits, alpha, frames (B, L) long, -1 where a
        caption used the expected context; None with soft attention)."""
        state = self.init_state(feats, mask)
        emb = self._embed(tokens)  # (B, L, E)
        hs, phis, alphas, frames = [], [], [], []
        for t in range(tokens.shape[1]):
            h, c, phi, alpha, frame = self._advance(emb[:, t], state)
            state = {**state, "h": h, "c": c}
            hs.append(h)
            phis.append(phi)
            alphas.append(alpha)
            frames.append(frame)
        # The output layer does not feed back during teacher forcing: run it once over all steps.
        logits = self._output(torch.stack(hs, 1), emb, torch.stack(phis, 1))
        return logits, torch.stack(alphas, 1), None if frames[0] is None else torch.stack(frames, 1)

    def attention_penalty(
        self, alpha: torch.Tensor, token_mask: torch.Tensor, frame_mask: torch.Tensor, scale: str = "vidcap"
    ) -> torch.Tensor:
        """Doubly stochastic regulariser (1 - sum_t alpha_ti)^2. alpha: (B, L, T); token_mask: (B, L) bool (real
        steps, EOS included); frame_mask: (B, T) bool -> scalar.

        scale "vidcap": summed over the real frames of each video, real steps only, averaged over the batch (the
        NLL's per-caption scale). "paper", the original's: alpha summed over every step (padded ones too), the
        term averaged over all T frames and summed over the batch, so its weight grows with the batch size.
        """
        if scale == "paper":
            return ((1.0 - original_steps(alpha, token_mask).sum(1)) ** 2).mean(1).sum()
        total = (alpha * token_mask.unsqueeze(-1).to(alpha.dtype)).sum(1)  # (B, T)
        return (((1.0 - total) ** 2) * frame_mask.to(alpha.dtype)).sum(1).mean()

    def attention_entropy(self, alpha: torch.Tensor, token_mask: torch.Tensor, scale: str = "vidcap") -> torch.Tensor:
        """The original's optional entropy regulariser: sum over steps of -sum_i alpha_ti log(alpha_ti + 1e-8),
        averaged over the batch; the real steps only, or every step with scale "paper" (see attention_penalty).
        alpha: (B, L, T); token_mask: (B, L) bool -> scalar."""
        if scale == "paper":
            alpha, token_mask = original_steps(alpha, token_mask), torch.ones_like(token_mask)
        entropy = -(alpha * torch.log(alpha + 1e-8)).sum(-1) * token_mask.to(alpha.dtype)  # (B, L)
        return entropy.sum(1).mean()

    # -- internals -----------------------------------------------------------------------------------------
    def _attend(
        self, h: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """h: (B, H) the previous hidden state -> (phi (B, C), alpha (B, T) float32, exactly 0 on padding,
        frame (B,) long: the frame hard attention took, -1 for the expected context; None with soft attention)."""
        mask = state["mask"]
        scores = self.att_w(torch.tanh(state["ctx_proj"] + self.att_h(h).unsqueeze(1))).squeeze(-1)
        # Softmax in at least float32 (bf16 under autocast is too coarse). A finite fill (not -inf) keeps a
        # video with no real frame at alpha = 0 instead of NaN.
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        if self.config.mask_attention:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            alpha = torch.softmax(scores, dim=-1) * mask
        else:  # the original: padded (zero) frames take part in the softmax
            alpha = torch.softmax(scores, dim=-1)
        ctx = state["ctx"]
        weights, frame = (alpha, None) if self.config.attention == "soft" else self._take_frame(alpha, state)
        phi = torch.bmm(weights.unsqueeze(1).to(ctx.dtype), ctx).squeeze(1)
        if self.select is not None:
            phi = torch.sigmoid(self.select(h)).to(phi.dtype) * phi
        return phi, alpha, frame

    def _take_frame(self, alpha: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard attention: alpha (B, T) -> (weights (B, T): one-hot on the frame taken, or alpha itself on the
        captions that use the expected context; frame (B,) long, -1 on those). Training samples the frame from
        alpha; evaluation takes the argmax (the most likely frame, deterministic like greedy and beam search)."""
        if not self.training:
            frame = alpha.argmax(-1)
            return F.one_hot(frame, alpha.shape[-1]).to(alpha.dtype), frame
        probs = alpha.detach()
        # A video without a real frame has alpha = 0 everywhere: draw from all T (its context is zero anyway).
        probs = torch.where(probs.sum(-1, keepdim=True) > 0, probs, torch.ones_like(probs))
        frame = torch.multinomial(probs, 1).squeeze(1)
        expected = state["expected"]
        weights = torch.where(expected.unsqueeze(1), alpha, F.one_hot(frame, alpha.shape[-1]).to(alpha.dtype))
        return weights, frame.masked_fill(expected, -1)

    def _advance(
        self, emb: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One LSTM step. emb: (B, E), E y_{t-1} -> (h (B, H), c (B, H), phi (B, C), alpha (B, T), frame (B,) long
        or None: see `_attend`)."""
        # The step (attention, recurrent cell) in the weights' dtype (float32) even under bf16 autocast: in bf16, h and
        # c drift from step to step and change the beams that val/CIDEr, the checkpoint monitor, is computed from
        # (issue 17; tests/test_precision.py). Only the per-video work (frame encoder, U_a v, h_0, c_0) runs in bf16.
        dtype = self.lstm.weight_ih.dtype
        with torch.autocast(emb.device.type, enabled=False):
            if self.config.attends:
                phi, alpha, frame = self._attend(state["h"].to(dtype), state)
            else:
                phi, alpha, frame = state["mean"], state["uniform"], None
            x = torch.cat([emb.to(dtype), phi.to(dtype)], dim=-1)
            h, c = self._lstm_step(x, state["h"].to(dtype), state["c"].to(dtype))
        return h, c, phi, alpha, frame

    def _output(self, h: torch.Tensor, emb: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """Deep output layer, any leading shape: h (..., H), emb (..., E), phi (..., C) -> logits (..., V), in the
        weights' dtype (float32) even under autocast, like the recurrent cell (`_advance`)."""
        dtype = self.out.weight.dtype
        paper = self.config.dropout_sites == "paper"
        with torch.autocast(h.device.type, enabled=False):
            h = h.to(dtype)
            readout = self.out_h(self._paper_dropout(h) if paper else h)
            if self.config.prev2out:
                readout = readout + emb.to(dtype)
            if self.out_phi is not None:
                readout = readout + self.out_phi(phi.to(dtype))
            readout = torch.tanh(readout)
            x = self._paper_dropout(readout) if paper else self.out_drop(readout)
            return padded_linear(x, self.out, VOCAB_MULTIPLE if x.is_cuda else 1)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (...) long -> E y (..., E); with `first_input: zero` BOS gives a zero vector (the original)."""
        emb = self.embed(tokens)
        if self.config.first_input == "zero":
            emb = emb.masked_fill((tokens == BOS_ID).unsqueeze(-1), 0.0)
        return emb

    def _paper_dropout(self, x: torch.Tensor) -> torch.Tensor:
        """The original's non-inverted dropout: training keeps each unit unscaled with probability 1 - p, test
        multiplies everything by 1 - p (inverted dropout times 1 - p is exactly that)."""
        p = self.config.dropout
        return F.dropout(x, p, self.training) * (1.0 - p)

    def _lstm_step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, E + C), h, c: (B, H) -> (h, c). `dropout_sites: paper` drops the i, f, o gate pre-activations
        (the cell's own weights, written out: nn.LSTMCell has no hook between the product and the gates)."""
        if self.config.dropout_sites != "paper":
            return self.lstm(x, (h, c))
        cell = self.lstm
        gates = F.linear(x, cell.weight_ih, cell.bias_ih) + F.linear(h, cell.weight_hh, cell.bias_hh)
        i, f, g, o = gates.chunk(4, dim=-1)  # PyTorch's gate order
        i, f, o = (torch.sigmoid(self._paper_dropout(z)) for z in (i, f, o))
        c = f * c + i * torch.tanh(g)
        return o * torch.tanh(c), c
