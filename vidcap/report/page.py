"""The evaluation report: one offline HTML page to look at a captioner's mistakes (issue 14).

    cards = [Card(video_id, caption, references=refs, scores=..., words=..., attention=..., sprite=...), ...]
    write_report("runs/eval/report", cards, title="MSVD test", table=[("this model", metrics)], info={...})

`DIR/index.html` holds everything: styles, one script (vidcap/report/assets/), and each video's K thumbnails as one
JPEG sprite in a data: URI (`loading="lazy"`, so only the sprites on screen are decoded). A Content-Security-Policy
forbids every request, scripts other than its own included: the page works offline and, should a caption ever slip
through unescaped, cannot run it. Every caption, reference and id is untrusted text and goes through `html.escape`.

The page: the metrics in Table 1's layout (vidcap.report.table) with the paper's row when given, what was evaluated, and one
card per video (thumbnails, caption, n-best, references, per-video scores; hovering or focusing a word shows the
frames it attended to), sortable by any per-video score (worst first) and filtered by text. Building cards from an
evaluation or from `vidcap caption` results: vidcap.report.cards.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vidcap.atomic import write_text
from vidcap.errors import UsageError
from vidcap.report.table import COLUMNS

log = logging.getLogger(__name__)

# 26 thumbnails 48 px high at JPEG quality 65 are ~20 kB a video, so MSVD's 670 test videos make a page of ~21 MB.
SPRITE_HEIGHT = 48
JPEG_QUALITY = 65
# Per-video score key -> its name on the page (the keys of `per_video_scores`, and vidcap caption's log-prob).
SCORE_LABELS = {"Bleu_4": "BLEU-4", "METEOR": "METEOR", "CIDEr": "CIDEr-D", "log_prob": "log-prob"}
# Sorted by this score, worst first, when the cards have it: where a researcher looks first.
DEFAULT_SORT = "CIDEr"
REFERENCES_SHOWN = 3  # the others fold into a <details>
EVENT_FIELDS = ("colour", "shape", "action")
HELP = ('<p id="help">Hover a word of a caption, or Tab to it: the frames it attended to stay bright, the most '
        "attended one is outlined, and the bars show the weights.</p>")


class Sprite(NamedTuple):
    """A video's K thumbnails side by side, left to right, as one JPEG."""

    jpeg: bytes
    frames: int  # K
    width: int  # of one thumbnail, pixels
    height: int


@dataclass
class Card:
    """What the page shows of one video. Only `video_id` and `caption` are required.

    words: the L tokens the attention rows belong to (the caption's words, then "<eos>"); without attention the
      caption's words are shown, not interactive.
    attention: (L, K) float, row l = the weights over the K frames when words[l] was emitted (one-hot for hard
      attention). frame_times: (K,) seconds. sprite: the K thumbnails (`frames_to_sprite`), None: no pictures.
    nbest: (caption, log-prob) pairs, best first. references: every reference caption. scores: per-video scores
      (`per_video_scores` keys, or any name -> float; a missing score sorts last).
    events: the true (event 1, event 2) of a synthetic video (vidcap.datasets.synthetic.Event), marked right/wrong
      against the parsed caption; reversed_caption: the caption of the reversed frames (reversal test).
    note: one line shown on the card, e.g. why it has no pictures.
    """

    video_id: str
    caption: str
    words: Sequence[str] = ()
    attention: np.ndarray | None = None
    frame_times: np.ndarray | None = None
    sprite: Sprite | None = None
    nbest: Sequence[tuple[str, float]] = ()
    references: Sequence[str] = ()
    scores: Mapping[str, float] = field(default_factory=dict)
    events: tuple[Any, Any] | None = None
    reversed_caption: str | None = None
    note: str | None = None

    def frame_count(self) -> int:
        """K, from whichever of attention, frame_times and sprite the card has (0 without any). ValueError when
        they disagree or the attention is not (L, K) with L = len(words)."""
        if self.attention is not None and (np.ndim(self.attention) != 2 or len(self.attention) != len(self.words)):
            raise ValueError(f"card {self.video_id!r}: attention of shape {np.shape(self.attention)} for "
                             f"{len(self.words)} words: expected (L, K) with L = len(words)")
        counts = {name: n for name, n in (
            ("attention", None if self.attention is None else np.shape(self.attention)[-1]),
            ("frame_times", None if self.frame_times is None else len(self.frame_times)),
            ("sprite", None if self.sprite is None else self.sprite.frames),
        ) if n is not None}
        if len(set(counts.values())) > 1:
            raise ValueError(f"card {self.video_id!r}: frame counts disagree: {counts}")
        return next(iter(counts.values()), 0)


