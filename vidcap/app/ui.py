"""The browser page of `vidcap app` (Gradio): drop a video, read its caption, n-best list and attention.

The attention is the report's card (vidcap.report.page.render_card, card_assets): the sampled frames, the caption's
words, and hovering or tabbing to a word lights the frames it attended to. Every text on it (file name, caption)
is escaped by render_card. Decoding options start at the checkpoint's own; "Download JSON" gives the object
`vidcap caption --json` prints. Examples (`--examples DIR`) are picked by name from a list the server made: nothing
the page sends names a path on the server. An uploaded file is deleted once captioned.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import gradio as gr

from vidcap.app.service import CaptionService
from vidcap.errors import UsageError, VidcapError
from vidcap.report.cards import caption_card
from vidcap.report.page import card_assets, render_card

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv", ".wmv")
# Downloads (the JSON of a result) are kept this long for the browser to fetch, then swept.
DOWNLOAD_SECONDS = 600
MAX_BEAM = 16


def find_examples(folder: str | os.PathLike | None) -> dict[str, Path]:
    """{file name: path} of the videos directly in `folder` (by suffix), sorted by name; {} for None.
    UsageError when it is not a folder."""
    if folder is None:
        return {}
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--examples {folder}: not a folder")
    return {p.name: p for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES}


def describe_markdown(info: Mapping) -> str:
    """The checkpoint's description as a few Markdown lines (values escaped)."""
    e = html.escape
    model, training = info["model"], info["training"]
    extractors = ", ".join(f"{kind} {e(str(d.get('name')))} ({e(str(d.get('weights')))}, {d.get('dim')}-d)"
                           for kind, d in info["extractors"].items())
    decoding = info["decoding"]
    return "\n".join([
        f"**{e(info['checkpoint'])}**: {e(model['variant'])} variant, {e(model['encoder'])} encoder, "
        f"{e(model['attention'])} attention, hidden {model['hidden_dim']}",
        f"- features: {extractors}; {info['num_frames']} frames per video",
        f"- vocabulary: {info['vocabulary_size']} words",
        f"- trained: {training['epochs']} epochs, {training['steps']} steps",
        f"- decoding: beam {decoding['beam_size']}, n-best {decoding['n_best']}, at most {decoding['max_len']} "
        f"words, length penalty {decoding['length_penalty']}",
    ])


def _error(message: str) -> gr.Error:
    # Gradio shows a notice's message as HTML: the file name in it is the client's.
    return gr.Error(html.escape(message), print_exception=False)


def _sweep(folder: Path, older_than: float) -> None:
    """Remove the downloads (one folder each) older than `older_than` seconds."""
    now = time.time()
    for path in folder.glob("*/*.json"):
        try:
            if now - path.stat().st_mtime > older_than:
                path.unlink()
                path.parent.rmdir()
        except (FileNotFoundError, OSError):
            pass


def build_ui(service: CaptionService, examples: Mapping[str, Path], download_dir: str | os.PathLike) -> gr.Blocks:
    """The page's Blocks. `download_dir`: a private folder for the JSON downloads."""
    _, script = card_assets()
    downloads = Path(download_dir)
    decoding = service.captioner.decoding

    def run(upload: str | None, example: str | None, beam_size: float, n_best: float, max_len: float):
        if upload:
            path, owned = Path(upload), True
        elif example:
            if example not in examples:
                raise gr.Error("unknown example")
            path, owned = examples[example], False
        else:
            raise gr.Error("upload a video or pick an example first")
        try:
            options = service.options(beam_size=int(beam_size), n_best=int(n_best), max_len=int(max_len))
            result = service.caption_file(path, options, name=path.name, with_frames=True)
        except VidcapError as problem:  # VideoError, RequestError (over the duration limit), UsageError (options)
            raise _error(str(problem)) from None
        finally:
            if owned:  # the upload, in Gradio's upload folder: captioned (or refused), so gone
                path.unlink(missing_ok=True)
        _sweep(downloads, DOWNLOAD_SECONDS)
        record = json.dumps(result.to_json(), ensure_ascii=False)
        # A folder per result, so that the file keeps the video's name.
        download = Path(tempfile.mkdtemp(dir=downloads)) / f"{Path(result.path).stem or 'video'}.json"
        download.write_text(record + "\n", encoding="utf-8")
        card = caption_card(result)
        card.video_id = result.path
        rows = [[text, round(score, 4)] for text, score in result.alternatives]
        return result.caption, render_card(card), rows, str(download)

    with gr.Blocks(title="vidcap", delete_cache=(DOWNLOAD_SECONDS, DOWNLOAD_SECONDS)) as page:
        gr.Markdown("## vidcap: caption a video\nDrop a video (or pick an example), then **Caption**. Hover a word "
                    "of the caption, or Tab to it: the frames it attended to stay bright, the most attended one is "
                    "outlined, and the bars show the weights.")
        with gr.Row():
            with gr.Column(scale=2):
                video = gr.Video(label="video", sources=["upload"], elem_id="video")
                example = gr.Dropdown(choices=list(examples), value=None, label="or an example",
                                      visible=bool(examples), elem_id="example")
                with gr.Row():
                    beam = gr.Slider(1, max(MAX_BEAM, decoding.beam_size), step=1, value=decoding.beam_size,
                                     label="beam size", elem_id="beam_size")
                    n_best = gr.Slider(1, max(MAX_BEAM, decoding.beam_size), step=1, value=decoding.n_best,
                                       label="n-best", elem_id="n_best")
                    max_len = gr.Slider(1, max(60, decoding.max_len), step=1, value=decoding.max_len,
                                        label="max words", elem_id="max_len")
                button = gr.Button("Caption", variant="primary", elem_id="run")
                gr.Markdown(describe_markdown(service.info), elem_id="checkpoint")
            with gr.Column(scale=3):
                caption = gr.Textbox(label="caption", interactive=False, elem_id="caption")
                attention = gr.HTML(elem_id="attention", js_on_load=f"{script}\nvidcapAttention(element);")
                nbest = gr.Dataframe(headers=["caption", "log-prob"], label="n-best", interactive=False,
                                     elem_id="nbest")
                download = gr.File(label="the `vidcap caption --json` object", elem_id="download")
        button.click(run, [video, example, beam, n_best, max_len], [caption, attention, nbest, download],
                     api_visibility="private")
    return page
