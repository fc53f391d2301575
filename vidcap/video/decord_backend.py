"""The decord backend of vidcap.video.reader.VideoReader (PyAV's is pyav_backend.py; what both share: failures.py).

decord's random access is fast but only trusted for the containers and codecs where it was checked against PyAV.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np

from vidcap.video.failures import DecodeFailed, one_line

logger = logging.getLogger(__name__)

# decord's random access is only trusted where tests/test_video.py checked it against PyAV. Elsewhere it returned
# wrong frames (frame 37 came back as frame 35): MPEG-4 part 2 with B-frames in any container (MSVD's Xvid AVIs),
# H.264 in AVI, and open-GOP HEVC (x265's default). Intra-only MJPEG is safe in any container.
_DECORD_FORMATS = ("mov", "mp4", "matroska", "webm")
_DECORD_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mjpeg")


# Where decord is also faster than PyAV at sampling K frames (benchmarks/bench_decoders.py on the 2-core reference
# machine, one decoder thread, 320x240 to 1280x720: the table in docs/extraction.md#decoders): VP9 1.2-2.9x PyAV's
# speed, MJPEG 1.2-2.0x. Elsewhere PyAV sampled faster (H.264 in 7 of 8 files: decord at 0.4-0.9x; HEVC 0.5-0.85x),
# decord could not open the file (AV1) or returned wrong frames, or it was not measured (VP8): `auto` uses PyAV.
DECORD_FASTER = frozenset({"vp9", "mjpeg"})


def decord_preferred(format_name: str, codec_name: str) -> bool:
    """Whether `--backend auto` gives a file to decord: decord returns the right frames (decord_safe) and samples
    faster than PyAV (DECORD_FASTER)."""
    return codec_name in DECORD_FASTER and decord_safe(format_name, codec_name)


def decord_safe(format_name: str, codec_name: str) -> bool:
    if codec_name == "mjpeg":
        return True
    formats = format_name.split(",")
    return codec_name in _DECORD_CODECS and any(f in formats for f in _DECORD_FORMATS)


def _to_uint8_batch(batch: Any) -> np.ndarray:
    # decord's bridge is process-global: if another library switched it to torch, get_batch returns a tensor.
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    if hasattr(batch, "numpy"):
        return batch.numpy()
    return np.asarray(batch)


class DecordBackend:
    name = "decord"

    def __init__(self, path: str, expected_size: tuple[int, int] | None = None, threads: int = 0,
                 data: bytes | None = None):
        """`expected_size` (height, width) from the container header; decord's frames must have it. threads: decoding
        threads (0: decord's default, every core). data: the file's bytes when it has no path of its own (a member
        of a tar shard); `path` then only names it."""
        # PyAV first: decord bundles FFmpeg libraries that, loaded before PyAV's, break PyAV's VP8/VP9 and MJPEG
        # encoders (avcodec_open2 returns EINVAL). PyAV's and decord's decoding are unaffected.
        import av  # noqa: F401

        try:
            import decord
        except ImportError as exc:  # decord has no wheel for this platform (macOS, ARM)
            raise DecodeFailed(f"decord is not installed ({exc})") from exc
        # decord raises DECORDError from its C++ checks, RuntimeError/ValueError/IndexError from its Python layer.
        self._errors: tuple[type[BaseException], ...] = (
            decord.DECORDError,
            RuntimeError,
            ValueError,
            IndexError,
        )
        self.frames_decoded = 0
        try:
            source = path if data is None else io.BytesIO(data)
            self._vr = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=threads)
            self.num_frames = len(self._vr)
            self.fps = float(self._vr.get_avg_fps() or 0.0)
            if self.num_frames <= 0:
                raise DecodeFailed("decord reports 0 frames")
            if expected_size is None:
                # No header size to check against: decode frame 0 to learn it (decode() checks every batch).
                first = _to_uint8_batch(self._vr[0])
                self._vr.seek(0)
                expected_size = (int(first.shape[0]), int(first.shape[1]))
                self._check_shape(first[None], 1, expected_size)
        except self._errors as exc:
            raise DecodeFailed(f"decord cannot open it: {one_line(exc)}") from exc
        self.height, self.width = expected_size

    @staticmethod
    def _check_shape(batch: np.ndarray, n: int, size: tuple[int, int]) -> None:
        # decord returns 4-channel garbage for some widths (e.g. 48 px wide H.264) instead of failing.
        if batch.shape != (n, *size, 3) or batch.dtype != np.uint8:
            raise DecodeFailed(f"decord returned frames of shape {batch.shape}, expected {(n, *size, 3)}")

    def decode(self, unique: np.ndarray) -> np.ndarray:
        try:
            batch = _to_uint8_batch(self._vr.get_batch(unique.tolist()))
            # Reading ahead grows decord's memory; rewinding after each batch releases it.
            self._vr.seek(0)
        except self._errors as exc:
            raise DecodeFailed(f"decord cannot decode it: {one_line(exc)}") from exc
        self._check_shape(batch, len(unique), (self.height, self.width))
        self.frames_decoded += len(unique)
        return batch

    def close(self) -> None:
        self._vr = None
