"""Caption video files with a trained checkpoint: the Python API behind `vidcap caption`.

    captioner = load_captioner("runs/best.ckpt")            # model, vocabulary, feature extractors, K, decoding
    result = caption_video("clip.mp4", captioner)           # with the model's decoding options (captioner.decoding)
    result.caption, result.score, result.attention          # str, log-prob, (L, K) weights
    greedy = with_overrides(captioner.decoding, beam_size=1)  # vidcap.model.checkpoint: flags in place of the model's

A checkpoint alone rebuilds the captioner: `checkpoint["vidcap"]` (written by vidcap.training.module) holds the model
sizes, the vocabulary, the feature store's meta.json and the decoding options, so the video is sampled and its
features extracted exactly as `vidcap extract` did for training (same extractors, same weights, same frame count,
same float16 rounding) and decoded as `vidcap evaluate` decodes it. Loading never executes code from the file:
`torch.load(weights_only=True)` and a JSON-typed vocabulary.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidcap.errors import CheckpointError, UsageError
from vidcap.features.extractors import RANDOM_SEED, Extractor, build_extractors_from_meta, sampled_features
from vidcap.features.store import sampling_of
from vidcap.model.captioner import LOCAL_VARIANTS, CaptionModel
from vidcap.model.checkpoint import read_checkpoint, rebuild, store_mismatches, trained_decoding
from vidcap.model.decoding import DecodingOptions, decode, words_and_attention
from vidcap.precision import autocast, check_precision
from vidcap.text.vocab import Vocabulary
from vidcap.video.reader import SAMPLING_RULE, FrameRequest, SampledFrames, read_sampled_frames

logger = logging.getLogger(__name__)

# Sampled frames kept in a CaptionResult for explanations are shrunk to at most this height: 26 frames of a 4K
# video would otherwise hold ~650 MB; the explanation strip draws them ~120 px high anyway.
FRAME_HEIGHT = 240


@dataclass
class Captioner:
    """Everything needed to caption a video, rebuilt from one checkpoint by `load_captioner`.

    extractors: {"global": Extractor, "local": Extractor} (the kinds the checkpoint's features have);
    num_frames: K, frames sampled per video; feature_dtype: the feature store's dtype (features are rounded
    through it, as training saw them); feature_meta: the store's meta.json as recorded in the checkpoint;
    precision: the captioning model's, "32-true" or "bf16-mixed" (the extractors run as the store recorded);
    decoding: the decoding options the model was trained with (the checkpoint's), what `caption_video` uses by default.
    """

    model: CaptionModel
    vocab: Vocabulary
    extractors: dict[str, Extractor]
    num_frames: int
    feature_dtype: str
    feature_meta: dict[str, Any]
    checkpoint: Path
    device: torch.device
    precision: str = "32-true"
    decoding: DecodingOptions = field(default_factory=DecodingOptions)


@dataclass
class CaptionResult:
    """The caption of one video and what it was made from.

    caption: the best caption; score: its log-probability (sum over its words and EOS);
    alternatives: the n-best list, best first, as (caption, log-prob) pairs (alternatives[0] is the caption);
    words: the L tokens the attention rows belong to: the caption's tokens, then "<eos>";
    frame_times: (K,) float32 seconds of the sampled frames (padding of videos shorter than K frames dropped);
    attention: (L, K) float32, row l = the attention weights over the frames when words[l] was emitted;
    frames: (K, h, w, 3) uint8 sampled frames at most FRAME_HEIGHT high (only with `with_frames=True`);
    taken: hard attention only (None with soft): the frame each word took (index into frame_times), the argmax of
    its attention row (vidcap.training.hard_attention).
    """

    path: str
    caption: str
    score: float
    alternatives: list[tuple[str, float]]
    words: list[str]
    frame_times: np.ndarray
    attention: np.ndarray
    frames: np.ndarray | None = field(default=None, repr=False)
    taken: list[int] | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain types for `json.dumps` (what `vidcap caption --json` prints)."""
        return {
            "path": self.path,
            "caption": self.caption,
            "score": round(self.score, 6),
            "alternatives": [{"caption": text, "score": round(score, 6)} for text, score in self.alternatives],
            "frame_times": [round(float(t), 4) for t in self.frame_times],
            "words": list(self.words),
            "attention": [[round(float(a), 6) for a in row] for row in self.attention],
            **({"taken": list(self.taken)} if self.taken is not None else {}),
        }


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as error:
        raise UsageError(f"--device {device!r}: {error}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return dev


def load_captioner(checkpoint: str | os.PathLike, device: str | torch.device = "cpu",
                   precision: str = "32-true") -> Captioner:
    """Rebuild the captioner a checkpoint describes: model (eval mode), vocabulary, feature extractors, K, and the
    decoding options it was trained with. precision: the model's (vidcap.precision.PRECISIONS).

    Raises CheckpointError (naming the file and the reason) for a missing, corrupt or non-vidcap checkpoint, one of
    another format version, one whose pickle would need to run code, or one whose feature extractors cannot be
    rebuilt here (e.g. a weights file that is not on this machine).
    """
    path = Path(checkpoint)
    dev = _device(device)
    check_precision(precision)
    # weights_only: no pickled code runs
    model, vocab, section = rebuild(read_checkpoint(path, map_location="cpu"), str(path))
    meta, decoding = section["features"], trained_decoding(section, str(path))
    if not isinstance(meta, dict) or not (meta.get("global") or meta.get("local")):
        raise CheckpointError(f"{path}: the checkpoint does not describe its feature extractors "
                              "(checkpoint['vidcap']['features'] is empty)")
    try:
        sampling = sampling_of(meta)
        num_frames = int(sampling["num_frames"])
        dtype = str(np.dtype(meta.get("dtype", "float32")))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: bad feature description in the checkpoint: {error}") from None
    if sampling.get("rule") != SAMPLING_RULE:
        raise CheckpointError(f"{path}: its features were sampled with rule {sampling.get('rule')!r}; this vidcap "
                              f"samples frames with {SAMPLING_RULE!r} only")
    for kind in ("global", "local"):
        desc = meta.get(kind)
        if desc and desc.get("weights") == "external":
            raise CheckpointError(
                f"{path}: trained on features shipped with a dataset ({desc.get('source') or desc.get('name')}); "
                "no extractor can compute them from a video file: evaluate it on its feature store instead"
            )
        if desc and desc.get("weights") == "random" and desc.get("seed", RANDOM_SEED) != RANDOM_SEED:
            raise CheckpointError(
                f"{path}: its {kind} extractor {desc.get('name')} had random weights with seed {desc.get('seed')}; "
                f"this vidcap builds random extractors with seed {RANDOM_SEED} only"
            )
    config = model.config
    used = meta
    if config.variant not in LOCAL_VARIANTS and meta.get("local"):
        # The store had local features this model never reads: do not build (or run) that network.
        used = {**meta, "local": None}
    try:
        extractors = build_extractors_from_meta(used, device=dev)
    except (UsageError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: cannot rebuild the feature extractors it was trained with: {error}") from None
    # The features these extractors compute, checked against the model as a feature store would be.
    computed = {**used, **{kind: {**(used.get(kind) or {}), "name": extractor.name, "dim": extractor.dim}
                           for kind, extractor in extractors.items()}}
    computed.update({kind: None for kind in ("global", "local") if kind not in extractors})
    problems = store_mismatches(section, computed, label="its extractors")
    if problems:
        raise CheckpointError(f"{path}: its model cannot read the features it records: {'; '.join(problems)}")
    logger.info("loaded %s: %s/%s, V=%d, extractors %s, K=%d", path, config.variant, config.encoder, len(vocab),
                ", ".join(f"{k}={e.name}({e.weights})" for k, e in extractors.items()), num_frames)
    return Captioner(model=model.to(dev).eval(), vocab=vocab, extractors=extractors, num_frames=num_frames,
                     feature_dtype=dtype, feature_meta=meta, checkpoint=path, device=dev,
                     precision=precision, decoding=decoding)


def _read(path: str | os.PathLike, captioner: Captioner, backend: str, with_frames: bool) -> SampledFrames:
    """One pass over the video: the extractors' inputs, and the sampled frames shrunk to FRAME_HEIGHT if asked."""
    from vidcap.report.explain import thumbnails

    requests = {kind: ext.request for kind, ext in captioner.extractors.items()}
    if with_frames:
        requests["frames"] = FrameRequest(shrink=partial(thumbnails, height=FRAME_HEIGHT))
    return read_sampled_frames(path, captioner.num_frames, backend, requests)


def _model_inputs(sampled: SampledFrames, captioner: Captioner) -> dict[str, np.ndarray]:
    feats = sampled_features(sampled, captioner.extractors)
    for kind in captioner.extractors:
        # The store saved float16 (by default): round the same way so the model sees the values it was trained on.
        feats[kind] = feats[kind].astype(captioner.feature_dtype).astype(np.float32)
    return feats


def video_features(path: str | os.PathLike, captioner: Captioner, backend: str = "auto") -> dict[str, np.ndarray]:
    """The model inputs of one video, exactly as training saw them: {"global": (K, Dg), "local": (K, Dl) (the kinds
    the model reads), "mask": (K,) bool, "times": (K,) float32}, features float32 rounded through the store's dtype.
    Raises VideoError."""
    return _model_inputs(_read(path, captioner, backend, with_frames=False), captioner)


@dataclass
class VideoInputs:
    """What the model needs of one video, read once (`read_video`): its path, the model inputs (`video_features`'
    dict) and, when asked for, the sampled frames (K, h, w, 3) uint8 for explanations."""

    path: str
    features: dict[str, np.ndarray] = field(repr=False)
    frames: np.ndarray | None = field(default=None, repr=False)


def read_video(path: str | os.PathLike, captioner: Captioner, *, with_frames: bool = False,
               backend: str = "auto") -> VideoInputs:
    """Decode and extract the features of one video (the costly part of captioning, no decoding of words).
    Raises VideoError."""
    sampled = _read(path, captioner, backend, with_frames)
    return VideoInputs(path=str(path), features=_model_inputs(sampled, captioner),
                       frames=sampled.frames if with_frames else None)


def caption_inputs(videos: list[VideoInputs], captioner: Captioner,
                   options: DecodingOptions | None = None) -> list[CaptionResult]:
    """Caption videos read by `read_video` in one batched search: the B videos' (K, D) features are stacked into
    (B, K, D) and decoded together (K is the checkpoint's, the same for every video; short videos are masked).
    One video gives what `caption_video` gives; several give each the same captions, and log-probabilities equal
    up to float rounding of the batched matrix products."""
    options = options or captioner.decoding
    if not videos:
        return []
    model, dev, vocab = captioner.model, captioner.device, captioner.vocab

    def stacked(key: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([video.features[key] for video in videos])).to(dev)

    global_feats = stacked("global")
    local_feats = stacked("local") if "local" in videos[0].features else None
    with torch.inference_mode(), autocast(dev, captioner.precision):
        inputs = model.combine_features(global_feats, local_feats)
        searched = decode(model, inputs, stacked("mask"), options, bos_id=vocab.BOS, eos_id=vocab.EOS)
    results = []
    for video, hypotheses in zip(videos, searched, strict=True):
        valid = video.features["mask"]
        best = hypotheses[0]
        words, attention = words_and_attention(best, vocab, valid)
        result = CaptionResult(
            path=video.path,
            caption=vocab.decode(best.tokens),
            score=float(best.log_prob),
            alternatives=[(vocab.decode(h.tokens), float(h.log_prob)) for h in hypotheses],
            words=words,
            frame_times=video.features["times"][valid].astype(np.float32),
            attention=attention,
        )
        if model.config.attention == "hard":
            result.taken = result.attention.argmax(1).tolist()
        if video.frames is not None:
            result.frames = video.frames[valid]
        results.append(result)
    return results


def caption_video(
    path: str | os.PathLike,
    captioner: Captioner,
    options: DecodingOptions | None = None,
    *,
    with_frames: bool = False,
    backend: str = "auto",
) -> CaptionResult:
    """Caption one video file. Only the K sampled frames (and the clips around them for local features) are decoded.

    options: beam size, n-best, ... (vidcap.model.decoding.DecodingOptions); None: `captioner.decoding`, the options the
    model was trained with.
    with_frames: also return the sampled frames (for vidcap.report.explain), shrunk to at most FRAME_HEIGHT pixels high.
    Raises VideoError (missing, empty, unreadable file, no video stream, no decodable frame).
    """
    video = read_video(path, captioner, with_frames=with_frames, backend=backend)
    return caption_inputs([video], captioner, options)[0]


def explain_result(result: CaptionResult, png: str | os.PathLike, subtitle: str | None = None) -> Path:
    """Write the attention explanation of `result` (which needs `with_frames=True`) to `png`."""
    from vidcap.report.explain import render_explanation

    if result.frames is None:
        raise UsageError("explain_result needs the frames: caption_video(..., with_frames=True)")
    if subtitle is None:
        k = len(result.frame_times)
        subtitle = f"{Path(result.path).name}  \u00b7  log-prob {result.score:.2f}  \u00b7  {k} frame{'s' * (k != 1)}"
    return render_explanation(png, result.frames, result.frame_times, result.words, result.attention,
                              result.caption, subtitle=subtitle, taken=result.taken)


__all__ = ["Captioner", "CaptionResult", "VideoInputs", "caption_inputs", "caption_video", "explain_result",
           "load_captioner", "read_video", "video_features"]
