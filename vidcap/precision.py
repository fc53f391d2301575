"""Numeric precision: the `--precision` choices of evaluate and caption, autocast for them, and how a feature store
records the device and precision its features were computed with (issue 17).

Training's `trainer.precision` (configs/trainer/gpu.yaml: bf16-mixed) is Lightning's; `evaluate` hands the same
string to Lightning, `caption` and `extract --amp` use `autocast` here. Under bf16 autocast the decoder's recurrent
cell and output layer still run in float32 (vidcap.model.captioner), so bf16-mixed and 32-true pick the same words unless two
are within bf16 rounding of each other in the rest of the model.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from vidcap.errors import UsageError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("32-true", "bf16-mixed")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """bfloat16 autocast on `device` for "bf16-mixed", a no-op context for "32-true"."""
    import torch  # here, not at the top: the CLI reads PRECISIONS for --help without loading torch

    enabled = check_precision(precision) != "32-true"
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


def compute_record(device: torch.device | str, precision: str) -> dict[str, Any]:
    """What meta.json records about how features are computed: {"device": "cpu"|"cuda", "device_name",
    "precision", "tf32"}. tf32: cuDNN convolutions and matmuls may use TensorFloat-32 (~1e-3 relative error); vidcap
    allows it on CUDA with bf16-mixed (`extract --amp`) only, so that 32-true features agree across devices to float
    rounding (see `use_tf32`)."""
    import torch

    device = torch.device(device)
    cuda = device.type == "cuda"
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "precision": check_precision(precision),
        "tf32": _tf32(device, precision),
    }


def _tf32(device: torch.device, precision: str) -> bool:
    return device.type == "cuda" and precision != "32-true"


@contextmanager
def numerics(device: torch.device | str, precision: str) -> Iterator[None]:
    """Run a feature extractor as `compute_record(device, precision)` describes: bf16 autocast for "bf16-mixed",
    TensorFloat-32 on CUDA only then."""
    import torch

    device = torch.device(device)
    with autocast(device, precision), use_tf32(_tf32(device, precision)):
        yield


@contextmanager
def use_tf32(allowed: bool) -> Iterator[None]:
    """Allow TensorFloat-32 in cuDNN convolutions and CUDA matmuls inside the block (or forbid it: PyTorch allows it
    for convolutions by default); the previous settings come back after."""
    import torch

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
