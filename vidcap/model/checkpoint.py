"""Vidcap checkpoints without Lightning: read one safely, check its "vidcap" section, rebuild the model.

A checkpoint written by `vidcap fit` is a Lightning checkpoint with one extra section (docs/architecture.md):
    checkpoint["vidcap"] = {"format": 1, "model": asdict(ModelConfig), "vocab": Vocabulary.to_dict(),
                            "features": the feature store's meta.json, "decoding": asdict(DecodingOptions)}
all plain types, so `torch.load(weights_only=True)` reads it and no pickled code ever runs. `caption` and `evaluate`
use this module alone: importing it does not import Lightning. `trained_decoding` gives the decoding options the
model was trained with, `store_mismatches` what keeps it from reading a feature store and a vocabulary (the checks of
`vidcap evaluate`, `vidcap caption` and `--model.init_from`).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from vidcap.errors import CheckpointError, UsageError
from vidcap.model.captioner import LOCAL_VARIANTS, CaptionModel, ModelConfig
from vidcap.model.decoding import DecodingOptions
from vidcap.text.vocab import Vocabulary

CHECKPOINT_FORMAT = 1
# What torch.load raises on a file that is not a (weights-only) checkpoint: the weights-only unpickler refusing an
# object, a broken zip, and garbage bytes that happen to parse as pickle opcodes.
LOAD_ERRORS = (pickle.UnpicklingError, zipfile.BadZipFile, OSError, RuntimeError, EOFError, ValueError, KeyError,
               IndexError, AttributeError, TypeError, UnicodeDecodeError)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def read_vidcap_section(checkpoint: Any, where: str) -> dict[str, Any]:
    """checkpoint["vidcap"], checked; CheckpointError naming `where` otherwise."""
    meta = checkpoint.get("vidcap") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: not a vidcap checkpoint (no 'vidcap' section)")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where}: checkpoint format {meta.get('format')!r} is not supported "
                              f"(expected {CHECKPOINT_FORMAT})")
    return meta


def _load_failure(error: BaseException) -> str:
    """One short line for why torch.load failed: its weights-only messages are a page long, with ANSI codes."""
    if isinstance(error, pickle.UnpicklingError):
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found:
            return (f"refused: loading it would run code ({found.group(1)}); vidcap loads checkpoints with "
                    "torch.load(weights_only=True)")
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(error))
        return f"not a checkpoint (unpickling failed: {found.group(1).strip() if found else type(error).__name__})"
    # Name it by type and its first sentence (EOFError and KeyError say little else).
    first = re.split(r"(?<=\.)\s", " ".join(_ANSI.sub("", str(error)).split()), maxsplit=1)[0]
    return f"not a loadable checkpoint ({type(error).__name__}{': ' + first[:200] if first else ''})"


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load(path, weights_only=True): no pickled code runs. Every way a file can fail to load (missing, a
    folder, empty, corrupt, a pickle that would need code) is a one-line CheckpointError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # A raw pickle makes torch warn about its protocol before refusing it: the refusal says enough.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except LOAD_ERRORS as error:
        raise CheckpointError(f"{path}: {_load_failure(error)}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a vidcap checkpoint (no 'vidcap' section)")
    return checkpoint


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The CaptionModel's state dict inside a Lightning checkpoint (CaptionModule keeps it under "model.")."""
    return {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}


def rebuild(checkpoint: dict[str, Any], where: str) -> tuple[CaptionModel, Vocabulary, dict[str, Any]]:
    """A checkpoint read by `read_checkpoint` -> (CaptionModel in eval mode, Vocabulary, its "vidcap" section).
    Raises CheckpointError naming `where` and the reason."""
    meta = read_vidcap_section(checkpoint, where)
    try:
        model = CaptionModel(ModelConfig(**meta["model"]))
        model.load_state_dict(model_state(checkpoint))
        vocab = Vocabulary.from_dict(meta["vocab"])
    except (KeyError, TypeError, ValueError, RuntimeError, UsageError) as error:
        raise CheckpointError(f"{where}: inconsistent checkpoint: {error}") from None
    return model.eval(), vocab, meta


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[CaptionModel, Vocabulary, dict[str, Any]]:
    """A Lightning checkpoint -> (CaptionModel in eval mode, Vocabulary, feature store meta), with
    `weights_only=True` (no pickled code runs). Raises CheckpointError naming the file and the reason."""
    model, vocab, meta = rebuild(read_checkpoint(path, map_location), str(path))
    return model, vocab, meta["features"]


