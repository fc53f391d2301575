"""Table 1's ablation: train and evaluate each variant over several seeds (`vidcap ablate`).

Runs (`ABLATION_RUNS`, variant, frame encoder and training):
    basic / none / xe           Enc-Dec (Basic): the mean of the frame features at every step
    global / none / xe          + Global: the paper's temporal attention, blind to frame order
    global / position / xe      + Global with the time-position frame encoder (the demo's model)
    local / none / xe           + Local: Basic over [global; local] features
    local_global / position / xe  + Local + Global, with the position encoder
    global / position / scst    the demo's model fine-tuned by self-critical training (issue 12), from the
                                global / position / xe run of the same seed
    global / position / hard    the demo's model with hard attention (REINFORCE for the frame choices)

Every cross-entropy run (`xe`, `hard`) is `vidcap fit` with the demo's config (configs/experiment/demo.yaml) and its
row's values:
    --config configs/data/synthetic.yaml --config configs/experiment/demo.yaml [--config configs/experiment/hard.yaml] --model.architecture.variant V
    --model.architecture.encoder E --seed_everything S
(hard.yaml: hard attention and its REINFORCE weights);
an `scst` run is `vidcap fit --config configs/experiment/scst.yaml --model.init_from XE_RUN/checkpoints/last.ckpt
--seed_everything S`, and each run folder keeps its resolved config.yaml, so `vidcap fit --config RUN/config.yaml`
trains it again.

On the synthetic dataset by default (prepared and extracted like the demo, plus local features), or on real data with
`data_dir`/`features_dir` (variants that need local features are skipped when the store has none; the content metrics
exist only on synthetic data). The local features here are `frame_delta_efficientnet_lite0`: the change of the 2-D
EfficientNet features across a short clip around each sampled frame. It is *not* a 3-D CNN (no 3-D weights can be
had offline); it carries motion (direction), not appearance.

Every run lives in OUT/runs/<variant>-<encoder>[-<training>]-seed<S>/ (checkpoints/, config.yaml, eval/); a rerun
reuses finished runs. OUT/ablation.csv has one row per run: variant, encoder, training, seed, the metrics.json keys
and `degenerate`, the share of test captions that end on a dangling word or repeat a word (`degenerate_share`).
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
from vidcap.datasets.synthetic.events import CONTENT_METRIC_KEYS, REVERSAL_KEY
from vidcap.errors import UsageError
from vidcap.experiments.demo import (
    DEMO_METRIC_KEYS,
    DemoSettings,
    evaluate_run,
    extract_features,
    prepare_synthetic,
    train,
)

log = logging.getLogger(__name__)

# xe: cross-entropy; hard: cross-entropy with hard attention; scst: self-critical, from the xe run of the same seed
TRAININGS = ("xe", "hard", "scst")
ABLATION_RUNS: tuple[tuple[str, str, str], ...] = (
    ("basic", "none", "xe"),
    ("global", "none", "xe"),
    ("global", "position", "xe"),
    ("local", "none", "xe"),
    ("local_global", "position", "xe"),
    ("global", "position", "scst"),
    ("global", "position", "hard"),
)
METRIC_KEYS = DEMO_METRIC_KEYS + ("degenerate",)
CSV_COLUMNS = ("variant", "encoder", "training", "seed") + METRIC_KEYS
TRAINING_LABELS = {"xe": "", "hard": " + hard attention", "scst": " + SCST"}
CONTENT_COLUMNS = (*CONTENT_METRIC_KEYS, REVERSAL_KEY)
# Issue 7's gates on the synthetic dataset (means over seeds): key -> threshold, for attention + position encoder.
GATES = {"objects_order_acc": 0.80, "order_given_objects_acc": 0.90, "colour_acc": 0.90, "shape_acc": 0.90,
         "reversal_changed": 0.90}
CIDER_MARGIN = 0.5  # attention + position must beat Basic's CIDEr by this much
# Issue 12's gates. SCST: test CIDEr up by this much on the mean (and in every seed) over its own XE checkpoint, the
# order metrics and the share of degenerate captions no worse. Hard attention: these thresholds, and CIDEr within
# HARD_CIDER_GAP of soft attention's.
SCST_CIDER_GAIN = 0.10
SCST_KEPT = ("objects_order_acc", "order_given_objects_acc")
HARD_GATES = {"order_given_objects_acc": 0.90, "reversal_changed": 0.90}
HARD_CIDER_GAP = 0.3
# Captions that end on one of these words are cut short (a known failure of SCST on n-gram rewards).
DANGLING = ("a", "an", "the", "and", "then")


@dataclass
class Gate:
    name: str
    value: float
    threshold: str
    passed: bool


def parse_runs(text: str) -> tuple[tuple[str, str, str], ...]:
    """`basic:none,global:position:scst` -> (("basic", "none", "xe"), ("global", "position", "scst"))."""
    from vidcap.model.captioner import ENCODERS, VARIANTS

    runs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        variant, encoder, training, *rest = [*item.split(":"), "", ""]
        encoder, training = encoder or "none", training or "xe"
        if variant not in VARIANTS or encoder not in ENCODERS or training not in TRAININGS or any(rest):
            raise UsageError(f"--runs: {item!r} is not VARIANT:ENCODER[:TRAINING] with VARIANT in "
                             f"{', '.join(VARIANTS)}, ENCODER in {', '.join(ENCODERS)} and TRAINING in "
                             f"{', '.join(TRAININGS)}")
        runs.append((variant, encoder, training))
    if not runs:
        raise UsageError("--runs: no run given")
    return tuple(runs)


def degenerate_share(captions: Sequence[str]) -> float:
    """The share of captions that are empty, end on a dangling word (`DANGLING`) or say a word twice in a row."""
    def degenerate(words: list[str]) -> bool:
        return not words or words[-1] in DANGLING or any(a == b for a, b in zip(words, words[1:], strict=False))

    return sum(degenerate(caption.split()) for caption in captions) / max(1, len(captions))


def _run_dir(out: Path, variant: str, encoder: str, training: str, seed: int) -> Path:
    kind = "" if training == "xe" else f"-{training}"  # xe runs keep the folder names of earlier ablations
    return out / "runs" / f"{variant}-{encoder}{kind}-seed{seed}"


def _train_run(out: Path, data_dir: Path, features_dir: Path, settings: DemoSettings, run: tuple[str, str, str],
               seed: int, progress: bool) -> tuple[Path, bool]:
    """Train one run (an scst run trains, or reuses, the xe run of its seed first): (last.ckpt, whether trained)."""
    variant, encoder, training = run
    if training == "scst":
        xe_checkpoint, _ = _train_run(out, data_dir, features_dir, settings, (variant, encoder, "xe"), seed, progress)
        spec = settings.scst_training(xe_checkpoint, {"seed_everything": seed})
    else:
        build = settings.hard_training if training == "hard" else settings.training
        spec = build({"model.architecture.variant": variant, "model.architecture.encoder": encoder,
                      "seed_everything": seed})
    return train(data_dir, features_dir, _run_dir(out, *run, seed), spec, progress)


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
    runs: Sequence[tuple[str, str, str]] = ABLATION_RUNS,
    on_run: Callable[[int, int, str, str, str, int], None] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train and evaluate `runs` x `seeds` (seeds 0..N-1); return one dict per run (CSV_COLUMNS, and `local_features`:
    the store's local extractor, for the table's labels) and write
    OUT/ablation.csv (rewritten after every run, so an interrupted ablation keeps what it finished).

    on_run(index, total, variant, encoder, training, seed) is called before each run, for a progress display.
    """
    from vidcap.features.store import read_meta
    from vidcap.model.captioner import LOCAL_VARIANTS
    from vidcap.report.table import local_feature_name

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
        needs_local = any(v in LOCAL_VARIANTS for v, _, _ in runs)
        data_dir, features_dir = out / "data", out / "features"
        prepare_synthetic(data_dir, settings, progress)
        extract_features(data_dir, features_dir, settings.image_size, local=needs_local, progress=progress)
    data_dir, features_dir = Path(data_dir), Path(features_dir)
    local_name = local_feature_name(read_meta(features_dir))
    has_local = local_name is not None
    todo = []
    for variant, encoder, training in runs:
        if variant in LOCAL_VARIANTS and not has_local:
            log.warning("%s: no local features in the store; skipping %s", features_dir, variant)
            continue
        todo.extend(((variant, encoder, training), seed) for seed in range(seeds))
    rows: list[dict[str, Any]] = []
    for index, (run, seed) in enumerate(todo):
        if on_run:
            on_run(index, len(todo), *run, seed)
        run_dir = _run_dir(out, *run, seed)
        checkpoint, trained = _train_run(out, data_dir, features_dir, settings, run, seed, progress)
        evaluated = evaluate_run(checkpoint, data_dir, features_dir, run_dir / "eval", trained, progress)
        metrics, predictions = evaluated.metrics, evaluated.predictions
        rows.append({"variant": run[0], "encoder": run[1], "training": run[2], "seed": seed,
                     **{k: metrics.get(k) for k in DEMO_METRIC_KEYS},
                     "degenerate": degenerate_share(list(predictions.values())), "local_features": local_name})
        _write_csv(out / "ablation.csv", rows)
    return rows


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["variant"], row["encoder"], row.get("training") or "xe"


