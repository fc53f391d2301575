"""Table 1's ablation: train and evaluate each variant over several seeds (`vidcap ablate`).

Runs (`ABLATION_RUNS`, variant and frame encoder):
    basic / none           Enc-Dec (Basic): the mean of the frame features at every step
    global / none          + Global: the paper's temporal attention, blind to frame order
    global / position      + Global with the time-position frame encoder (the demo's model)
    local / none           + Local: Basic over [global; local] features
    local_global / position  + Local + Global, with the position encoder

Every run is `vidcap fit` with the demo's config (configs/experiment/demo.yaml) and its row's two values:
    --config configs/experiment/demo.yaml --model.architecture.variant V --model.architecture.encoder E
    --seed_everything S
and each run folder keeps its resolved config.yaml, so `vidcap fit --config RUN/config.yaml` trains it again.

On the synthetic dataset by default (prepared and extracted like the demo, plus local features), or on real data with
`data_dir`/`features_dir` (variants that need local features are skipped when the store has none; the content metrics
exist only on synthetic data). The local features here are `frame_delta_efficientnet_lite0`: the change of the 2-D
EfficientNet features across a short clip around each sampled frame. It is *not* a 3-D CNN (no 3-D weights can be
had offline); it carries motion (direction), not appearance.

Every run lives in OUT/runs/<variant>-<encoder>-seed<S>/ (checkpoints/, config.yaml, eval/); a rerun reuses finished
runs. OUT/ablation.csv has one row per run: variant, encoder, seed and the metrics.json keys.
"""

from __future__ import annotations

import csv
import logging
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidcap.atomic import atomic_path
from vidcap.demo import DEMO_METRIC_KEYS, DemoSettings, _read_json, extract_features, prepare_synthetic, train
from vidcap.errors import UsageError

log = logging.getLogger(__name__)

ABLATION_RUNS: tuple[tuple[str, str], ...] = (
    ("basic", "none"),
    ("global", "none"),
    ("global", "position"),
    ("local", "none"),
    ("local_global", "position"),
)
CSV_COLUMNS = ("variant", "encoder", "seed") + DEMO_METRIC_KEYS
CONTENT_COLUMNS = ("objects_order_acc", "order_given_objects_acc", "colour_acc", "shape_acc", "direction_acc",
                   "reversal_changed")
# Issue 7's gates on the synthetic dataset (means over seeds): key -> threshold, for attention + position encoder.
GATES = {"objects_order_acc": 0.80, "order_given_objects_acc": 0.90, "colour_acc": 0.90, "shape_acc": 0.90,
         "reversal_changed": 0.90}
CIDER_MARGIN = 0.5  # attention + position must beat Basic's CIDEr by this much


@dataclass
class Gate:
    name: str
    value: float
    threshold: str
    passed: bool


def parse_runs(text: str) -> tuple[tuple[str, str], ...]:
    """`basic:none,global:position` -> (("basic", "none"), ("global", "position"))."""
    from vidcap.model import ENCODERS, VARIANTS

    runs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        variant, _, encoder = item.partition(":")
        encoder = encoder or "none"
        if variant not in VARIANTS or encoder not in ENCODERS:
            raise UsageError(f"--runs: {item!r} is not VARIANT:ENCODER with VARIANT in {', '.join(VARIANTS)} and "
                             f"ENCODER in {', '.join(ENCODERS)}")
        runs.append((variant, encoder))
    if not runs:
        raise UsageError("--runs: no run given")
    return tuple(runs)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})


