"""`vidcap app`: caption videos in the browser (Gradio) and over HTTP, with one captioner loaded once."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from vidcap.errors import UsageError
from vidcap.precision import PRECISIONS

HELP = "serve a checkpoint: a page to drop a video on and see its caption and attention, and an HTTP API"
EXAMPLE = """
  vidcap app --checkpoint demo_out/run/checkpoints/last.ckpt               # then open http://127.0.0.1:7860
  vidcap app --checkpoint best.ckpt --examples clips/ --auth me:secret --host 0.0.0.0 --port 8080
  curl -F video=@clip.mp4 -F beam_size=3 http://127.0.0.1:7860/api/caption
"""
INSTALL = "vidcap app needs gradio: pip install 'vidcap[app]'"


def _auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("expected USER:PASSWORD")
    return user, password


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by `vidcap fit`")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 lets anyone who "
                             "can reach it upload videos: see docs/app.md)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--examples", metavar="DIR", help="offer the videos in DIR as examples to pick")
    parser.add_argument("--auth", type=_auth, metavar="USER:PASSWORD",
                        help="require these credentials: a login form on the page, HTTP Basic on the API")
    parser.add_argument("--max-upload-mb", type=_positive(float), default=200.0, metavar="MB",
                        help="largest upload in MiB (default 200); larger ones get HTTP 413")
    parser.add_argument("--max-duration", type=_positive(float), default=600.0, metavar="SECONDS",
                        help="longest video in seconds (default 600); longer ones get HTTP 422")
    parser.add_argument("--max-batch", type=_positive(int), default=8, metavar="B",
                        help="most videos decoded together in one beam search (default 8)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run (default cpu)")
    parser.add_argument("--precision", default="32-true", choices=PRECISIONS,
                        help="numeric precision of the captioning model (default 32-true)")


def _few_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena and rarely returns their memory: under many
    concurrent requests the server's memory then creeps up (+52 MiB over 656 requests in docs/app.md, against +12
    MiB with 2 arenas). Same as MALLOC_ARENA_MAX=2 in the environment; nothing elsewhere than glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and name and "MALLOC_ARENA_MAX" not in os.environ:
        try:
            ctypes.CDLL(name).mallopt(-8, arenas)  # M_ARENA_MAX
        except (OSError, AttributeError):
            pass


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL) from None
    _few_malloc_arenas()  # before any thread starts
    work = tempfile.mkdtemp(prefix="vidcap-app-")
    # Gradio keeps the page's uploads in its own folder: this private one (set before gradio is imported), removed
    # on exit with everything else the app wrote.
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(work, "gradio")
    service = None
    try:
        from vidcap.app.server import build_app, serve
        from vidcap.app.service import MIB, CaptionService, Limits
        from vidcap.app.ui import find_examples
        from vidcap.caption import load_captioner

        examples = find_examples(args.examples)
        captioner = load_captioner(args.checkpoint, device=args.device, precision=args.precision)
        limits = Limits(max_upload_bytes=int(args.max_upload_mb * MIB), max_duration=args.max_duration)
        service = CaptionService(captioner, limits, max_batch=args.max_batch)
        app = build_app(service, work_dir=work, examples=examples, auth=args.auth)
        print(f"vidcap app: serving {args.checkpoint} on http://{args.host}:{args.port} (API: /api/caption, "
              "/api/info, /api/health)", file=sys.stderr, flush=True)
        serve(app, host=args.host, port=args.port)
    finally:
        if service is not None:
            service.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0
