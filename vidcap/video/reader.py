"""Video decoding and the paper's frame sampling: file -> uint8 RGB frames (K, H, W, 3).

`read_sampled_frames` is the one function that samples K frames (see docs/model.md), decodes them together with the
clip frames the extractors need, shrinks them, and samples again when the file turns out shorter than its header:
`vidcap extract`, `vidcap caption` and benchmarks/bench_video.py all run it.

Two decoders sit behind one `VideoReader` (vidcap/video/decord_backend.py): decord (Linux/Windows x86_64 wheels only) and PyAV
(everywhere). `backend="auto"` uses decord only where its random access was checked to return the right frames and
where it was measured faster than PyAV (decord_preferred: VP9, MJPEG), PyAV elsewhere, and PyAV takes over if decord fails
later (an exception, or frames of the wrong shape).
Frame index i means "the i-th frame the decoder outputs" for both decoders, so they return the same frames for the
same indices (tests/test_video.py checks this on every container/codec the project supports).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidcap.errors import VideoError
from vidcap.video.decord_backend import DecordBackend, decord_preferred, decord_safe
from vidcap.video.failures import DecodeFailed
from vidcap.video.pyav_backend import PyAVBackend
from vidcap.video.tar_members import member_source, split_ref
from vidcap.video.windows import frame_range, split_window

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
# The name of sample_frame_indices' rule, recorded in meta.json ("sampling") so that a captioner samples as the
# features it was trained on were sampled.
SAMPLING_RULE = "array_split_first"
# Distinct frames decoded per call: bounds memory on long, high-resolution videos (a 1080p frame is 6 MB).
DECODE_CHUNK = 16
# How every process that decodes video for vidcap starts (extraction's DataLoader workers, doctor's self-test): a
# fresh interpreter. A forked child inherits its parent's FFmpeg thread pools without their threads, so once the
# parent has converted a frame (PyAV >= 17: swscale's slice threads; the caller's own PyAV use counts) the child's
# first conversion waits forever (av 18.1.1). "spawn" rather than "forkserver": spawned workers are this process's
# own children, so a worker killed by a signal is reported at once (SIGCHLD) instead of at the next timeout.
WORKER_START_METHOD = "spawn"


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context for processes that decode video (see WORKER_START_METHOD). Code that a worker
    runs must be importable (module-level functions), and a script that starts workers needs the usual
    `if __name__ == "__main__":` guard."""
    return multiprocessing.get_context(WORKER_START_METHOD)


# A worker hands each tensor to its parent through a Unix socket that multiprocessing creates in a folder under the
# temp folder (`$TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX`). A socket path has a length limit (107 bytes on Linux,
# 103 on macOS): past it the worker's sending thread fails, the parent is never answered and waits until the worker
# watchdog fires. Python 3.11 has no fallback for a long $TMPDIR, so vidcap gives its processes one.
_SOCKET_PATH_MAX = 103
_SOCKET_NAME = len("/listener-XXXXXXXX")
_SOCKET_FOLDER = len("/pymp-XXXXXXXX")


def short_socket_dir() -> None:
    """Make sure multiprocessing's temp folder in this process is short enough for its Unix sockets: when $TMPDIR
    is too long, use a private folder under /tmp (or /var/tmp, /dev/shm) instead, removed at exit. Call it in a
    loader's parent before it starts workers (forked and spawned workers copy the choice) and in a worker's init."""
    import shutil
    import tempfile
    from multiprocessing import process, util

    config = process.current_process()._config
    folder = config.get("tempdir")  # made at the first need, then kept for the process's life
    length = len(os.fsencode(folder)) if folder else len(os.fsencode(tempfile.gettempdir())) + _SOCKET_FOLDER
    if length + _SOCKET_NAME <= _SOCKET_PATH_MAX:
        return
    for base in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            folder = tempfile.mkdtemp(prefix="pymp-", dir=base)
            util.Finalize(None, shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True}, exitpriority=-100)
            config["tempdir"] = folder
            return


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
# Random access


