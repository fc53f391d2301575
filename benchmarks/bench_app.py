"""Benchmark: `vidcap app` under concurrent clients on loopback, beside in-process captioning one at a time.

    python benchmarks/bench_app.py [--checkpoint CKPT] [--clients 8] [--duration 60] [--videos 8]
                                   [--seconds 2] [--size 320x240] [--beam-size 5] [--max-len L] [--threads N]
                                   [--image-size 224] [--frames 26] [--warmup 15]

Starts `vidcap app` as its own process on a free loopback port, then:
  1. in-process: `load_captioner` + `caption_video` over the same videos one at a time (this process, while the
     server idles), for --duration seconds: the throughput of the Python API without a server;
  2. load: --clients asyncio clients (httpx) each POST /api/caption in a loop for --duration seconds, round-robin
     over the videos; every response is checked (200 and the caption of that video, as captioned in step 1).
Prints throughput (videos/s), the CPU time a video costs in each (on a machine shared with other work, more
threads take a larger share of it, so wall-clock throughput alone flatters the server), p50 / p95 latency, errors, the server's resident memory (VmRSS) after a warm-up of
--warmup seconds at full concurrency, during the load and after it, with the number of requests between, the batch sizes the server reports, and the machine's load
average before and after (a shared machine makes every figure slower and noisier).

Without --checkpoint a checkpoint of the default size is written as benchmarks/bench_caption.py writes it (the default
extractor: efficientnet_lite0 with its ImageNet weights at 224 px, K=26, or --image-size and --frames; a `global` model E 256 / H 512; 3000 words;
random model weights, so the captions are arbitrary words). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_caption import write_default_checkpoint, write_test_video  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "vidcap", "app", "--checkpoint", str(checkpoint), "--port", str(port)]
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the app exited ({server.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit("the app did not answer /api/health within 180 s")


async def load(url: str, videos: list[Path], expected: dict[str, str], clients: int, duration: float,
               fields: dict[str, str]) -> tuple[list[float], int, int]:
    """(latencies of successful requests, errors, requests sent)."""
    payloads = {video.name: video.read_bytes() for video in videos}
    latencies: list[float] = []
    errors = sent = 0
    stop = time.monotonic() + duration

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal errors, sent
        i = index
        while time.monotonic() < stop:
            name = videos[i % len(videos)].name
            i += 1
            start = time.perf_counter()
            sent += 1
            try:
                response = await http.post(f"{url}/api/caption", files={"video": (name, payloads[name])},
                                           data=fields)
                ok = response.status_code == 200 and response.json()["caption"] == expected[name]
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return latencies, errors, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="serve this checkpoint (default: write one, see above)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load, and of in-process captioning")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds of load before memory is measured")
    parser.add_argument("--videos", type=int, default=8, help="distinct test videos (default 8)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each test video (default 2)")
    parser.add_argument("--size", default="320x240", help="WxH of the test videos (default 320x240)")
    parser.add_argument("--frames", type=int, default=26, help="K of the written checkpoint (default 26)")
    parser.add_argument("--image-size", type=int, default=224,
                        help="the extractor's input size in the written checkpoint (default 224)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads, in-process and in the server (OMP_NUM_THREADS); default: torch's")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=None, help="words per caption (default: the checkpoint's)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server process starts with it

    from vidcap.caption import caption_video, load_captioner
    from vidcap.model.checkpoint import with_overrides

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs); "
          f"torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        checkpoint = args.checkpoint or write_default_checkpoint(tmp / "bench.ckpt", num_frames=args.frames,
                                                                 image_size=args.image_size)
        videos = [write_test_video(tmp / f"v{i}.mp4", args.seconds + 0.1 * i, width, height, 25)
                  for i in range(args.videos)]
        fields = {"beam_size": str(args.beam_size), **({"max_len": str(args.max_len)} if args.max_len else {})}

        # 1. In-process, one at a time.
        captioner = load_captioner(checkpoint)
        options = with_overrides(captioner.decoding, beam_size=args.beam_size, max_len=args.max_len)
        expected = {video.name: caption_video(video, captioner, options).caption for video in videos}  # + warm-up
        done, start, cpu_start = 0, time.perf_counter(), time.process_time()
        in_process = []
        while time.perf_counter() - start < args.duration:
            t = time.perf_counter()
            caption_video(videos[done % len(videos)], captioner, options)
            in_process.append(time.perf_counter() - t)
            done += 1
        alone = done / (time.perf_counter() - start)
        alone_cpu = (time.process_time() - cpu_start) / done
        del captioner

        # 2. The server under load.
        port = free_port()
        server = start_server(checkpoint, port, tmp / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            # Warm-up at full concurrency: the first requests, and the memory every reading thread takes once.
            warm = asyncio.run(load(url, videos, expected, args.clients, args.warmup, fields))
            rss_before = rss_mb(server.pid)
            cpu_before = cpu_seconds(server.pid)
            samples: list[float] = []
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.wait(args.duration / 6):
                    samples.append(rss_mb(server.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.perf_counter()
            latencies, errors, sent = asyncio.run(load(url, videos, expected, args.clients, args.duration, fields))
            elapsed = time.perf_counter() - started
            sampling.set()
            sampler.join()
            rss_after = rss_mb(server.pid)
            server_cpu = (cpu_seconds(server.pid) - cpu_before) / max(len(latencies), 1)
            health = httpx.get(f"{url}/api/health").json()
        finally:
            server.terminate()
            server.wait(timeout=60)

    served = len(latencies) / elapsed
    written = f"written: efficientnet_lite0 at {args.image_size} px, K={args.frames}, random model weights"
    print(f"videos: {args.videos} x ~{args.seconds:.0f} s {width}x{height} H.264; checkpoint "
          f"{written if args.checkpoint is None else args.checkpoint}; beam {args.beam_size}")
    print(f"in-process caption_video, one at a time: {alone:.2f} videos/s ({done} videos in {args.duration:.0f} s; "
          f"p50 {statistics.median(in_process):.3f} s; {alone_cpu:.2f} CPU s a video)")
    print(f"vidcap app, {args.clients} clients for {elapsed:.0f} s: {served:.2f} videos/s "
          f"({served / alone:.2f}x in-process), {len(latencies)} ok, {errors} errors of {sent} requests")
    # On a shared machine the CPU time a video costs is the comparison the other work skews least.
    print(f"CPU time a video: server {server_cpu:.2f} s (all its threads), in-process {alone_cpu:.2f} s "
          f"({alone_cpu / server_cpu:.2f}x)")
    print(f"latency: p50 {percentile(latencies, 0.5):.3f} s, p95 {percentile(latencies, 0.95):.3f} s")
    print(f"server RSS: {rss_before:.0f} MiB after a warm-up of {warm[2]} requests ({warm[1]} errors), "
          f"{rss_after:.0f} MiB after {sent} more ({rss_after - rss_before:+.0f} MiB); during the load: "
          + " ".join(f"{v:.0f}" for v in samples))
    print(f"server: {health['videos']} videos in {health['searches']} batched searches "
          f"({health['videos'] / max(health['searches'], 1):.2f} a search, largest {health['largest_batch']})")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
