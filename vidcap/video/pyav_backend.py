"""The PyAV decoder backend (works everywhere): only the requested frames are converted to RGB, decoding stops after
the last one, and long gaps are crossed by seeking to keyframes."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np

from vidcap.video.failures import DecodeFailed, one_line

logger = logging.getLogger(__name__)

# A request that skips at least this many frames makes the PyAV backend index the keyframes (one demux pass, no
# decoding) and seek instead of decoding through the gap. Short clips (26 samples of a 10 s clip skip ~10 frames)
# decode sequentially, which is as fast and exact for every container.
SEEK_MIN_GAP = 64


def _conversion_options(av) -> dict:
    """Keyword arguments of every RGB conversion: one swscale thread.

    From PyAV 17 a conversion keeps a pool of slice threads (every core by default) in the process. A child forked
    from that process inherits the pool without its threads and hangs on its first conversion (av 18.1.1 with
    FFmpeg 8.1.3 does every time). Converting on one thread makes no pool, so a process that decoded with vidcap can
    still be forked safely by whatever the caller runs next; at most DECODE_CHUNK (16) frames are converted per call,
    which one thread does in milliseconds. Older PyAV has neither the pool nor the argument.
    """
    major = int(av.__version__.split(".")[0])
    return {"threads": 1} if major >= 17 else {}


@dataclass
class PtsIndex:
    """Frame index <-> pts of a stream, from one demux pass: frame i is the packet with the i-th smallest pts."""

    rank_pts: np.ndarray  # frame index -> pts
    pts_rank: dict[int, int]  # pts -> frame index
    keyframes: np.ndarray  # sorted frame indices of the keyframes

    @classmethod
    def build(cls, pts: list, keys: list) -> PtsIndex | None:
        """None when the pts cannot index the frames (missing or repeated pts, no keyframe)."""
        if not pts or any(p is None for p in pts) or len(set(pts)) != len(pts):
            return None
        order = np.sort(np.asarray(pts, dtype=np.int64))
        rank = {int(p): i for i, p in enumerate(order)}
        keyframes = np.sort([rank[k] for k in keys if k is not None]).astype(np.int64)
        return cls(order, rank, keyframes) if len(keyframes) else None

    def keyframe_before(self, target: int) -> int:
        if self.keyframes[0] > target:
            return 0
        return int(self.keyframes[np.searchsorted(self.keyframes, target, side="right") - 1])


def _demux_pts(av, container, stream, path: str) -> tuple[list, list]:
    """The pts of every packet, and of the keyframes' (None for the others), in decode order."""
    pts, keys = [], []
    try:
        for packet in container.demux(stream):
            # size 0 is the flush packet; discarded packets (MP4 edit lists) never leave the decoder.
            if packet.size == 0 or packet.is_discard:
                continue
            pts.append(packet.pts)
            keys.append(packet.pts if packet.is_keyframe else None)
    except av.FFmpegError as exc:
        logger.debug("%s: demuxing stopped after %d packets: %s", path, len(pts), one_line(exc))
    return pts, keys


def _has_leading_frames(av, container, stream, max_packets: int = 500) -> bool:
    """True when packets after a keyframe (decode order) show earlier pts: open GOPs, or pts FFmpeg guessed.

    decord seeks to a keyframe and counts frames from it, which miscounts exactly these streams (open-GOP HEVC,
    MPEG-4 with B-frames). Only the first `max_packets` packets are demuxed: encoders keep one GOP style.
    """
    key_pts = None
    try:
        for n, packet in enumerate(container.demux(stream)):
            if packet.size == 0 or n >= max_packets:
                return False
            if packet.pts is None:
                return True
            if packet.is_keyframe:
                key_pts = packet.pts
            elif key_pts is not None and packet.pts < key_pts:
                return True
    except av.FFmpegError:
        return True
    return False


