"""What a bug report needs: the versions and machine vidcap runs on, and a self-test of the decoding paths.

`environment()` lists (label, value) rows: vidcap's version and commit, Python, torch (CUDA or not), torchvision, av
and its FFmpeg, decord, pytorchvideo, Lightning, pycocoevalcap, Java, the CPU and the instruction set torch's kernels
use, thread counts. `machine_line()` is the one line that goes beside every measured number in the docs: float
results depend on the CPU's instruction set, so a number without it cannot be compared.

`self_test(folder)` writes a tiny video, decodes it with each backend, and decodes it again in an extraction loader
worker after this process converted frames itself (the av 18.1.1 fork hang, vidcap.video.reader.WORKER_START_METHOD); each
check is a `Check` that says what failed in one line. `vidcap doctor` prints both and exits 1 if a check fails.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

# Packages whose versions a report lists, in the order of the pipeline; the PyPI name, then the label.
PACKAGES = (
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("av", "av (PyAV)"),
    ("decord", "decord"),
    ("pytorchvideo", "pytorchvideo"),
    ("efficientnet-lite-pytorch", "efficientnet-lite-pytorch"),
    ("pytorch-lightning", "pytorch-lightning"),
    ("pycocoevalcap", "pycocoevalcap"),
    ("numpy", "numpy"),
    ("pandas", "pandas"),
)
# How long the worker self-test waits for its worker: a fresh interpreter importing torch takes a few seconds.
WORKER_TEST_TIMEOUT = 120.0


@dataclass(frozen=True)
class Check:
    """One self-test: its name, whether it passed, and a one-line detail (the reason, when it failed)."""

    name: str
    ok: bool
    detail: str


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def vidcap_commit() -> str | None:
    """`git describe` of the checkout vidcap runs from (an editable install), or None (a wheel, no git)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    result = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def cpu_model() -> str:
    """The CPU's model name, with its family and model numbers where Linux gives them (a virtual machine may name
    only the vendor: "AMD EPYC (family 25, model 1)" is a Zen 3), else platform.processor(); and the architecture."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block ends here
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return f"{name}, {platform.machine()}"


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels use here (e.g. AVX2, AVX512): what makes float results differ."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def ffmpeg_version() -> str:
    import av

    return getattr(av, "ffmpeg_version_info", None) or ".".join(map(str, av.library_versions["libavcodec"]))


def java_version() -> str | None:
    """`java -version`'s first line, or None when no Java is on PATH."""
    java = shutil.which("java")
    if java is None:
        return None
    result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[0] if lines else "java (version unknown)"


def machine_line() -> str:
    """One line that says where a number was measured: CPU and instruction set, torch, av (FFmpeg)."""
    import av
    import torch

    return (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({cpu_capability()}), "
            f"av {av.__version__} (FFmpeg {ffmpeg_version()})")


def environment() -> list[tuple[str, str]]:
    """(label, value) rows for a bug report."""
    import torch

    commit = vidcap_commit()
    rows = [("vidcap", f"{_version('vidcap') or 'not installed'}" + (f" (commit {commit})" if commit else "")),
            ("python", f"{platform.python_version()} ({sys.executable})"),
            ("platform", platform.platform())]
    for package, label in PACKAGES:
        version = _version(package)
        rows.append((label, version or "not installed"))
        if package == "torch":
            cuda = (f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s): "
                    f"{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CUDA not available")
            rows[-1] = (label, f"{version} ({cuda})")
        elif package == "av" and version:
            rows[-1] = (label, f"{version} (FFmpeg {ffmpeg_version()})")
    rows.append(("java", java_version() or "not found"))
    rows.append(("cpu", cpu_model()))
    rows.append(("cpu capability", f"{cpu_capability()} (torch.backends.cpu.get_cpu_capability)"))
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows.append(("threads", f"{os.cpu_count()} cores, {affinity} usable; torch {torch.get_num_threads()} intra-op, "
                            f"{torch.get_num_interop_threads()} inter-op"))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE"):
        if name in os.environ:
            rows.append((name, os.environ[name]))
    rows.append(("machine line", machine_line()))
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Self-test


def _test_frames(n: int = 8, size: int = 32) -> np.ndarray:
    """Flat grey frames whose level encodes their index (16 * i): any wrong or shifted frame shows."""
    levels = (np.arange(n) * 16 + 8).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, size, size, 3)).copy()


