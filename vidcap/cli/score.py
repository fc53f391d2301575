"""`vidcap score`: coco-caption metrics of a predictions file against a references file, as one JSON object."""

from __future__ import annotations

import json
from pathlib import Path

from vidcap.errors import UsageError

HELP = "score predictions against references with the coco-caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr)"
EXAMPLE = """\
  vidcap score --references refs.json --predictions preds.json
      refs.json:  {"vid1": ["a man is slicing a tomato", "someone cuts a tomato"], ...}
      preds.json: {"vid1": "a man is cutting a tomato", ...}
  prints {"Bleu_1": ..., "Bleu_2": ..., "Bleu_3": ..., "Bleu_4": ..., "METEOR": ..., "ROUGE_L": ..., "CIDEr": ...}
"""

_MAX_NAMED = 5


def add_arguments(parser) -> None:
    parser.add_argument("--references", required=True, type=Path, metavar="JSON",
                        help='reference captions: {"video_id": ["caption", ...], ...}')
    parser.add_argument("--predictions", required=True, type=Path, metavar="JSON",
                        help='one predicted caption per video: {"video_id": "caption", ...}')


def _load(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as error:
        raise UsageError(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise UsageError(f"{path}: not UTF-8 text: {error.reason} at byte {error.start}") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})") from None


def _named(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_MAX_NAMED])
    return shown + (f" and {len(ids) - _MAX_NAMED} more" if len(ids) > _MAX_NAMED else "")


def load_inputs(references_path: Path, predictions_path: Path) -> tuple[dict, dict]:
    """Read and check both files; UsageError naming the file for anything wrong in it."""
    references, predictions = _load(references_path), _load(predictions_path)
    if not isinstance(references, dict):
        raise UsageError(f'{references_path}: expected an object {{"video_id": ["caption", ...]}}, '
                         f"got a JSON {type(references).__name__}")
    if not isinstance(predictions, dict):
        raise UsageError(f'{predictions_path}: expected an object {{"video_id": "caption"}}, '
                         f"got a JSON {type(predictions).__name__}")
    bad = [k for k, v in references.items()
           if not isinstance(v, list) or not v or not all(isinstance(c, str) for c in v)]
    if bad:
        raise UsageError(f"{references_path}: the value of each id must be a non-empty list of strings; "
                         f"not for {_named(bad)}")
    bad = [k for k, v in predictions.items() if not isinstance(v, str)]
    if bad:
        raise UsageError(f"{predictions_path}: the value of each id must be a string; not for {_named(bad)}")
    missing = [k for k in references if k not in predictions]
    if missing:
        raise UsageError(f"{predictions_path}: no prediction for {len(missing)} ids of {references_path}: "
                         f"{_named(missing)}")
    extra = [k for k in predictions if k not in references]
    if extra:
        raise UsageError(f"{predictions_path}: {len(extra)} ids have no references in {references_path}: "
                         f"{_named(extra)}")
    if not references:
        raise UsageError(f"{references_path}: no video ids, nothing to score")
    return references, predictions


def run(args) -> int:
    from vidcap import metrics

    references, predictions = load_inputs(args.references, args.predictions)
    print(json.dumps(metrics.score_captions(references, predictions)))
    return 0