def frames_to_sprite(frames: np.ndarray, height: int = SPRITE_HEIGHT, quality: int = JPEG_QUALITY) -> Sprite:
    """frames (K, H, W, 3) uint8 -> a Sprite of K thumbnails `height` pixels high (never enlarged), side by side."""
    from PIL import Image

    from vidcap.report.explain import thumbnails

    thumbs = thumbnails(frames, height)
    k, h, w, _ = thumbs.shape
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(list(thumbs), axis=1)).save(buffer, "JPEG", quality=quality, optimize=True)
    return Sprite(buffer.getvalue(), k, w, h)


def per_video_scores(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str],
                     timeout: float = 600.0) -> dict[str, dict[str, float]]:
    """BLEU-4, METEOR and CIDEr-D of every video: {video_id: {"Bleu_4", "METEOR", "CIDEr": float}}.

    The coco-caption scorers as vidcap.text.metrics runs them (PTB tokens, one METEOR JVM), per item: BLEU-4 is
    pycocoevalcap's sentence BLEU, CIDEr-D takes its IDF from the whole split (the mean of the per-video values is
    the corpus CIDEr-D), METEOR scores one video per request. Score a whole split at once. Needs Java.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    from vidcap.text.metrics import MeteorProcess, check_inputs, find_java, ptb_tokenize

    ids = check_inputs(references, predictions)
    java = find_java()
    # METEOR's JVM loads its paraphrase table while the captions are tokenised (as score_captions does).
    with MeteorProcess(java, timeout) as meteor:
        tokens = ptb_tokenize({**{("ref", i): list(references[i]) for i in ids},
                               **{("hyp", i): [predictions[i]] for i in ids}}, java, timeout)
        gts = {i: tokens[("ref", i)] for i in ids}
        res = {i: tokens[("hyp", i)] for i in ids}
        _, bleu = Bleu(4).compute_score(gts, res, verbose=0)
        _, cider = Cider().compute_score(gts, res)
        meteor_scores = []
        for i in ids:  # one request per video: METEOR's score of a one-video corpus is that video's score
            meteor.start_scoring({i: gts[i]}, {i: res[i]})
            meteor_scores.append(meteor.result())
    return {i: {"Bleu_4": float(b), "METEOR": float(m), "CIDEr": float(c)}
            for i, b, m, c in zip(ids, bleu[3], meteor_scores, cider, strict=True)}


# ----------------------------------------------------------------------------------------------------------------
# HTML


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _asset(name: str) -> str:
    return (resources.files("vidcap.report") / "assets" / name).read_text(encoding="utf-8")


def card_assets() -> tuple[str, str]:
    """(CSS, JavaScript) that make `render_card`'s HTML work on another page: the styles of a card, and
    `vidcapAttention(root)`, which lights a word's frames on hover or focus for every card under `root`."""
    return _asset("card.css"), _asset("attention.js")


def _cell(key: str, value: float | None) -> str:
    if value is None:
        return '<td class="num">-</td>'
    # Table 1's precision (vidcap.report.table.format_table); data-value keeps the exact number.
    shown = f"{value:.{2 if key == 'perplexity' else 4}f}"
    return f'<td class="num" data-key="{_e(key)}" data-value="{_e(json.dumps(value))}">{shown}</td>'


def _metrics_table(rows: Sequence[tuple[str, Mapping[str, float | None]]]) -> str:
    if not rows:
        return ""
    keys = [key for key, _ in COLUMNS]
    extra = [key for _, metrics in rows for key in metrics if key not in keys]
    keys += list(dict.fromkeys(extra))
    titles = dict(COLUMNS)
    head = "".join(f"<th>{_e(titles.get(key, key))}</th>" for key in keys)
    body = "".join(f"<tr><th>{_e(label)}</th>{''.join(_cell(key, metrics.get(key)) for key in keys)}</tr>"
                   for label, metrics in rows)
    return f'<table id="metrics"><thead><tr><th>model</th>{head}</tr></thead><tbody>{body}</tbody></table>'