def _frames_match(decoded: np.ndarray, expected: np.ndarray) -> str | None:
    """None when decoded frames are the expected ones (lossless H.264, so within 2 grey levels); else why not."""
    if decoded.shape != expected.shape:
        return f"frames of shape {decoded.shape}, expected {expected.shape}"
    error = int(np.abs(decoded.astype(np.int16) - expected.astype(np.int16)).max())
    return None if error <= 2 else f"frames differ from the written ones by up to {error} grey levels"


def _check(name: str, run) -> Check:
    """Run one check: run() returns (the reason it failed or None, a detail line); an exception fails it too."""
    started = time.perf_counter()
    try:
        problem, detail = run()
    except Exception as error:  # noqa: BLE001 - a self-test reports any failure as its one line
        problem, detail = f"{type(error).__name__}: {' '.join(str(error).split())}", ""
    seconds = time.perf_counter() - started
    if problem:
        return Check(name, False, problem)
    return Check(name, True, f"{detail} ({seconds:.1f} s)".strip())


def self_test(folder: str | os.PathLike) -> list[Check]:
    """Write a tiny video into `folder`, decode it with PyAV and decord (where installed), then in an extraction
    loader worker after this process converted frames with PyAV's default threads. One Check per step."""
    from vidcap.video.reader import read_sampled_frames
    from vidcap.video.writer import write_frames

    path = Path(folder) / "doctor.mp4"
    expected = _test_frames()

    def write():
        write_frames(path, expected, options={"crf": "0"})  # lossless
        return None, f"{len(expected)} frames"

    def decode(backend: str):
        frames = read_sampled_frames(path, len(expected), backend).frames
        return _frames_match(frames, expected), f"{len(frames)} frames"

    checks = [_check("write a test video (PyAV, H.264)", write)]
    if not checks[0].ok:
        return checks
    checks.append(_check("decode with PyAV", lambda: decode("pyav")))
    if _decord_import_error() is None:  # without it, missing_requirements says so once
        checks.append(_check("decode with decord", lambda: decode("decord")))
    checks.append(_check("decode in a loader worker after this process decoded", lambda: _worker_decode(path,
                                                                                                        expected)))
    return checks


def _worker_decode(path: Path, expected: np.ndarray):
    """The extraction's own loader (vidcap.features.shard.decoding_loader), one worker, after a conversion with
    PyAV's default threads here: a worker forked from this process would hang on av 18.1.1."""
    import av

    from vidcap.features.extract import ExtractOptions
    from vidcap.features.shard import VideoDataset, decoding_loader, worker_failure
    from vidcap.video.reader import WORKER_START_METHOD, FrameRequest

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
    options = ExtractOptions(global_name="efficientnet_lite0", num_frames=len(expected), num_workers=1,
                             worker_timeout=WORKER_TEST_TIMEOUT, backend="pyav").checked()
    loader = decoding_loader(VideoDataset([("doctor", str(path))], {"frames": FrameRequest()}, options), options)
    try:
        items = list(loader)
    except RuntimeError as error:
        failure = worker_failure(error, WORKER_TEST_TIMEOUT)
        if failure is None:
            raise
        return failure[0], ""
    if len(items) != 1 or items[0].error:
        return f"the worker could not decode it: {items[0].error if items else 'nothing delivered'}", ""
    return _frames_match(items[0].video.inputs["frames"][:, 0].numpy(), expected), f"{WORKER_START_METHOD} worker"


def missing_requirements() -> list[Check]:
    """Checks for what some stages need and a machine may lack: Java (METEOR, the PTB tokenizer) and decord."""
    checks = []
    java = java_version()
    checks.append(Check("java", java is not None, java or "not found on PATH: METEOR and the PTB tokenizer (vidcap "
                                                          "evaluate, score, demo) need it; install a JRE"))
    error = _decord_import_error()
    checks.append(Check("decord", error is None, _version("decord") if error is None else (
        f"not importable ({error}): every video decodes with PyAV, which is slower on MP4 (decord has wheels for "
        "Linux and Windows x86_64 only)")))
    return checks


def _decord_import_error() -> str | None:
    import av  # noqa: F401  before decord, as vidcap.video.decord_backend does

    try:
        import decord  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


__all__ = ["Check", "environment", "machine_line", "missing_requirements", "self_test"]