class PyAVBackend:
    """PyAV decoding that converts only the requested frames to RGB and stops after the last one.

    Frame i is the i-th frame the decoder outputs from the start of the stream. For long gaps the backend seeks to
    the keyframe before the next wanted frame; a frame's index is then the rank of its pts among all packet pts
    (what decord uses too), which is only trusted while decoded ranks stay consecutive: any surprise (AVI timestamps
    guessed by FFmpeg, a seek landing past its target) turns seeking off and the request is decoded sequentially.
    """

    name = "pyav"

    def __init__(self, path: str, threads: int = 0, data: bytes | None = None):
        """threads: decoding threads (0: FFmpeg's default, every core). RGB conversion runs on one thread
        (_conversion_options). data: the file's bytes when it has no path of its own (a member of a tar shard,
        vidcap.video.tar_members); `path` then only names it."""
        import av

        self._av = av
        self._data = data
        self._convert = _conversion_options(av)
        self._path = path
        self._threads = threads
        self._container = None
        self._frames_iter = None
        self._next_index = 0  # index of the next frame the open decoder will output (sequential mode)
        self._index: PtsIndex | None = None  # built on the first long gap
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
                raise DecodeFailed("no video frames")
            raise DecodeFailed(f"invalid frame size {self.width}x{self.height}")

    # -- container handling

    def _open(self):
        av = self._av
        try:
            source = self._path if self._data is None else io.BytesIO(self._data)
            container = av.open(source, mode="r")
        except av.FFmpegError as exc:
            raise DecodeFailed(f"not a readable video ({one_line(exc)})") from exc
        # Music files carry their cover image as a one-frame "video" stream flagged attached_pic: not a video.
        videos = [
            s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
        ]
        if not videos:
            container.close()
            raise DecodeFailed("no video stream")
        # Frame and slice threads: the decode loop is the bottleneck of this backend.
        videos[0].thread_type = "AUTO"
        videos[0].codec_context.thread_count = self._threads
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

    def has_leading_frames(self) -> bool:
        """Open GOPs or guessed pts (see _has_leading_frames): decord's random access miscounts those streams."""
        stream = self._stream()
        try:
            return _has_leading_frames(self._av, self._container, stream)
        finally:
            self._close_container()

    def _build_index(self) -> None:
        """One demux pass: the frame count, and the pts index when the pts can serve as one."""
        stream = self._stream()
        pts, keys = _demux_pts(self._av, self._container, stream, self._path)
        self._close_container()
        if self.num_frames <= 0:
            self.num_frames = len(pts)
        self._index = PtsIndex.build(pts, keys)
        self._seekable = self._index is not None

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
            if self._index is None:
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
            self._last_error = one_line(exc)
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
            key = self._index.keyframe_before(target)
            if frames is None or key > position + 1:
                try:
                    self._container.seek(
                        int(self._index.rank_pts[key]), stream=stream, backward=True, any_frame=False
                    )
                except av.FFmpegError as exc:
                    logger.debug("%s: seek failed (%s); decoding sequentially", self._path, one_line(exc))
                    return self._give_up_seeking()
                frames = self._container.decode(stream)
                position = -1
            try:
                while position < target:
                    frame = next(frames, None)
                    if frame is None:
                        return self._give_up_seeking()  # the sequential pass finds the real end
                    self.frames_decoded += 1
                    rank = self._index.pts_rank.get(frame.pts) if frame.pts is not None else None
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
                logger.debug("%s: decoding after a seek failed (%s)", self._path, one_line(exc))
                return self._give_up_seeking()
        # Ranks were consecutive since the last seek, so the decoder's next frame is position + 1: a later request
        # for frames further on continues from here (read_sampled_frames asks for frames in sorted chunks).
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
            raise DecodeFailed(f"no decodable frames ({self._last_error or 'the stream is empty'})")
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
            raise DecodeFailed(f"frames {unique[below & ~filled].tolist()} did not decode")
        past = ~filled
        last = np.flatnonzero(filled & (unique == count - 1))
        out[past] = out[last[0]] if len(last) else self.decode(np.array([count - 1]))[0]
        filled[past] = True

    def _rgb(self, frame) -> np.ndarray:
        # Forcing the stream's size keeps every frame the same shape even if the resolution changes mid-stream.
        if frame.width != self.width or frame.height != self.height:
            return frame.to_ndarray(format="rgb24", width=self.width, height=self.height, **self._convert)
        return frame.to_ndarray(format="rgb24", **self._convert)

    def close(self) -> None:
        self._close_container()