def _open_backend(path: str, backend: str, threads: int = 0,
                  data: bytes | None = None) -> tuple[DecordBackend | PyAVBackend, PyAVBackend | None]:
    """The backend that decodes `path`, and in auto mode the PyAV backend that takes over if decord fails later.

    auto reads the header with PyAV, then uses decord where it samples faster than PyAV (DECORD_FASTER) and its
    random access was checked to return the right frames (H.264/HEVC/VP8/VP9/AV1 in MP4/MOV/MKV/WebM without open
    GOPs, MJPEG anywhere: decord_safe), and PyAV elsewhere (MSVD's Xvid AVIs, H.264 in AVI, open-GOP HEVC: decord
    returned wrong frames for those; H.264 and HEVC elsewhere: PyAV is faster).
    """
    if backend == "pyav":
        return PyAVBackend(path, threads, data), None
    if backend == "decord":
        try:
            header = PyAVBackend(path, data=data)
            header.close()
            expected = (header.height, header.width)
        except DecodeFailed:
            expected = None  # let decord try files FFmpeg's header parser rejects
        return DecordBackend(path, expected, threads, data), None
    # PyAV reads the header first (cheap): it names the container and codec, which decide whether decord's random
    # access can be trusted, and it gives the frame size decord's frames must have.
    pyav = PyAVBackend(path, threads, data)
    why_not = None
    if not decord_safe(pyav.format_name, pyav.codec_name):
        why_not = f"{pyav.codec_name} in {pyav.format_name}"
    elif not decord_preferred(pyav.format_name, pyav.codec_name):
        why_not = f"PyAV samples {pyav.codec_name} faster"
    elif pyav.has_leading_frames():
        why_not = "frames precede their keyframe (open GOP)"
    if why_not is not None:
        logger.debug("%s: %s: using PyAV", path, why_not)
        return pyav, None
    try:
        decord = DecordBackend(path, (pyav.height, pyav.width), threads, data)
    except DecodeFailed as exc:
        logger.debug("%s: %s; using PyAV", path, exc)
        return pyav, None
    pyav.close()  # reopens on demand
    return decord, pyav


