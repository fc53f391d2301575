"""Video decoding and the paper's frame sampling: file -> uint8 RGB frames (K, H, W, 3).

Two decoders sit behind one `VideoReader`: decord (Linux/Windows x86_64 wheels only) and PyAV (everywhere).
`backend="auto"` reads the header with PyAV, then uses decord where its random access was checked to return the
right frames (H.264/HEVC/VP8/VP9/AV1 in MP4/MOV/MKV/WebM without open GOPs, MJPEG anywhere) and PyAV elsewhere
(MSVD's Xvid AVIs, H.264 in AVI, open-GOP HEVC: decord returned wrong frames for those). If decord fails later
(an exception, or frames of the wrong shape) PyAV takes over. REFERENCE.md section 5 lists more decord traps.

Frame index i means "the i-th frame the decoder outputs" for both decoders, so they return the same frames for the
same indices (tests/test_video.py checks this on every container/codec the project supports).
"""

from __future__ import annotations

import logging
import os
import re
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
# Decoder backends (internal). Each exposes name, num_frames, fps, height, width, frames_decoded,
# decode(unique sorted indices) -> (N, H, W, 3) uint8, and close().


class _DecodeFailed(Exception):
    """Internal: a backend could not open or decode a file; the message is the reason (no path)."""


# decord's random access is only trusted where tests/test_video.py checked it against PyAV. Elsewhere it returned
# wrong frames (frame 37 came back as frame 35): MPEG-4 part 2 with B-frames in any container (MSVD's Xvid AVIs),
# H.264 in AVI, and open-GOP HEVC (x265's default). Intra-only MJPEG is safe in any container.
_DECORD_FORMATS = ("mov", "mp4", "matroska", "webm")
_DECORD_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mjpeg")


def _decord_safe(format_name: str, codec_name: str) -> bool:
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


class _DecordBackend:
    name = "decord"

    def __init__(self, path: str, expected_size: tuple[int, int] | None = None):
        """`expected_size` (height, width) from the container header; decord's frames must have it."""
        try:
            import decord
        except ImportError as exc:  # decord has no wheel for this platform (macOS, ARM)
            raise _DecodeFailed(f"decord is not installed ({exc})") from exc
        # decord raises DECORDError from its C++ checks, RuntimeError/ValueError/IndexError from its Python layer.
        self._errors: tuple[type[BaseException], ...] = (
            decord.DECORDError,
            RuntimeError,
            ValueError,
            IndexError,
        )
        self.frames_decoded = 0
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=0)
            self.num_frames = len(self._vr)
            self.fps = float(self._vr.get_avg_fps() or 0.0)
            if self.num_frames <= 0:
                raise _DecodeFailed("decord reports 0 frames")
            if expected_size is None:
                # No header size to check against: decode frame 0 to learn it (decode() checks every batch).
                first = _to_uint8_batch(self._vr[0])
                self._vr.seek(0)
                expected_size = (int(first.shape[0]), int(first.shape[1]))
                self._check_shape(first[None], 1, expected_size)
        except self._errors as exc:
            raise _DecodeFailed(f"decord cannot open it: {_one_line(exc)}") from exc
        self.height, self.width = expected_size

    @staticmethod
    def _check_shape(batch: np.ndarray, n: int, size: tuple[int, int]) -> None:
        # decord returns 4-channel garbage for some widths (e.g. 48 px wide H.264) instead of failing.
        if batch.shape != (n, *size, 3) or batch.dtype != np.uint8:
            raise _DecodeFailed(f"decord returned frames of shape {batch.shape}, expected {(n, *size, 3)}")

    def decode(self, unique: np.ndarray) -> np.ndarray:
        try:
            batch = _to_uint8_batch(self._vr.get_batch(unique.tolist()))
            # Reading ahead grows decord's memory; rewinding after each batch releases it.
            self._vr.seek(0)
        except self._errors as exc:
            raise _DecodeFailed(f"decord cannot decode it: {_one_line(exc)}") from exc
        self._check_shape(batch, len(unique), (self.height, self.width))
        self.frames_decoded += len(unique)
        return batch

    def close(self) -> None:
        self._vr = None


# A request that skips at least this many frames makes the PyAV backend index the keyframes (one demux pass, no
# decoding) and seek instead of decoding through the gap. Short clips (26 samples of a 10 s clip skip ~10 frames)
# decode sequentially, which is as fast and exact for every container.
SEEK_MIN_GAP = 64


