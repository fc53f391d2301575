"""Video decoding and the paper's frame sampling: file -> uint8 RGB frames (K, H, W, 3).

Two decoders sit behind one `VideoReader`: decord (fast random access, Linux/Windows x86_64 wheels only) and PyAV
(everywhere). `backend="auto"` tries decord first and falls back to PyAV when decord is missing, cannot open the file,
raises while decoding it or returns frames of the wrong shape (REFERENCE.md section 5 lists decord's known traps).

Frame index i always means "the i-th frame in presentation order", so both decoders return the same frames for the
same indices (tests/test_video.py checks this on every container/codec the project supports).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidcap.errors import VideoError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")


# --------------------------------------------------------------------------------------------------------------------
# Sampling (pure index arithmetic, no decoding)


def sample_frame_indices(num_frames: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's sampling: split range(num_frames) into `k` chunks with `np.array_split`, take each chunk's first.

    Returns indices (K,) int64 and mask (K,) bool. With fewer than K frames every frame is taken once and the rest is
    padding that repeats the last index with mask False (the model ignores masked steps).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_frames >= k:
        # array_split puts the longer chunks first: chunk j starts at j * q + min(j, r). Computed directly rather
        # than materialising arange(num_frames) for hour-long videos.
        q, r = divmod(num_frames, k)
        j = np.arange(k, dtype=np.int64)
        return j * q + np.minimum(j, r), np.ones(k, dtype=bool)
    indices = np.full(k, num_frames - 1, dtype=np.int64)
    indices[:num_frames] = np.arange(num_frames)
    mask = np.zeros(k, dtype=bool)
    mask[:num_frames] = True
    return indices, mask


def clip_indices(centers: np.ndarray, num_frames: int, length: int, stride: int = 1) -> np.ndarray:
    """Frame indices (K, length) of a clip around each centre: `length` frames `stride` apart, clamped to the video.

    The clip covers centre + stride * (arange(length) - length // 2), so an even length has one more frame before the
    centre than after it. Near the ends the window is clamped (repeating the first/last frame), which keeps every clip
    the same length for the 3-D CNN's batch.
    """
    if length < 1 or stride < 1:
        raise ValueError(f"length and stride must be >= 1, got length={length} stride={stride}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    centers = np.asarray(centers, dtype=np.int64).reshape(-1)
    offsets = stride * (np.arange(length, dtype=np.int64) - length // 2)
    return np.clip(centers[:, None] + offsets[None, :], 0, num_frames - 1)


# --------------------------------------------------------------------------------------------------------------------
# Decoder backends (internal). Each backend exposes num_frames, fps, height, width and decode(unique sorted indices).


class _DecodeFailed(Exception):
    """Internal: a backend could not open or decode a file; the message is the reason (no path)."""


def _to_uint8_batch(batch: Any) -> np.ndarray:
    # decord's bridge is process-global: if another library switched it to torch, get_batch returns a tensor.
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    if hasattr(batch, "numpy"):
        return batch.numpy()
    return np.asarray(batch)


class _DecordBackend:
    name = "decord"

    def __init__(self, path: str):
        try:
            import decord
        except ImportError as exc:  # decord has no wheel for this platform (macOS, ARM)
            raise _DecodeFailed(f"decord is not installed ({exc})") from exc
        self._errors: tuple[type[BaseException], ...] = (decord.DECORDError, RuntimeError, ValueError, IndexError)
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=0)
            self.num_frames = len(self._vr)
            self.fps = float(self._vr.get_avg_fps() or 0.0)
            if self.num_frames > 0:
                # decord has no size attribute; the first frame's shape is authoritative for later checks.
                first = _to_uint8_batch(self._vr[0])
                self.height, self.width = int(first.shape[0]), int(first.shape[1])
                self._vr.seek(0)
            else:
                self.height = self.width = 0
        except self._errors as exc:
            raise _DecodeFailed(f"decord cannot open it: {_one_line(exc)}") from exc
        if self.num_frames <= 0:
            raise _DecodeFailed("decord reports 0 frames")
        self.frames_decoded = 0

    def decode(self, unique: np.ndarray) -> np.ndarray:
        try:
            batch = _to_uint8_batch(self._vr.get_batch(unique.tolist()))
            # Reading ahead grows decord's memory; rewinding after each batch releases it (decord issue #187).
            self._vr.seek(0)
        except self._errors as exc:
            raise _DecodeFailed(f"decord cannot decode it: {_one_line(exc)}") from exc
        expected = (len(unique), self.height, self.width, 3)
        if batch.shape != expected or batch.dtype != np.uint8:
            raise _DecodeFailed(f"decord returned frames of shape {batch.shape} {batch.dtype}, expected {expected}")
        self.frames_decoded += len(unique)
        return batch

    def close(self) -> None:
        self._vr = None


class _PyAVBackend:
    """Sequential PyAV decoding that keeps only the requested frames and stops after the last one.

    Frames are counted in decoder output (presentation) order. The decoder state is kept between calls, so
    successive calls with increasing indices never decode a frame twice; a request behind the current position
    reopens the file.
    """

    name = "pyav"

    def __init__(self, path: str):
        import av

        self._av = av
        self._path = path
        self._container = None
        self._frames_iter = None
        self._next_index = 0  # index of the next frame the open decoder will output
        self.frames_decoded = 0  # frames produced by the decoder (for tests of decode-only-what-is-needed)
        self.exhausted_at: int | None = None  # decodable frame count, once the decoder has hit the end
        container = self._open()
        stream = container.streams.video[0]
        ctx = stream.codec_context
        self.height, self.width = int(ctx.height), int(ctx.width)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate else 0.0
        count = int(stream.frames or 0)
        if count <= 0:
            # WebM/MKV/some AVI headers carry no frame count: count packets (demuxing without decoding is cheap).
            count = self._count_packets()
            self._close_container()
        self.num_frames = count
        if self.num_frames <= 0:
            raise _DecodeFailed("no video frames")
        if self.height <= 0 or self.width <= 0:
            raise _DecodeFailed(f"invalid frame size {self.width}x{self.height}")

    def _open(self):
        av = self._av
        try:
            container = av.open(self._path, mode="r")
        except av.FFmpegError as exc:
            raise _DecodeFailed(f"cannot open it: {_one_line(exc)}") from exc
        if not container.streams.video:
            container.close()
            raise _DecodeFailed("no video stream")
        stream = container.streams.video[0]
        # Frame/slice threads: the decode loop is the bottleneck on the PyAV path.
        stream.thread_type = "AUTO"
        self._container = container
        self._frames_iter = None
        self._next_index = 0
        return container

    def _close_container(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._frames_iter = None
        self._next_index = 0

    def _count_packets(self) -> int:
        av = self._av
        stream = self._container.streams.video[0]
        try:
            return sum(1 for packet in self._container.demux(stream) if packet.size > 0)
        except av.FFmpegError as exc:
            raise _DecodeFailed(f"cannot read it: {_one_line(exc)}") from exc

    def _frames(self):
        if self._container is None:
            self._open()
        if self._frames_iter is None:
            self._frames_iter = self._container.decode(self._container.streams.video[0])
        return self._frames_iter

    def decode(self, unique: np.ndarray) -> np.ndarray:
        """Frames for `unique` (sorted, distinct, >= 0) indices; indices past the decodable end get the last frame."""
        av = self._av
        if self.exhausted_at is not None:
            unique = np.minimum(unique, self.exhausted_at - 1)
        if unique[0] < self._next_index:
            self._close_container()
        wanted = {int(i): n for n, i in enumerate(unique)}
        out = np.empty((len(unique), self.height, self.width, 3), dtype=np.uint8)
        filled = np.zeros(len(unique), dtype=bool)
        last = int(unique[-1])
        last_frame = None
        frames = self._frames()
        try:
            while self._next_index <= last:
                frame = next(frames, None)
                if frame is None:
                    break
                self.frames_decoded += 1
                index = self._next_index
                self._next_index += 1
                slot = wanted.get(index)
                if slot is not None:
                    out[slot] = self._rgb(frame)
                    filled[slot] = True
                    last_frame = out[slot]
        except av.FFmpegError as exc:
            # A corrupt packet mid-stream: treat it as the end of the decodable video (the frames before it are good).
            logger.warning("%s: decoding stopped at frame %d: %s", self._path, self._next_index, _one_line(exc))
        if not filled.all():
            # The container promised more frames than decode: remember the real count and reuse the last good frame.
            count = self._next_index
            self.exhausted_at = count
            self._close_container()
            if count == 0:
                raise _DecodeFailed("no decodable frames")
            if last_frame is None or not filled[-1]:
                # Needed frames all lie past the end (only possible after the count shrank): decode the last frame.
                last_frame = self.decode(np.array([count - 1]))[0]
            logger.warning(
                "%s: header says %d frames but only %d decode; using frame %d for the missing ones",
                self._path, self.num_frames, count, count - 1,
            )
            self.num_frames = count
            out[~filled] = last_frame
        return out

    def _rgb(self, frame) -> np.ndarray:
        # Forcing the stream's size keeps every frame the same shape even if the resolution changes mid-stream.
        if frame.width != self.width or frame.height != self.height:
            return frame.to_ndarray(format="rgb24", width=self.width, height=self.height)
        return frame.to_ndarray(format="rgb24")

    def close(self) -> None:
        self._close_container()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# --------------------------------------------------------------------------------------------------------------------
# Public reader


class VideoReader:
    """Random access to the frames of one video file. Use `open_video()`; close it (or use it as a context manager).

    Attributes: `path`, `backend` ("decord" or "pyav": the one actually decoding), `num_frames`, `fps`, `height`,
    `width`, `duration` (seconds).
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.path = str(path)
        self._requested = backend
        _check_file(self.path)
        self._impl: _DecordBackend | _PyAVBackend
        if backend in ("auto", "decord"):
            try:
                self._impl = _DecordBackend(self.path)
            except _DecodeFailed as exc:
                if backend == "decord":
                    raise VideoError(f"{self.path}: {exc}") from exc
                logger.debug("%s: %s; using PyAV", self.path, exc)
                self._impl = self._open_pyav()
        else:
            self._impl = self._open_pyav()
        # Indices are validated against the count reported at open, which callers used to sample.
        self._declared_frames = self._impl.num_frames

    def _open_pyav(self) -> _PyAVBackend:
        try:
            return _PyAVBackend(self.path)
        except _DecodeFailed as exc:
            raise VideoError(f"{self.path}: {exc}") from exc

    @property
    def backend(self) -> str:
        return self._impl.name

    @property
    def num_frames(self) -> int:
        """Frame count (may shrink after decoding reveals a truncated file: see `get_frames`)."""
        return self._impl.num_frames

    @property
    def fps(self) -> float:
        return self._impl.fps

    @property
    def height(self) -> int:
        return self._impl.height

    @property
    def width(self) -> int:
        return self._impl.width

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0

    @property
    def frames_decoded(self) -> int:
        """Frames the decoder has produced so far (decord: frames returned), for checking decode-only-what-is-needed."""
        return self._impl.frames_decoded

    def get_frames(self, indices) -> np.ndarray:
        """uint8 RGB frames (N, H, W, 3) for `indices` (N,), in the given order; indices may repeat and be unsorted.

        Each distinct frame is decoded once: pass the sampled frames and the clip frames in one call. Indices below
        the `num_frames` reported at open never fail: if the file turns out shorter (truncated, wrong header),
        `num_frames` shrinks and the missing indices get the last decodable frame (logged). Raises IndexError for
        indices outside [0, num_frames) and VideoError when nothing decodes.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return np.empty((0, self.height, self.width, 3), dtype=np.uint8)
        bad = (idx < 0) | (idx >= self._declared_frames)
        if bad.any():
            raise IndexError(f"frame index {int(idx[bad][0])} out of range for {self._declared_frames} frames")
        unique, inverse = np.unique(idx, return_inverse=True)
        try:
            frames = self._impl.decode(unique)
        except _DecodeFailed as exc:
            if self._impl.name != "decord" or self._requested == "decord":
                raise VideoError(f"{self.path}: {exc}") from exc
            logger.warning("%s: %s; retrying with PyAV", self.path, exc)
            self._impl.close()
            self._impl = self._open_pyav()
            try:
                frames = self._impl.decode(np.minimum(unique, max(self._impl.num_frames - 1, 0)))
            except _DecodeFailed as exc2:
                raise VideoError(f"{self.path}: {exc2}") from exc2
        return frames[inverse.reshape(-1)]

    def times(self, indices) -> np.ndarray:
        """Timestamps (N,) float32 seconds of frame `indices` (index / fps; 0 when the file has no frame rate)."""
        idx = np.asarray(indices, dtype=np.float64).reshape(-1)
        return (idx / self.fps if self.fps > 0 else np.zeros_like(idx)).astype(np.float32)

    def close(self) -> None:
        self._impl.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"VideoReader({self.path!r}, backend={self.backend!r}, num_frames={self.num_frames}, "
            f"fps={self.fps:.3f}, size={self.width}x{self.height})"
        )


def _check_file(path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{path}: no such file")
    if p.is_dir():
        raise VideoError(f"{path}: is a folder, not a video file")
    if p.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")


def open_video(path: str | os.PathLike, backend: str = "auto") -> VideoReader:
    """Open a video for random frame access. `backend`: "auto" (decord, else PyAV), "decord" or "pyav".

    Raises VideoError("PATH: reason") for a missing/empty/unreadable file, a file without a video stream or frames.
    """
    return VideoReader(path, backend)


@dataclass
class SampledFrames:
    """The K frames the model sees for one video.

    frames: (K, H, W, 3) uint8 RGB; mask: (K,) bool (False on padding); indices: (K,) int64 source frame indices;
    times: (K,) float32 seconds; backend: decoder used; fps, height, width, num_frames: of the source video.
    """

    frames: np.ndarray
    mask: np.ndarray
    indices: np.ndarray
    times: np.ndarray
    backend: str
    fps: float
    height: int
    width: int
    num_frames: int


def read_sampled_frames(path: str | os.PathLike, num_frames: int = 26, backend: str = "auto") -> SampledFrames:
    """Open `path`, sample `num_frames` (K) frames the paper's way and decode only those. See `SampledFrames`."""
    with open_video(path, backend) as reader:
        indices, mask = sample_frame_indices(reader.num_frames, num_frames)
        frames = reader.get_frames(indices)
        if reader.num_frames < reader._declared_frames:
            # The file is shorter than its header said: resample over the frames that really decode.
            indices, mask = sample_frame_indices(reader.num_frames, num_frames)
            frames = reader.get_frames(indices)
        return SampledFrames(
            frames=frames,
            mask=mask,
            indices=indices,
            times=reader.times(indices),
            backend=reader.backend,
            fps=reader.fps,
            height=reader.height,
            width=reader.width,
            num_frames=reader.num_frames,
        )


__all__ = [
    "BACKENDS",
    "SampledFrames",
    "VideoReader",
    "clip_indices",
    "open_video",
    "read_sampled_frames",
    "sample_frame_indices",
]