class VideoReader:
    """Random access to the frames of one video file, or of a video inside a tar shard (`SHARD.tar::MEMBER`, read
    from the shard in memory: vidcap.video.tar_members). Use `open_video()`; close it (or use it as a context manager).

    Attributes: `path`, `backend` ("decord" or "pyav": the one actually decoding), `num_frames`, `fps`, `height`,
    `width`, `duration` (seconds), `frames_decoded` (for checking decode-only-what-is-needed), `window` ((start, end)
    seconds of a `PATH#t=START,END` path, vidcap.video.windows, else None). Frame indices and the counts are the
    whole file's; `window_frames()` gives the window's.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto", threads: int = 0):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.path = str(path)
        # `PATH#t=START,END` (vidcap.video.windows): the frames are sampled inside that window of PATH.
        try:
            file, self.window = split_window(self.path)
        except ValueError as exc:
            raise VideoError(f"{self.path}: {exc}") from None
        # A member of a tar shard is decoded in place (its byte range as an FFmpeg URL, or its bytes); the shard's
        # index stays open in this process for the next member.
        source: str | bytes = member_source(file) if split_ref(file) is not None else file
        if source is file:
            _check_file(file, self.path)
        self._impl: DecordBackend | PyAVBackend
        self._fallback: PyAVBackend | None  # auto mode: PyAV takes over if decord fails later
        try:
            if isinstance(source, bytes):
                self._impl, self._fallback = _open_backend(file, backend, threads, source)
            else:
                self._impl, self._fallback = _open_backend(source, backend, threads)
        except DecodeFailed as exc:
            raise VideoError(f"{self.path}: {exc}") from exc
        # Indices are validated against the count reported at open, which callers used to sample.
        self.declared_frames = self._impl.num_frames

    backend = property(lambda self: self._impl.name)
    num_frames = property(lambda self: self._impl.num_frames, doc="may shrink once decoding finds a truncated file")
    fps = property(lambda self: self._impl.fps)
    height = property(lambda self: self._impl.height)
    width = property(lambda self: self._impl.width)
    frames_decoded = property(lambda self: self._impl.frames_decoded)

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0

    def get_frames(self, indices) -> np.ndarray:
        """uint8 RGB frames (N, H, W, 3) for `indices` (N,), in the given order; indices may repeat and be unsorted.

        Each distinct frame is decoded once. Indices below the `num_frames` reported at open never fail: if the file
        turns out shorter (truncated, wrong header), `num_frames` shrinks and the missing indices get the last
        decodable frame (logged). Raises IndexError for indices outside [0, num_frames) and VideoError when nothing
        decodes.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return np.empty((0, self.height, self.width, 3), dtype=np.uint8)
        bad = (idx < 0) | (idx >= self.declared_frames)
        if bad.any():
            raise IndexError(f"frame index {int(idx[bad][0])} out of range for {self.declared_frames} frames")
        unique, inverse = np.unique(idx, return_inverse=True)
        try:
            frames = self._impl.decode(unique)
        except DecodeFailed as exc:
            if self._fallback is None:
                raise VideoError(f"{self.path}: {exc}") from exc
            logger.warning("%s: %s; retrying with PyAV", self.path, exc)
            self._impl.close()
            self._impl, self._fallback = self._fallback, None
            try:
                # PyAV may count fewer frames than decord did: clamp, as for a truncated file.
                frames = self._impl.decode(np.minimum(unique, self._impl.num_frames - 1))
            except DecodeFailed as exc2:
                raise VideoError(f"{self.path}: {exc2}") from exc2
        return frames[inverse.reshape(-1)]

    def window_frames(self) -> tuple[int, int]:
        """[first, stop) frame indices of the window ([0, num_frames) without one). VideoError when the window lies
        past the video's end (as far as it decodes)."""
        if self.window is None:
            return 0, self.num_frames
        try:
            return frame_range(*self.window, self.fps, self.num_frames)
        except ValueError as exc:
            raise VideoError(f"{self.path}: {exc}") from None

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


def _check_file(path: str, name: str) -> None:
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{name}: no such file")
    if p.is_dir():
        raise VideoError(f"{name}: is a folder, not a video file")
    if p.stat().st_size == 0:
        raise VideoError(f"{name}: empty file (0 bytes)")


def open_video(path: str | os.PathLike, backend: str = "auto", threads: int = 0) -> VideoReader:
    """Open a video for random frame access. `backend`: "auto" (decord where it is right and faster, else PyAV),
    "decord" or "pyav"; `threads`:
    the decoder's threads (0: its default, every core).

    Raises VideoError("PATH: reason") for a missing/empty/unreadable file, a file without a video stream or frames.
    """
    return VideoReader(path, backend, threads)


# --------------------------------------------------------------------------------------------------------------------
# Sampled frames: the one function


@dataclass(frozen=True)
class FrameRequest:
    """The frames one consumer needs for each sampled frame, and how to shrink them right after decoding.

    clip_length frames clip_stride apart around the sampled frame (see clip_indices; 1 x 1: the frame itself);
    ends_only: only the clip's first and last frame; shrink: uint8 (N, H, W, 3) -> array (N, ...), None keeps the
    frames as decoded. Requests with equal shrinks share the work on the frames they both need.
    """

    clip_length: int = 1
    clip_stride: int = 1
    ends_only: bool = False
    shrink: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def frames_per_step(self) -> int:
        return 2 if self.ends_only else self.clip_length

    def frame_indices(self, centers: np.ndarray, num_frames: int) -> np.ndarray:
        """Frame indices (K, frames_per_step) read for sampled frames `centers` (K,) of a video of `num_frames`."""
        clips = clip_indices(centers, num_frames, self.clip_length, self.clip_stride)
        return clips[:, [0, -1]] if self.ends_only else clips