def mean_rows(rows: Sequence[dict[str, Any]]) -> list[tuple[tuple[str, str, str], dict[str, float], int]]:
    """((variant, encoder, training), mean of every metric over seeds, number of seeds), in the order runs first
    appear; a row without `training` is a cross-entropy run ("xe")."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_key(row), []).append(row)
    out = []
    for key, group in groups.items():
        means = {}
        for metric in METRIC_KEYS:
            values = [float(r[metric]) for r in group if r.get(metric) not in (None, "")]
            if values:
                means[metric] = statistics.fmean(values)
        out.append((key, means, len(group)))
    return out


def format_ablation(rows: Sequence[dict[str, Any]]) -> str:
    """The Table 1 layout (vidcap.report.table.format_table) of the means over seeds, content metrics as extra columns; the
    +Local rows name their local extractor when the rows carry `local_features`."""
    from vidcap.report.table import format_table, model_label

    means = mean_rows(rows)
    extra = [k for k in ("ROUGE_L",) + CONTENT_COLUMNS + ("degenerate",) if any(k in m for _, m, _ in means)]
    local: dict[tuple[str, str, str], str] = {}
    for row in rows:
        if row.get("local_features"):
            local.setdefault(_key(row), row["local_features"])
    table_rows = [(model_label({"variant": v, "encoder": e}, local.get((v, e, t))) + TRAINING_LABELS[t], m)
                  for (v, e, t), m, _ in means]
    return format_table(table_rows, extra=extra)


def check_gates(rows: Sequence[dict[str, Any]], attention: tuple[str, str] = ("global", "position"),
                basic: tuple[str, str] = ("basic", "none")) -> list[Gate]:
    """Issues 7 and 12's gates on the means over seeds (synthetic data; a gate whose runs or metrics are missing is
    left out)."""
    means = {key: m for key, m, _ in mean_rows(rows)}
    att, base = means.get((*attention, "xe")), means.get((*basic, "xe"))
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
    if att is not None:
        gates += _reward_gates(rows, means, attention, att)
    return gates


def _reward_gates(rows: Sequence[dict[str, Any]], means: dict[tuple[str, str, str], dict[str, float]],
                  attention: tuple[str, str], xe: dict[str, float]) -> list[Gate]:
    """Issue 12: SCST against its own XE checkpoints (seed by seed), hard attention against soft."""
    name = f"{attention[0]}+{attention[1]}"
    scst, hard, gates = means.get((*attention, "scst")), means.get((*attention, "hard")), []
    if scst is not None and "CIDEr" in scst and "CIDEr" in xe:
        cider = {(_key(r)[2], r["seed"]): float(r["CIDEr"]) for r in rows
                 if _key(r)[:2] == attention and r.get("CIDEr") not in (None, "")}
        seeds = [seed for training, seed in cider if training == "scst" and ("xe", seed) in cider]
        raised = sum(cider[("scst", seed)] > cider[("xe", seed)] for seed in seeds)
        gates.append(Gate(f"{name} SCST raises CIDEr in every seed", raised, f"== {len(seeds)} seeds",
                          bool(seeds) and raised == len(seeds)))
        gain = scst["CIDEr"] - xe["CIDEr"]
        gates.append(Gate(f"{name} SCST CIDEr - XE CIDEr", gain, f">= {SCST_CIDER_GAIN:.2f}", gain >= SCST_CIDER_GAIN))
        for key in SCST_KEPT + ("degenerate",):
            if key in scst and key in xe:
                change = scst[key] - xe[key]
                rising = key == "degenerate"
                gates.append(Gate(f"{name} SCST {key} - XE {key}", change, "<= 0" if rising else ">= 0",
                                  change <= 0 if rising else change >= 0))
    if hard is not None:
        for key, threshold in HARD_GATES.items():
            if key in hard:
                gates.append(Gate(f"{name} hard {key}", hard[key], f">= {threshold:.2f}", hard[key] >= threshold))
        if "CIDEr" in hard and "CIDEr" in xe:
            gap = abs(hard["CIDEr"] - xe["CIDEr"])
            gates.append(Gate(f"{name} |hard CIDEr - soft CIDEr|", gap, f"<= {HARD_CIDER_GAP:.2f}",
                              gap <= HARD_CIDER_GAP))
    return gates