class _PyAVBackend:
    """PyAV decoding that converts only the requested frames to RGB and stops after the last one.

    Frame i is the i-th frame the decoder outputs from the start of the stream. For long gaps the backend seeks to
    the keyframe before the next wanted frame; a frame's index is then the rank of its pts among all packet pts
    (what decord uses too), which is only trusted while decoded ranks stay consecutive: any surprise (AVI timestamps
    guessed by FFmpeg, a seek landing past its target) turns seeking off and the request is decoded sequentially.
    """

    name = "pyav"

    def __init__(self, path: str):
        import av

        self._av = av
        self._path = path
        self._container = None
        self._frames_iter = None
        self._next_index = 0  # index of the next frame the open decoder will output (sequential mode)
        self._pts_rank: dict[int, int] | None = None  # packet pts -> frame index, once indexed
        self._keyframes: np.ndarray | None = None  # sorted frame indices of keyframes
        self._rank_pts: np.ndarray | None = None  # frame index -> pts
        self._seekable = True
        self.frames_decoded = 0  # frames produced by the decoder (tests check decode-only-what-is-needed)
        self.exhausted_at: int | None = None  # decodable frame count, once decoding has hit the real end
        self._last_error: str | None = None
        container = self._open()
        stream = container.streams[self._stream_index]
        self.format_name = container.format.name
        self.codec_name = stream.codec_context.name
        self.height, self.width = int(stream.codec_context.height), int(stream.codec_context.width)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate else 0.0
        self.num_frames = int(stream.frames or 0)
        if self.num_frames <= 0:
            # WebM/MKV headers carry no frame count: count packets (demuxing without decoding is cheap).
            self._build_index()
        if self.num_frames <= 0 or self.height <= 0 or self.width <= 0:
            self._close_container()
            if self.num_frames <= 0:
                raise _DecodeFailed("no video frames")
            raise _DecodeFailed(f"invalid frame size {self.width}x{self.height}")

    # -- container handling

    def _open(self):
        av = self._av
        try:
            container = av.open(self._path, mode="r")
        except av.FFmpegError as exc:
            raise _DecodeFailed(f"not a readable video ({_one_line(exc)})") from exc
        # Music files carry their cover image as a one-frame "video" stream flagged attached_pic: not a video.
        videos = [
            s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
        ]
        if not videos:
            container.close()
            raise _DecodeFailed("no video stream")
        # Frame and slice threads: the decode loop is the bottleneck of this backend.
        videos[0].thread_type = "AUTO"
        self._stream_index = videos[0].index
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

    def _stream(self):
        if self._container is None:
            self._open()
        return self._container.streams[self._stream_index]

    def _frames(self):
        if self._frames_iter is None:
            self._frames_iter = self._container.decode(self._stream())
        return self._frames_iter

    def has_leading_frames(self, max_packets: int = 500) -> bool:
        """True when packets after a keyframe (decode order) show earlier pts: open GOPs, or pts FFmpeg guessed.

        decord seeks to a keyframe and counts frames from it, which miscounts exactly these streams (open-GOP
        HEVC, MPEG-4 with B-frames). Only the first `max_packets` packets are demuxed: encoders keep one GOP style.
        """
        av = self._av
        stream = self._stream()
        key_pts = None
        try:
            for n, packet in enumerate(self._container.demux(stream)):
                if packet.size == 0 or n >= max_packets:
                    break
                if packet.pts is None:
                    return True
                if packet.is_keyframe:
                    key_pts = packet.pts
                elif key_pts is not None and packet.pts < key_pts:
                    return True
        except av.FFmpegError:
            return True
        finally:
            self._close_container()
        return False

    def _build_index(self) -> None:
        """One demux pass: the frame count and, when every packet has a distinct pts, the pts -> index map."""
        av = self._av
        stream = self._stream()
        pts, keys = [], []
        try:
            for packet in self._container.demux(stream):
                # size 0 is the flush packet; discarded packets (MP4 edit lists) never leave the decoder.
                if packet.size == 0 or packet.is_discard:
                    continue
                pts.append(packet.pts)
                keys.append(packet.pts if packet.is_keyframe else None)
        except av.FFmpegError as exc:
            logger.debug("%s: demuxing stopped after %d packets: %s", self._path, len(pts), _one_line(exc))
        self._close_container()
        if self.num_frames <= 0:
            self.num_frames = len(pts)
        if not pts or any(p is None for p in pts) or len(set(pts)) != len(pts):
            self._seekable = False
            return
        order = np.sort(np.asarray(pts, dtype=np.int64))
        self._rank_pts = order
        self._pts_rank = {int(p): i for i, p in enumerate(order)}
        self._keyframes = np.sort([self._pts_rank[k] for k in keys if k is not None]).astype(np.int64)
        if len(self._keyframes) == 0:
            self._seekable = False

    # -- decoding

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Frames for `indices` (sorted, >= 0); indices past the decodable end get the last decodable frame."""
        if self.exhausted_at is not None:
            indices = np.minimum(indices, self.exhausted_at - 1)
        unique, inverse = np.unique(indices, return_inverse=True)
        return self._decode_unique(unique)[inverse.reshape(-1)]

    def _decode_unique(self, unique: np.ndarray) -> np.ndarray:
        out = np.empty((len(unique), self.height, self.width, 3), dtype=np.uint8)
        filled = np.zeros(len(unique), dtype=bool)
        # The decoder continues from its position when the request is ahead of it, else restarts at frame 0.
        ahead = self._container is not None and unique[0] >= self._next_index
        gaps = np.diff(np.concatenate([[self._next_index if ahead else 0], unique]))
        if self._seekable and gaps.max() >= SEEK_MIN_GAP and self.exhausted_at is None:
            if self._pts_rank is None:
                self._build_index()
            if self._seekable and self._decode_seeking(unique, out, filled):
                return out
            filled[:] = False
            self._close_container()
        self._decode_sequential(unique, out, filled)
        if not filled.all():
            self._fill_past_end(unique, out, filled)
        return out

    def _decode_sequential(self, unique: np.ndarray, out: np.ndarray, filled: np.ndarray) -> None:
        av = self._av
        if self._container is not None and unique[0] < self._next_index:
            self._close_container()  # behind the decoder: start again from the beginning
        self._stream()
        wanted = {int(i): n for n, i in enumerate(unique)}
        last = int(unique[-1])
        frames = self._frames()
        try:
            while self._next_index <= last:
                frame = next(frames, None)
                if frame is None:
                    self.exhausted_at = self._next_index
                    break
                self.frames_decoded += 1
                slot = wanted.get(self._next_index)
                self._next_index += 1
                if slot is not None:
                    out[slot] = self._rgb(frame)
                    filled[slot] = True
        except av.FFmpegError as exc:
            # A corrupt packet mid-stream: the frames before it are good, treat it as the end of the video.
            self._last_error = _one_line(exc)
            logger.warning(
                "%s: decoding stopped at frame %d: %s", self._path, self._next_index, self._last_error
            )
            self.exhausted_at = self._next_index

    def _decode_seeking(self, unique: np.ndarray, out: np.ndarray, filled: np.ndarray) -> bool:
        """Seek to the keyframe before each far-away wanted frame. False when the pts index proved unreliable."""
        av = self._av
        if self._container is not None and unique[0] >= self._next_index:
            frames = self._frames()  # continue from where the last call stopped
            position = self._next_index - 1
        else:
            self._close_container()
            frames = None
        stream = self._stream()
        if frames is None:
            position = -1  # index of the last frame decoded since the last seek (-1: none yet)
        for n, target in enumerate(unique.tolist()):
            if filled[n]:
                continue
            key = (
                int(self._keyframes[np.searchsorted(self._keyframes, target, side="right") - 1])
                if (self._keyframes[0] <= target)
                else 0
            )
            if frames is None or key > position + 1:
                try:
                    self._container.seek(
                        int(self._rank_pts[key]), stream=stream, backward=True, any_frame=False
                    )
                except av.FFmpegError as exc:
                    logger.debug("%s: seek failed (%s); decoding sequentially", self._path, _one_line(exc))
                    return self._give_up_seeking()
                frames = self._container.decode(stream)
                position = -1
            try:
                while position < target:
                    frame = next(frames, None)
                    if frame is None:
                        return self._give_up_seeking()  # the sequential pass finds the real end
                    self.frames_decoded += 1
                    rank = self._pts_rank.get(frame.pts) if frame.pts is not None else None
                    # After a seek the first frame may precede the keyframe (open GOP); later ones must follow on.
                    if (
                        rank is None
                        or (position >= 0 and rank != position + 1)
                        or (position < 0 and rank > target)
                    ):
                        return self._give_up_seeking()
                    position = rank
                    # Every wanted index this frame satisfies (unique is sorted, so look from n on).
                    k = n + int(np.searchsorted(unique[n:], rank))
                    if k < len(unique) and unique[k] == rank and not filled[k]:
                        out[k] = self._rgb(frame)
                        filled[k] = True
            except av.FFmpegError as exc:
                logger.debug("%s: decoding after a seek failed (%s)", self._path, _one_line(exc))
                return self._give_up_seeking()
        # Ranks were consecutive since the last seek, so the decoder's next frame is position + 1: a later request
        # for frames further on continues from here (features.py asks for frames in sorted chunks).
        self._frames_iter = frames
        self._next_index = position + 1
        return bool(filled.all())

    def _give_up_seeking(self) -> bool:
        logger.debug("%s: frame timestamps do not match the packet index; seeking disabled", self._path)
        self._seekable = False
        self._close_container()
        return False

    def _fill_past_end(self, unique: np.ndarray, out: np.ndarray, filled: np.ndarray) -> None:
        # The header promised more frames than decode: record the real count and reuse the last decodable frame.
        count = self.exhausted_at or 0
        if count == 0:
            raise _DecodeFailed(f"no decodable frames ({self._last_error or 'the stream is empty'})")
        logger.warning(
            "%s: the header says %d frames but only %d decode; frame %d stands in for the missing ones",
            self._path,
            self.num_frames,
            count,
            count - 1,
        )
        self.num_frames = count
        below = unique < count
        if not filled[below].all():  # frames before the end that did not decode: cannot happen sequentially
            raise _DecodeFailed(f"frames {unique[below & ~filled].tolist()} did not decode")
        past = ~filled
        last = np.flatnonzero(filled & (unique == count - 1))
        out[past] = out[last[0]] if len(last) else self.decode(np.array([count - 1]))[0]
        filled[past] = True

    def _rgb(self, frame) -> np.ndarray:
        # Forcing the stream's size keeps every frame the same shape even if the resolution changes mid-stream.
        if frame.width != self.width or frame.height != self.height:
            return frame.to_ndarray(format="rgb24", width=self.width, height=self.height)
        return frame.to_ndarray(format="rgb24")

    def close(self) -> None:
        self._close_container()


def _one_line(exc: BaseException) -> str:
    """A decoder's exception as a short reason: FFmpeg's error text, or decord's first line without its source prefix."""
    text = getattr(exc, "strerror", None) or str(exc)  # av.FFmpegError: strerror omits the errno and the path
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = _DECORD_PREFIX.sub("", text)
    return " ".join(text.split()) or type(exc).__name__


