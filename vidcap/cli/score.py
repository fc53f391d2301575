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


def add_arguments(parser) -> None:
    parser.add_argument("--references", required=True, type=Path, metavar="JSON",
                        help='reference captions: {"video_id": ["caption", ...], ...}')
    parser.add_argument("--predictions", required=True, type=Path, metavar="JSON",
                        help='one predicted caption per video: {"video_id": "caption", ...}')


def _load(path: Path):
    try:
        # From bytes: json reads UTF-8 with or without a BOM, and UTF-16/32 (it tells them by their NULs).
        return json.loads(path.read_bytes())
    except OSError as error:
        raise UsageError(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise UsageError(f"{path}: not {error.encoding.upper()} text: {error.reason} at byte {error.start}") from None
    except RecursionError:
        raise UsageError(f"{path}: not valid JSON: nested too deeply") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})") from None


def load_inputs(references_path: Path, predictions_path: Path) -> tuple[dict, dict]:
    """Read and check both files (`metrics.check_inputs`); UsageError naming the file at fault."""
    from vidcap.text.metrics import InputError, check_inputs

    references, predictions = _load(references_path), _load(predictions_path)
    try:
        check_inputs(references, predictions)
    except InputError as error:
        path = references_path if error.side == "references" else predictions_path
        raise UsageError(f"{path}: {error}") from None
    return references, predictions


def run(args) -> int:
    from vidcap.text import metrics

    references, predictions = load_inputs(args.references, args.predictions)
    print(json.dumps(metrics.score_captions(references, predictions)))
    return 0
