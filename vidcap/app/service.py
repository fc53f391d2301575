"""The captioning service behind `vidcap app`: one captioner loaded once, the limits, and a micro-batcher.

    service = CaptionService(load_captioner("best.ckpt"), Limits(max_upload_bytes=200 << 20, max_duration=600))
    result = service.caption_file(tmp_path, options=service.options(beam_size=3))  # a CaptionResult
    service.close()

Each request reads its own video (decoding and feature extraction, at most `readers` at a time, in the caller's
thread); the word search of the videos that are ready at the same moment runs as one batched beam search
(vidcap.caption.caption_inputs) on one thread that owns the model's decoding. Under concurrent requests the batch
grows by itself: while one search runs, the next videos queue and are decoded together.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vidcap.caption import Captioner, CaptionResult, VideoInputs, caption_inputs, read_video
from vidcap.errors import DECODER_ERRORS, VidcapError, VideoError
from vidcap.model.checkpoint import read_checkpoint, with_overrides
from vidcap.model.decoding import DecodingOptions
from vidcap.video.reader import open_video

logger = logging.getLogger(__name__)

MIB = 1 << 20


class RequestError(VidcapError):
    """A request the app refuses: `status` is its HTTP status (413 too large, 422 not captionable)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. max_upload_bytes: the largest upload; max_duration: the longest video, in
    seconds (from its header: frame count / frame rate)."""

    max_upload_bytes: int = 200 * MIB
    max_duration: float = 600.0


def describe(captioner: Captioner) -> dict[str, Any]:
    """The checkpoint's description, plain types: its file name, model (variant, encoder, attention), feature
    extractors, K, vocabulary size, the decoding options it starts with, and how it was trained (epochs and steps
    from the checkpoint). No server path: only the file's name."""
    config = captioner.model.config
    checkpoint = read_checkpoint(captioner.checkpoint, map_location="cpu")  # weights only, as load_captioner reads it
    meta = captioner.feature_meta
    extractors = {kind: {key: desc.get(key) for key in ("name", "weights", "dim", "image_size") if key in desc}
                  for kind in ("global", "local") if (desc := meta.get(kind))}
    return {
        "checkpoint": Path(captioner.checkpoint).name,
        "model": {"variant": config.variant, "encoder": config.encoder, "attention": config.attention,
                  "embed_dim": config.embed_dim, "hidden_dim": config.hidden_dim},
        "extractors": extractors,
        "num_frames": captioner.num_frames,
        "vocabulary_size": len(captioner.vocab),
        "decoding": asdict(captioner.decoding),
        "training": {"epochs": int(checkpoint.get("epoch", -1)) + 1, "steps": int(checkpoint.get("global_step", 0)),
                     "lightning": checkpoint.get("pytorch-lightning_version")},
    }


class _Job:
    __slots__ = ("video", "options", "future")

    def __init__(self, video: VideoInputs, options: DecodingOptions):
        self.video, self.options, self.future = video, options, Future()


