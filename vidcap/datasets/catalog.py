"""The dataset registry and `prepare`, which runs one dataset into a data directory.

A dataset is one module (or package) `vidcap/datasets/<name>.py` that defines
    NAME, HELP, EXAMPLE              # `vidcap prepare NAME`, its one-line help, example command lines
    PAPER_DATASET                    # key of vidcap.report.table.PAPER_TABLE1, or None when the paper has no row for it
    add_arguments(parser)            # its own options (--out, --min-count, --max-vocab are added for all)
    load(out, **options) -> (captions, videos, report)
                                     # out: the output folder; options: its own options as keyword arguments
                                     # captions [video_id, split, caption] (raw text), videos [video_id, split, path],
                                     # report: JSON-able counts; optional report["missing_videos"] = {split: n}
    content_metrics(data_dir, predictions, reversed_predictions) -> dict   # optional: dataset-specific metrics
    build_vocab(captions, max_vocab=V, **options) -> Vocabulary  # optional: a vocabulary of its own
    write_features(captions, videos, **options) -> dict  # optional: a feature store of its own; counts for prepare.json
`registry()` finds them by scanning this package, so adding a dataset edits no list. `prepare` runs one of them,
tokenises every caption with coco-caption's PTB tokenizer (one Java call; a captions table that comes with a
`tokens` column keeps it), builds the vocabulary from the train split and writes the data directory.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pkgutil
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from vidcap.datasets.options import dataset_options
from vidcap.datasets.splits import split_table
from vidcap.datasets.tables import make_out_dir, tokenize_captions, write_tables, write_vocab
from vidcap.errors import UsageError
from vidcap.text.vocab import SPECIAL_TOKENS

log = logging.getLogger(__name__)

PROTOCOL = ("NAME", "HELP", "EXAMPLE", "PAPER_DATASET", "add_arguments", "load")


@cache
def registry() -> dict[str, ModuleType]:
    """NAME -> dataset module, for every module of vidcap.datasets that defines the dataset protocol (sorted by name).

    A module that defines some of the protocol's names but not all is a programming error: TypeError names it.
    """
    import vidcap.datasets as package

    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        present = [name for name in PROTOCOL if hasattr(module, name)]
        if not present:
            continue  # a helper module, not a dataset
        if len(present) < len(PROTOCOL):
            missing = ", ".join(name for name in PROTOCOL if name not in present)
            raise TypeError(f"{module.__name__}: a dataset module must also define {missing}")
        found[module.NAME] = module
    return dict(sorted(found.items()))


def get_module(name: str) -> ModuleType:
    """The dataset module called NAME; UsageError listing the others when there is none."""
    datasets = registry()
    if name not in datasets:
        raise UsageError(f"unknown dataset {name!r} (choose from {', '.join(datasets)})")
    return datasets[name]


def dataset_module(data_dir: str | os.PathLike) -> ModuleType | None:
    """The module of the dataset DIR was prepared from (DIR/prepare.json's "dataset"); None when there is no
    prepare.json or it names no registered dataset."""
    path = Path(data_dir) / "prepare.json"
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("dataset")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as error:
        raise UsageError(f"{path}: cannot read it: {error}") from None
    module = registry().get(name)
    if module is None:
        log.warning("%s: dataset %r is not one of %s", path, name, ", ".join(registry()))
    return module


def content_metrics(
    data_dir: str | os.PathLike, predictions: Mapping[str, str], reversed_predictions: Mapping[str, str] | None
) -> dict[str, float]:
    """The dataset's own metrics of `predictions` (e.g. the synthetic dataset's objects and order), through the
    `content_metrics` hook of the dataset DIR was prepared from; {} when it has none."""
    module = dataset_module(data_dir)
    hook = getattr(module, "content_metrics", None)
    if hook is None:
        return {}
    return hook(Path(data_dir), dict(predictions), None if reversed_predictions is None else dict(reversed_predictions))


def prepare(name: str, *, out: str | os.PathLike, min_count: int = 2, max_vocab: int | None = None,
            **options: Any) -> dict[str, Any]:
    """What `vidcap prepare NAME` does, without printing: load the dataset, tokenise its captions, write
    DIR/captions.csv, videos.csv, vocab.json (train split only) and prepare.json. `options` are the dataset's own
    (`vidcap prepare NAME --help`, dashes as underscores), its defaults filling the ones left out. Returns the report
    written to prepare.json. Needs Java (the PTB tokenizer)."""
    from vidcap.text.metrics import find_java

    module = get_module(name)
    options = dataset_options(module, options)
    java = find_java()  # before any work: the dataset may take minutes to load
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a folder")
    if max_vocab is not None and max_vocab <= len(SPECIAL_TOKENS):
        raise UsageError(f"--max-vocab must be more than {len(SPECIAL_TOKENS)} (the special tokens), got {max_vocab}")
    captions, videos, report = module.load(out_dir, **options)
    captions, untokenized = tokenize_captions(captions, java)
    if captions.empty:
        raise UsageError(f"{name}: no captions kept, nothing to write")
    report = {"dataset": module.NAME, **report}
    every_option = {**options, "out": out if isinstance(out, str) else str(out), "min_count": min_count,
                    "max_vocab": max_vocab}
    report["options"] = {**report.get("options", {}), **every_option}
    report["captions_without_tokens"] = untokenized
    report["splits"] = split_table(captions, videos, report.get("missing_videos"))
    if hasattr(module, "build_vocab"):
        make_out_dir(out_dir)
        vocab = module.build_vocab(captions, max_vocab=max_vocab, **options)
        vocab.save(out_dir / "vocab.json")
    else:
        vocab = write_vocab(out_dir, captions, min_count=min_count, max_size=max_vocab)
    report["vocab_size"] = len(vocab)
    if hasattr(module, "write_features"):
        report.update(module.write_features(captions, videos, **options))
    write_tables(out_dir, captions, videos, report)  # prepare.json last: its presence means everything is written
    log.info("%s: %d captions of %d clips written to %s", name, len(captions), len(videos), out_dir)
    return report