def _info(info: Mapping[str, Any]) -> str:
    def text(value: Any) -> str:
        if isinstance(value, Mapping):
            return ", ".join(f"{k}={v}" for k, v in value.items())
        return str(value)

    return '<dl id="info">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(text(v))}</dd>" for k, v in info.items()
                                      if v is not None) + "</dl>"


def _strip(card: Card, k: int) -> str:
    """The frames: the sprite under K cells that the script shades by a word's attention (blank cells without it)."""
    times = card.frame_times
    cells = "".join(
        f'<span class="cell" title="frame {j + 1}{"" if times is None else f" at {float(times[j]):.2f} s"}"></span>'
        for j in range(k))
    if card.sprite is None:
        return f'<div class="strip blank" style="--k:{k}"><div class="cells">{cells}</div></div>'
    s = card.sprite
    data = base64.b64encode(s.jpeg).decode("ascii")
    return (f'<div class="strip" style="--k:{k};max-width:{s.width * k}px"><img loading="lazy" decoding="async" '
            f'alt="{k} sampled frames" width="{s.width * k}" height="{s.height}" src="data:image/jpeg;base64,{data}">'
            f'<div class="cells">{cells}</div></div>')


def _words(card: Card) -> str:
    if card.attention is None or not len(card.words):
        return f'<p class="caption">{_e(card.caption) or "<i>(empty caption)</i>"}</p>'
    spans = []
    for word, row in zip(card.words, np.asarray(card.attention, dtype=np.float64), strict=True):
        weights = " ".join(f"{w:.3f}".lstrip("0") or "0" for w in row)
        spans.append(f'<span class="w" tabindex="0" data-a="{weights}">{_e(word)}</span>')
    return f'<p class="caption">{" ".join(spans)}</p>'


def _event_marks(caption: str, truth: Sequence[Any]) -> str:
    from vidcap.datasets.synthetic import parse_caption

    parsed = parse_caption(caption) or ((None,) * 3, (None,) * 3)
    items = []
    for said, true in zip(parsed, truth, strict=True):
        marks = []
        for index, name in enumerate(EVENT_FIELDS):
            got, want = said[index], true[index]
            if got is not None and got == want:
                marks.append(f'<span class="ok" title="{name}: right">{_e(got)}</span>')
            else:
                marks.append(f'<span class="bad" title="{name}: wrong, the video has {_e(want)}">'
                             f"<del>{_e(got or '?')}</del> <ins>{_e(want)}</ins></span>")
        items.append(f"<li>{' '.join(marks)}</li>")
    return f'<ol class="events">{"".join(items)}</ol>'


def render_card(card: Card) -> str:
    """One card's HTML (every text escaped); `card_assets` gives what it needs to look and behave as in the
    report. ValueError when its attention, times and sprite disagree on K."""
    k = card.frame_count()
    # A score that is None or not finite (JSON has no NaN) counts as missing: it sorts last.
    scores = {key: float(v) for key, v in card.scores.items() if v is not None and np.isfinite(v)}
    chips = "".join(f'<span class="score" data-key="{_e(key)}">{_e(SCORE_LABELS.get(key, key))} '
                    f"<b>{value:.3f}</b></span>" for key, value in scores.items())
    parts = [f'<header><h2>{_e(card.video_id)}</h2><div class="scores">{chips}</div></header>']
    if k:
        parts.append(_strip(card, k))
    if card.note:
        parts.append(f'<p class="note">{_e(card.note)}</p>')
    left = [_words(card)]
    if card.events is not None:
        left.append(f'<div class="label">events (parsed from the caption; \u2713 right, \u2717 wrong)</div>'
                    f"{_event_marks(card.caption, card.events)}")
    if card.reversed_caption is not None:
        same = card.reversed_caption.lower().split() == card.caption.lower().split()
        # No marks: played backwards, a motion changes direction and an appearance becomes a disappearance.
        left.append(f'<div class="label">reversed frames ({"same caption" if same else "changed"})</div>'
                    f'<p class="reversed">{_e(card.reversed_caption)}</p>')
    if len(card.nbest) > 1:
        items = "".join(f'<li>{_e(text)} <span class="lp">{score:.2f}</span></li>' for text, score in card.nbest)
        left.append(f"<details><summary>n-best ({len(card.nbest)})</summary><ol>{items}</ol></details>")
    right = []
    if card.references:
        refs = [f"<li>{_e(ref)}</li>" for ref in card.references]
        right.append(f'<div class="label">references ({len(refs)})</div><ol class="refs">'
                     f"{''.join(refs[:REFERENCES_SHOWN])}</ol>")
        if len(refs) > REFERENCES_SHOWN:
            right.append(f"<details><summary>all {len(refs)}</summary>"
                         f'<ol class="refs" start="{REFERENCES_SHOWN + 1}">{"".join(refs[REFERENCES_SHOWN:])}</ol>'
                         "</details>")
    parts.append(f'<div class="body"><div>{"".join(left)}</div><div>{"".join(right)}</div></div>')
    return (f'<article class="card" data-id="{_e(card.video_id)}" data-scores="{_e(json.dumps(scores))}">'
            f'{"".join(parts)}</article>')


