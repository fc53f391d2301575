"""Put the page and the API on one FastAPI app and serve it.

    service = CaptionService(load_captioner(ckpt), Limits(...))
    app = build_app(service, examples=find_examples("clips/"), auth=("me", "secret"), work_dir=tmp)
    serve(app, host="127.0.0.1", port=7860)

The API's routes are added first, then the Gradio page is mounted at "/": /api/* are the API's, everything else the
page's. `auth` protects both: the page with Gradio's login form, the API with HTTP Basic (/api/health stays open,
for monitors). Uploads and downloads live in `work_dir`, which the caller creates and removes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from vidcap.app.api import add_api
from vidcap.app.service import CaptionService

# Requests the page runs at once: enough for the batcher to see concurrent users together.
PAGE_CONCURRENCY = 8


def build_app(service: CaptionService, *, work_dir: str | os.PathLike, examples: Mapping[str, Path] | None = None,
              auth: tuple[str, str] | None = None):
    """The FastAPI app: the API routes, and the Gradio page at "/"."""
    import gradio as gr
    from fastapi import FastAPI

    from vidcap.app.ui import build_ui
    from vidcap.report.page import card_assets

    work = Path(work_dir)
    (work / "uploads").mkdir(exist_ok=True)
    (work / "downloads").mkdir(exist_ok=True)
    app = FastAPI(title="vidcap", docs_url=None, redoc_url=None, openapi_url=None)
    add_api(app, service, work / "uploads", auth)
    page = build_ui(service, dict(examples or {}), work / "downloads")
    page.queue(default_concurrency_limit=PAGE_CONCURRENCY)
    css, _ = card_assets()
    return gr.mount_gradio_app(app, page, path="/", auth=auth, max_file_size=service.limits.max_upload_bytes,
                               css=css, footer_links=[], allowed_paths=[str(work / "downloads")])


def serve(app, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Run `app` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
