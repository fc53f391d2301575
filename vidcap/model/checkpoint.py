"""Vidcap checkpoints without Lightning: read one safely, check its "vidcap" section, rebuild the model.

A checkpoint written by `vidcap fit` is a Lightning checkpoint with one extra section (docs/architecture.md):
    checkpoint["vidcap"] = {"format": 1, "model": asdict(ModelConfig), "vocab": Vocabulary.to_dict(),
                            "features": the feature store's meta.json}
all plain types, so `torch.load(weights_only=True)` reads it and no pickled code ever runs. `caption` and `evaluate`
use this module alone: importing it does not import Lightning.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from vidcap.errors import CheckpointError, UsageError
from vidcap.model.captioner import CaptionModel, ModelConfig
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


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[CaptionModel, Vocabulary, dict[str, Any]]:
    """A Lightning checkpoint -> (CaptionModel in eval mode, Vocabulary, feature store meta), with
    `weights_only=True` (no pickled code runs). Raises CheckpointError naming the file and the reason."""
    checkpoint = read_checkpoint(path, map_location)
    meta = read_vidcap_section(checkpoint, str(path))
    try:
        model = CaptionModel(ModelConfig(**meta["model"]))
        model.load_state_dict(model_state(checkpoint))
        vocab = Vocabulary.from_dict(meta["vocab"])
    except (KeyError, TypeError, ValueError, RuntimeError, UsageError) as error:
        raise CheckpointError(f"{path}: inconsistent checkpoint: {error}") from None
    return model.eval(), vocab, meta["features"]