def trained_decoding(meta: Mapping[str, Any], where: str) -> DecodingOptions:
    """The decoding options the model of a checkpoint's "vidcap" section was trained with (its `decoding`;
    DecodingOptions' defaults, beam 5 and 30 words, for a checkpoint that does not record them). Flags override
    them through `with_overrides`. Raises CheckpointError naming `where` for options that are not
    DecodingOptions'."""
    try:
        return DecodingOptions(**(meta.get("decoding") or {}))
    except (TypeError, UsageError) as error:
        raise CheckpointError(f"{where}: bad decoding options in the checkpoint: {error}") from None


def with_overrides(options: DecodingOptions, beam_size: int | None = None, max_len: int | None = None,
                   n_best: int | None = None) -> DecodingOptions:
    """`options` (a checkpoint's: `trained_decoding`, `read_decoding`) with the command line's beam size, caption
    length and n-best in place of its own; None: not given, the option stays. What `vidcap evaluate` and `vidcap
    caption` decode with. UsageError (DecodingOptions' checks) when the result cannot work, e.g. n_best > beam_size."""
    given = {"beam_size": beam_size, "max_len": max_len, "n_best": n_best}
    return replace(options, **{name: value for name, value in given.items() if value is not None})


def read_decoding(path: str | os.PathLike) -> DecodingOptions:
    """`trained_decoding` of the checkpoint file `path` (CheckpointError naming the file if it cannot be read)."""
    return trained_decoding(read_vidcap_section(read_checkpoint(path), str(path)), str(path))


def store_mismatches(meta: Mapping[str, Any], store: Mapping[str, Any], vocab: Vocabulary | None = None,
                     label: str = "the feature store") -> list[str]:
    """What keeps the model of a checkpoint's "vidcap" section `meta` from reading the features described by
    `store` (a feature store's meta.json) and the captions of vocabulary `vocab` (None: not checked), one phrase
    per problem, each beginning "trained on" and naming the store side as `label`; [] when they fit.

    The model must find every kind of feature it reads (global; local for the LOCAL_VARIANTS), as wide as its
    input layer, from the extractor it was trained on with the same input size, resize and clips, and frames sampled as
    for training (same rule and count; a checkpoint that does not record its features: as many frames as its
    position table). Local features that a global-only model never reads are not looked at. The vocabulary must
    have the same tokens in the same order.
    """
    from vidcap.features.store import sampling_of

    model, trained = meta.get("model") or {}, meta.get("features") or {}
    problems = []
    if vocab is not None:
        theirs = list((meta.get("vocab") or {}).get("tokens") or [])
        if theirs != vocab.itos:
            at = next((i for i, (a, b) in enumerate(zip(theirs, vocab.itos, strict=False)) if a != b),
                      min(len(theirs), len(vocab)))
            word = lambda tokens: repr(tokens[at]) if at < len(tokens) else "none"  # noqa: E731
            problems.append(f"trained with another vocabulary ({len(theirs)} tokens, the data's vocab.json "
                            f"{len(vocab)}; first difference at id {at}: {word(theirs)} vs {word(vocab.itos)})")
    for kind in ("global", "local") if model.get("variant") in LOCAL_VARIANTS else ("global",):
        want, have = trained.get(kind) or {}, store.get(kind) or {}
        if not have:
            source = f" ({want['name']})" if want.get("name") else ""
            problems.append(f"trained on {kind} features{source} ({label}: none)")
            continue
        width = model.get(f"{kind}_dim")
        if width is not None and "dim" in have and width != have["dim"]:
            problems.append(f"trained on {kind} features of width {width} ({label}: {have['dim']})")
        for key in ("name", "image_size", "clip_length", "clip_stride", "resize", "interpolation"):
            if key in want and key in have and want[key] != have[key]:
                problems.append(f"trained on {kind} features with {key}={want[key]!r} ({label}: {have[key]!r})")
    if trained:
        if sampling_of(trained) != sampling_of(store):
            problems.append(f"trained on frames sampled as {sampling_of(trained)} ({label}: {sampling_of(store)})")
    elif "max_frames" in model and model["max_frames"] != sampling_of(store).get("num_frames"):
        problems.append(f"trained on {model['max_frames']} frames per video ({label}: "
                        f"{sampling_of(store).get('num_frames')})")
    return problems
