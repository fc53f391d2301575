"""Decoders compared per container/codec and resolution: decord, PyAV and torchcodec, on videos this script makes with
PyAV (a script, not a test; every number is measured in this one run).

    python benchmarks/bench_decoders.py [--seconds 10] [--frames 26] [--rounds 3] [--sizes 320x240,640x360,1280x720]
                                        [--formats mp4:h264,...] [--threads 1]

For every video it times `vidcap.video.reader.read_sampled_frames` (the K frames `vidcap extract` samples, opening
the file included) with each backend, and checks each backend's frames against PyAV's sequential decode of the
whole file: a backend is "right" when every returned frame is nearest (mean absolute difference) to the frame asked
for among its neighbours, and within 2 grey levels of it. torchcodec is timed only where it loads (it needs the
system's FFmpeg shared libraries); otherwise the line says why. The last column says what `--backend auto` picks.
Wall-clock numbers on a shared machine are noisy: compare within one run, and note the load average (printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1's banner on every encode: errors only
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidcap.video.reader import open_video, read_sampled_frames, sample_frame_indices  # noqa: E402
from vidcap.video.writer import write_frames  # noqa: E402

# container suffix : codec as FFmpeg names the stream -> the encoder that writes it, pixel format, options
ENCODERS = {
    "h264": ("libx264", "yuv420p", {"preset": "veryfast"}),
    "hevc": ("libx265", "yuv420p", {"preset": "ultrafast", "x265-params": "log-level=error"}),
    "vp9": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    "vp8": ("libvpx", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    "av1": ("libsvtav1", "yuv420p", {"preset": "12"}),
    "mpeg4": ("mpeg4", "yuv420p", {"bf": "2", "qscale": "3"}),  # Xvid-like, B-frames (MSVD's AVIs)
    "mjpeg": ("mjpeg", "yuvj420p", {}),
}
FORMATS = "mp4:h264,mkv:h264,avi:h264,mp4:hevc,webm:vp9,mkv:av1,avi:mpeg4,avi:mjpeg"  # webm:vp8 also works


def frames(seconds: float, fps: int, width: int, height: int):
    """Moving gradients with a frame counter bar: every frame differs from its neighbours."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    for t in range(int(seconds * fps)):
        base = np.sin((x + 5 * t) / (width / 17)) * np.cos((y - 3 * t) / (height / 11)) * 90 + 128
        frame = np.stack([base, np.roll(base, width // 7, axis=1), 255 - base], axis=-1)
        frame += rng.normal(0, 4, frame.shape).astype(np.float32)
        frame[: height // 10, : max(1, (t * width) // int(seconds * fps))] = 250
        yield np.clip(frame, 0, 255).astype(np.uint8)


def make_video(folder: Path, suffix: str, codec: str, size: tuple[int, int], seconds: float, fps: int) -> Path:
    encoder, pix_fmt, options = ENCODERS[codec]
    path = folder / f"{codec}_{size[0]}x{size[1]}.{suffix}"
    write_frames(path, frames(seconds, fps, *size), fps=fps, codec=encoder, pix_fmt=pix_fmt, options=options)
    return path


def truth(path: Path) -> np.ndarray:
    """Every frame, decoded in order by PyAV (no seeking): the reference."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def right_frames(got: np.ndarray, indices: np.ndarray, reference: np.ndarray) -> bool:
    for frame, index in zip(got, indices, strict=True):
        lo, hi = max(0, index - 3), min(len(reference), index + 4)
        errors = [np.abs(frame.astype(np.int16) - reference[j].astype(np.int16)).mean() for j in range(lo, hi)]
        if lo + int(np.argmin(errors)) != index or min(errors) > 2.0:
            return False
    return True


class TorchcodecSampler:
    """The same K frames through torchcodec's VideoDecoder (exact seek mode), for the comparison only."""

    def __init__(self):
        from torchcodec.decoders import VideoDecoder

        self.decoder = VideoDecoder

    def __call__(self, path: Path, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        decoder = self.decoder(str(path), seek_mode="exact", num_ffmpeg_threads=threads)
        indices, _ = sample_frame_indices(decoder.metadata.num_frames, k)
        batch = decoder.get_frames_at(indices.tolist()).data  # (K, 3, H, W) uint8
        return batch.permute(0, 2, 3, 1).numpy(), indices


def torchcodec_or_reason(path: Path) -> tuple[TorchcodecSampler | None, str]:
    try:
        sampler = TorchcodecSampler()
        sampler(path, 2, 1)
        return sampler, ""
    except Exception as exc:  # noqa: BLE001 - report whatever stops it
        import re

        missing = re.findall(r"(lib\w+\.so\.\d+): cannot open shared object", str(exc))
        if missing:
            return None, (f"torchcodec looks for the system's FFmpeg shared libraries ({', '.join(missing)}) and finds "
                          "none of them (PyAV's wheel carries its own FFmpeg under renamed files, which torchcodec "
                          "does not load)")
        return None, " ".join(str(exc).split())[:200]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--frames", type=int, default=26)
    parser.add_argument("--rounds", type=int, default=3, help="the median of this many timings")
    parser.add_argument("--sizes", default="320x240,640x360,1280x720")
    parser.add_argument("--formats", default=FORMATS, help="container:codec pairs")
    parser.add_argument("--threads", type=int, default=1,
                        help="decoder threads (vidcap extract on 2 cores: 1 per decoding worker)")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    pairs = [tuple(p.split(":")) for p in args.formats.split(",")]
    print(f"cpus={os.cpu_count()} decoder threads={args.threads} K={args.frames} videos of {args.seconds:g} s at "
          f"{args.fps} fps; load average {os.getloadavg()[0]:.1f}")
    print("| container | codec | size | decord ms | PyAV ms | torchcodec ms | decord right | decord/PyAV | auto |")
    print("|---|---|---|---|---|---|---|---|---|")
    reason = None
    with tempfile.TemporaryDirectory() as tmp:
        for suffix, codec in pairs:
            for size in sizes:
                path = make_video(Path(tmp), suffix, codec, size, args.seconds, args.fps)
                reference = truth(path)
                row, right = {}, {}
                for backend in ("decord", "pyav"):
                    times = []
                    for _ in range(args.rounds):
                        start = time.perf_counter()
                        try:
                            sampled = read_sampled_frames(path, args.frames, backend, threads=args.threads)
                        except Exception as exc:  # noqa: BLE001
                            times, right[backend] = [], f"fails: {' '.join(str(exc).split())[:200]}"
                            break
                        times.append(time.perf_counter() - start)
                    if times:
                        row[backend] = 1000 * statistics.median(times)
                        right[backend] = right_frames(sampled.frames, sampled.indices, reference)
                sampler, reason = torchcodec_or_reason(path) if reason is None or not reason else (None, reason)
                if sampler is not None:
                    times = []
                    for _ in range(args.rounds):
                        start = time.perf_counter()
                        got, indices = sampler(path, args.frames, args.threads)
                        times.append(time.perf_counter() - start)
                    row["torchcodec"] = 1000 * statistics.median(times)
                    right["torchcodec"] = right_frames(got, indices, reference)
                with open_video(path, "auto", threads=args.threads) as reader:
                    auto = reader.backend
                def fmt(b, row=row, right=right):
                    verdict = right.get(b, True)
                    if isinstance(verdict, str):
                        return "cannot open"
                    return (f"{row[b]:.0f}" if b in row else "-") + ("" if verdict else " (wrong frames)")

                ratio = f"{row['pyav'] / row['decord']:.2f}x" if "decord" in row and "pyav" in row else "-"
                decord_right = right.get("decord")
                print(f"| {suffix} | {codec} | {size[0]}x{size[1]} | {fmt('decord')} | {fmt('pyav')} | "
                      f"{fmt('torchcodec') if sampler else 'n/a'} | "
                      f"{decord_right if not isinstance(decord_right, str) else '-'} | {ratio} | {auto} |", flush=True)
                if isinstance(decord_right, str):
                    print(f"decord: {decord_right}", file=sys.stderr)
                path.unlink()
    if reason:
        print(f"torchcodec: does not decode here: {reason}")
    print(f"decord/PyAV: decord's speed as a multiple of PyAV's (above 1: decord faster). "
          f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