# decord prefixes its messages with "[08:54:58] /github/workspace/src/video/video_reader.cc:151: ".
_DECORD_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")


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
        _check_file(self.path)
        self._impl: _DecordBackend | _PyAVBackend
        self._fallback: _PyAVBackend | None = None  # auto mode: PyAV takes over if decord fails later
        if backend == "pyav":
            self._impl = self._open_pyav()
        elif backend == "decord":
            try:
                size = _PyAVBackend(self.path)
                expected = (size.height, size.width)
                size.close()
            except _DecodeFailed:
                expected = None  # let decord try files FFmpeg's header parser rejects
            try:
                self._impl = _DecordBackend(self.path, expected)
            except _DecodeFailed as exc:
                raise VideoError(f"{self.path}: {exc}") from exc
        else:
            # PyAV reads the header first (cheap): it names the container and codec, which decide whether decord's
            # random access can be trusted, and it gives the frame size decord's frames must have.
            pyav = self._open_pyav()
            self._impl = pyav
            why_not = None
            if not _decord_safe(pyav.format_name, pyav.codec_name):
                why_not = f"{pyav.codec_name} in {pyav.format_name}"
            elif pyav.has_leading_frames():
                why_not = "frames precede their keyframe (open GOP)"
            if why_not is None:
                try:
                    self._impl = _DecordBackend(self.path, (pyav.height, pyav.width))
                    self._fallback = pyav
                    pyav.close()  # reopens on demand
                except _DecodeFailed as exc:
                    logger.debug("%s: %s; using PyAV", self.path, exc)
            else:
                logger.debug("%s: %s: using PyAV", self.path, why_not)
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
            raise IndexError(
                f"frame index {int(idx[bad][0])} out of range for {self._declared_frames} frames"
            )
        unique, inverse = np.unique(idx, return_inverse=True)
        try:
            frames = self._impl.decode(unique)
        except _DecodeFailed as exc:
            if self._fallback is None:
                raise VideoError(f"{self.path}: {exc}") from exc
            logger.warning("%s: %s; retrying with PyAV", self.path, exc)
            self._impl.close()
            self._impl, self._fallback = self._fallback, None
            try:
                # PyAV may count fewer frames than decord did: clamp, as for a truncated file.
                frames = self._impl.decode(np.minimum(unique, self._impl.num_frames - 1))
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


def read_sampled_frames(
    path: str | os.PathLike, num_frames: int = 26, backend: str = "auto"
) -> SampledFrames:
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