@dataclass
class SampledFrames:
    """The K frames the model sees for one video.

    inputs[key]: (K, L, ...) what request `key` asked for (L = its frames_per_step; shrunk by its shrink) at each
    sampled frame, padded steps included (they repeat the last frame); frames: inputs["frames"][:, 0], the K sampled
    frames (K, H, W, 3) uint8 of the default request; mask: (K,) bool (False on padding); indices: (K,) int64 source
    frame indices; times: (K,) float32 seconds; backend: decoder used; fps, height, width, num_frames: of the source
    video (num_frames: the frames that really decode).
    """

    mask: np.ndarray
    indices: np.ndarray
    times: np.ndarray
    backend: str
    fps: float
    height: int
    width: int
    num_frames: int
    inputs: dict[str, np.ndarray] = field(repr=False)

    @property
    def frames(self) -> np.ndarray:
        return self.inputs["frames"][:, 0]


def _decode(reader: VideoReader, num_frames: int, requests: Mapping[str, FrameRequest]):
    """One pass: sample, decode each distinct frame once (DECODE_CHUNK at a time), shrink it once per distinct shrink.
    Returns indices, mask, {request key: (rows (K, L) into its shrink's frames, shrink)}, {shrink: frame indices,
    shrunk frames}."""
    first, stop = reader.window_frames()  # a window's frames are sampled as if they were the whole video
    indices, mask = sample_frame_indices(stop - first, num_frames)
    needs = {key: first + req.frame_indices(indices, stop - first) for key, req in requests.items()}
    indices = first + indices
    shrinks = {req.shrink for req in requests.values()}
    wanted = {s: np.unique(np.concatenate([needs[k].ravel() for k, r in requests.items() if r.shrink == s]))
              for s in shrinks}
    every = np.unique(np.concatenate(list(wanted.values())))
    parts: dict = {s: [] for s in shrinks}
    for start in range(0, len(every), DECODE_CHUNK):
        chunk = every[start : start + DECODE_CHUNK]
        frames = reader.get_frames(chunk)
        for s in shrinks:
            keep = np.isin(chunk, wanted[s])
            if keep.any():
                parts[s].append(frames[keep] if s is None else s(frames[keep]))
    shrunk = {s: np.concatenate(parts[s]) for s in shrinks}
    inputs = {key: shrunk[req.shrink][np.searchsorted(wanted[req.shrink], needs[key])]
              for key, req in requests.items()}
    return indices, mask, inputs


def read_sampled_frames(
    path: str | os.PathLike,
    num_frames: int = 26,
    backend: str = "auto",
    requests: Mapping[str, FrameRequest] | None = None,
    threads: int = 0,
) -> SampledFrames:
    """Open `path`, sample `num_frames` (K) frames the paper's way and decode only what `requests` need (default:
    {"frames": the K sampled frames as decoded}). A file shorter than its header said (truncated) is sampled again
    over the frames that really decode. A `PATH#t=START,END` path (vidcap.video.windows) is sampled inside
    [START, END) seconds only: K frames and their clips within the window, indices and times the file's. `threads`: the decoder's (0: its default, every core). See `SampledFrames`.
    Raises VideoError.
    """
    requests = dict(requests or {"frames": FrameRequest()})
    with open_video(path, backend, threads) as reader:
        for _attempt in range(3):
            count = reader.num_frames
            indices, mask, inputs = _decode(reader, num_frames, requests)
            if reader.num_frames >= count:
                break
            logger.warning("%s: only %d of %d frames decode; resampling", path, reader.num_frames, count)
        return SampledFrames(mask=mask, indices=indices, times=reader.times(indices), backend=reader.backend,
                             fps=reader.fps, height=reader.height, width=reader.width, num_frames=reader.num_frames,
                             inputs=inputs)


__all__ = [
    "BACKENDS",
    "DECODE_CHUNK",
    "SAMPLING_RULE",
    "WORKER_START_METHOD",
    "short_socket_dir",
    "FrameRequest",
    "SampledFrames",
    "VideoReader",
    "clip_indices",
    "open_video",
    "read_sampled_frames",
    "sample_frame_indices",
    "worker_context",
]