def _controls(cards: Sequence[Card], sort_by: str | None) -> str:
    keys = list(dict.fromkeys(key for card in cards for key in card.scores))
    if sort_by is None:
        sort_by = DEFAULT_SORT if DEFAULT_SORT in keys else (keys[0] if keys else "")
    options = [("", "input order"), ("id", "video id")] + [(key, SCORE_LABELS.get(key, key)) for key in keys]
    select = "".join(f'<option value="{_e(value)}"{" selected" * (value == sort_by)}>{_e(label)}</option>'
                     for value, label in options)
    return ('<div id="controls"><label>sort by <select id="sort">' + select + '</select></label>'
            '<button id="direction" type="button" data-ascending="1">worst first</button>'
            '<input id="filter" type="search" placeholder="filter: words in captions, references, ids" '
            'aria-label="filter the videos"><span id="count"></span></div>')


def render_report(cards: Sequence[Card], *, title: str = "vidcap report",
                  table: Sequence[tuple[str, Mapping[str, float | None]]] = (), info: Mapping[str, Any] | None = None,
                  sort_by: str | None = None) -> str:
    """The page as a string (see `write_report`)."""
    script = _asset("attention.js") + _asset("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    # Nothing may be fetched (offline page, no network); only this script runs.
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
           "base-uri 'none'; form-action 'none'")
    info = dict(info or {})
    info.setdefault("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_asset('report.css')}{_asset('card.css')}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        '<section id="summary">' + _metrics_table(table) + _info(info) + "</section>",
        _controls(cards, sort_by),
        HELP if any(card.attention is not None for card in cards) else "",
        '<main id="cards">',
        *(render_card(card) for card in cards),
        "</main>",
        f"<script>{script}</script></body></html>",
    ])


def report_folder(out_dir: str | os.PathLike) -> Path:
    """Create the report folder (and its parents): the CLIs call it before decoding anything, so that a folder that
    cannot be made fails at once. UsageError naming it."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{out}: cannot create the report folder: {error.strerror}") from None
    return out


def write_report(out_dir: str | os.PathLike, cards: Sequence[Card], *, title: str = "vidcap report",
                 table: Sequence[tuple[str, Mapping[str, float | None]]] = (), info: Mapping[str, Any] | None = None,
                 sort_by: str | None = None) -> Path:
    """Write OUT_DIR/index.html atomically and return its path.

    table: metric rows (label, {metrics.json key: value}) in Table 1's layout, e.g. [("this model", metrics),
      ("Yao et al. 2015", vidcap.report.table.paper_row(...))]; keys beyond Table 1's columns become extra columns.
    info: what was evaluated, shown as "name: value" (checkpoint, split, decoding options as a dict, ...); a
      "date" is added when missing. sort_by: the per-video score the cards are sorted by at first (worst first;
      default CIDEr when the cards have it). ValueError for a card whose attention, times and sprite disagree on K.
    """
    out = report_folder(out_dir)
    page = render_report(cards, title=title, table=table, info=info, sort_by=sort_by)
    path = write_text(out / "index.html", page)
    log.info("wrote %s (%d videos, %.1f MB)", path, len(cards), len(page) / 1e6)
    return path