def run_ablation(
    out: str | os.PathLike = "ablation_out",
    seeds: int = 3,
    data_dir: str | os.PathLike | None = None,
    features_dir: str | os.PathLike | None = None,
    settings: DemoSettings | None = None,
    runs: Sequence[tuple[str, str]] = ABLATION_RUNS,
    on_run: Callable[[int, int, str, str, int], None] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train and evaluate `runs` x `seeds` (seeds 0..N-1); return one dict per run (CSV_COLUMNS, and `local_features`:
    the store's local extractor, for the table's labels) and write
    OUT/ablation.csv (rewritten after every run, so an interrupted ablation keeps what it finished).

    on_run(index, total, variant, encoder, seed) is called before each run, for a progress display.
    """
    from vidcap.evaluation import evaluate, local_feature_name, write_outputs
    from vidcap.model import LOCAL_VARIANTS
    from vidcap.store import read_meta

    settings = settings or DemoSettings()
    if seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")
    if (data_dir is None) != (features_dir is None):
        raise UsageError("give both --data and --features (real data), or neither (the synthetic dataset)")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{out}: cannot create the output folder: {error.strerror}") from None
    if data_dir is None:
        needs_local = any(v in LOCAL_VARIANTS for v, _ in runs)
        data_dir, features_dir = out / "data", out / "features"
        prepare_synthetic(data_dir, settings, progress)
        extract_features(data_dir, features_dir, settings.image_size, local=needs_local, progress=progress)
    data_dir, features_dir = Path(data_dir), Path(features_dir)
    local_name = local_feature_name(read_meta(features_dir))
    has_local = local_name is not None
    todo = []
    for variant, encoder in runs:
        if variant in LOCAL_VARIANTS and not has_local:
            log.warning("%s: no local features in the store; skipping %s", features_dir, variant)
            continue
        todo.extend((variant, encoder, seed) for seed in range(seeds))
    rows: list[dict[str, Any]] = []
    for index, (variant, encoder, seed) in enumerate(todo):
        if on_run:
            on_run(index, len(todo), variant, encoder, seed)
        run_dir = out / "runs" / f"{variant}-{encoder}-seed{seed}"
        args = settings.training_args("--model.architecture.variant", variant, "--model.architecture.encoder", encoder,
                                      "--seed_everything", str(seed))
        checkpoint, trained = train(data_dir, features_dir, run_dir, args, progress)
        metrics = _read_json(run_dir / "eval" / "metrics.json")
        if trained or not isinstance(metrics, dict):
            result = evaluate(checkpoint, data_dir, features_dir, split="test", reverse=True, progress=progress)
            write_outputs(result, run_dir / "eval")
            metrics = result.metrics
        rows.append({"variant": variant, "encoder": encoder, "seed": seed,
                     **{k: metrics.get(k) for k in DEMO_METRIC_KEYS}, "local_features": local_name})
        _write_csv(out / "ablation.csv", rows)
    return rows


def mean_rows(rows: Sequence[dict[str, Any]]) -> list[tuple[tuple[str, str], dict[str, float], int]]:
    """((variant, encoder), mean of every metric over seeds, number of seeds), in the order runs first appear."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["encoder"]), []).append(row)
    out = []
    for key, group in groups.items():
        means = {}
        for metric in DEMO_METRIC_KEYS:
            values = [float(r[metric]) for r in group if r.get(metric) not in (None, "")]
            if values:
                means[metric] = statistics.fmean(values)
        out.append((key, means, len(group)))
    return out


def format_ablation(rows: Sequence[dict[str, Any]]) -> str:
    """The Table 1 layout (vidcap.table.format_table) of the means over seeds, content metrics as extra columns; the
    +Local rows name their local extractor when the rows carry `local_features`."""
    from vidcap.evaluation import model_label
    from vidcap.table import format_table

    means = mean_rows(rows)
    extra = [k for k in ("ROUGE_L",) + CONTENT_COLUMNS if any(k in m for _, m, _ in means)]
    local: dict[tuple[str, str], str] = {}
    for row in rows:
        if row.get("local_features"):
            local.setdefault((row["variant"], row["encoder"]), row["local_features"])
    table_rows = [(model_label({"variant": v, "encoder": e}, local.get((v, e))), m) for (v, e), m, _ in means]
    return format_table(table_rows, extra=extra)


def check_gates(rows: Sequence[dict[str, Any]], attention: tuple[str, str] = ("global", "position"),
                basic: tuple[str, str] = ("basic", "none")) -> list[Gate]:
    """Issue 7's gates on the means over seeds (synthetic data; empty when the runs or metrics are missing)."""
    means = {key: m for key, m, _ in mean_rows(rows)}
    att, base = means.get(attention), means.get(basic)
    gates = []
    if att is not None:
        for key, threshold in GATES.items():
            if key in att:
                gates.append(Gate(f"{attention[0]}+{attention[1]} {key}", att[key], f">= {threshold:.2f}",
                                  att[key] >= threshold))
        if base is not None and "CIDEr" in att and "CIDEr" in base:
            gates.append(Gate(f"{attention[0]}+{attention[1]} CIDEr - basic CIDEr", att["CIDEr"] - base["CIDEr"],
                              f">= {CIDER_MARGIN:.2f}", att["CIDEr"] - base["CIDEr"] >= CIDER_MARGIN))
    if base is not None and "reversal_changed" in base:
        gates.append(Gate("basic reversal_changed", base["reversal_changed"], "== 0",
                          base["reversal_changed"] == 0))
    return gates