class CaptionService:
    """A captioner shared by every request. max_batch: most videos in one search; wait_s: how long the first
    video of a batch waits for others (a request alone waits this long at most); readers: videos read at once."""

    def __init__(self, captioner: Captioner, limits: Limits | None = None, *, max_batch: int = 8,
                 wait_s: float = 0.005, readers: int = 2):
        self.captioner = captioner
        self.limits = limits or Limits()
        self.info = describe(captioner)
        self.max_batch, self.wait_s = max_batch, wait_s
        # Searches run so far, the videos they decoded and the largest batch (/api/health reports them).
        self.searches = self.videos = self.largest_batch = 0
        self._reading = threading.BoundedSemaphore(readers)
        # Where the API reads uploads: a few threads, not one per waiting request (each thread that runs torch or
        # FFmpeg grows the process's memory by its own allocator arena).
        self.pool = ThreadPoolExecutor(readers, thread_name_prefix="vidcap-read")
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._decode_loop, name="vidcap-decoder", daemon=True)
        self._thread.start()

    def options(self, beam_size: int | None = None, n_best: int | None = None,
                max_len: int | None = None) -> DecodingOptions:
        """The checkpoint's decoding options with those given in their place (UsageError when they do not fit)."""
        return with_overrides(self.captioner.decoding, beam_size=beam_size, n_best=n_best, max_len=max_len)

    def check_duration(self, path: str | Path, name: str) -> None:
        """RequestError (422) for a video longer than the limit; VideoError for a file that is not one."""
        with open_video(path) as reader:
            seconds = reader.num_frames / reader.fps if reader.fps > 0 else 0.0
        if seconds > self.limits.max_duration:
            raise RequestError(f"{name}: the video lasts {seconds:.0f} s, more than this server's limit of "
                               f"{self.limits.max_duration:.0f} s (--max-duration)", status=422)

    def read(self, path: str | Path, name: str | None = None, *, with_frames: bool = False) -> VideoInputs:
        """Check the video's duration, decode it and extract its features (at most `readers` at once). Its `path`
        becomes `name` (the client's name for the file, never the server's path), and so do the error messages:
        VideoError (also for the decoders' own errors, as `vidcap caption` reports them), or RequestError for a
        video over the duration limit."""
        name = name or Path(path).name
        try:
            with self._reading:
                self.check_duration(path, name)
                video = read_video(path, self.captioner, with_frames=with_frames)
        except RequestError:
            raise
        except VidcapError as error:
            raise type(error)(str(error).replace(str(path), name)) from None
        except DECODER_ERRORS as error:
            # What `vidcap caption` reports as "cannot caption it" for a file the decoders choke on unforeseen.
            logger.debug("%s: unexpected error", name, exc_info=True)
            reason = " ".join(str(error).replace(str(path), name).split()) or "no message"
            raise VideoError(f"{name}: cannot caption it ({type(error).__name__}: {reason})") from None
        video.path = name
        return video

    def submit(self, video: VideoInputs, options: DecodingOptions | None = None) -> Future:
        """Queue a video for the next batched search: a Future of its CaptionResult."""
        job = _Job(video, options or self.captioner.decoding)
        self._jobs.put(job)
        return job.future

    def caption_file(self, path: str | Path, options: DecodingOptions | None = None, *, name: str | None = None,
                     with_frames: bool = False) -> CaptionResult:
        """`read` then `submit`, waiting for the result (blocks this thread until its batch is decoded)."""
        return self.submit(self.read(path, name, with_frames=with_frames), options).result()

    def _take_batch(self, first: _Job) -> list[_Job]:
        jobs = [first]
        try:
            while len(jobs) < self.max_batch:
                job = self._jobs.get(timeout=self.wait_s)
                if job is None:
                    self._jobs.put(None)  # the stop mark: seen again by the loop
                    break
                jobs.append(job)
        except queue.Empty:
            pass
        return jobs

    def _decode_loop(self) -> None:
        while (first := self._jobs.get()) is not None:
            jobs = self._take_batch(first)
            groups: dict[DecodingOptions, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.options, []).append(job)
            for options, group in groups.items():
                self.searches += 1
                self.videos += len(group)
                self.largest_batch = max(self.largest_batch, len(group))
                try:
                    results = caption_inputs([job.video for job in group], self.captioner, options)
                except Exception as error:  # noqa: BLE001 - handed to each waiting request, which reports it
                    logger.exception("decoding a batch of %d videos failed", len(group))
                    for job in group:
                        job.future.set_exception(error)
                    continue
                for job, result in zip(group, results, strict=True):
                    job.future.set_result(result)

    def close(self) -> None:
        """Stop the decoding thread once the queued videos are captioned."""
        self.pool.shutdown(wait=True)
        self._jobs.put(None)
        self._thread.join(timeout=60)
