"""`vidcap demo` and `vidcap ablate` end to end on a handful of synthetic videos, tiny models and few steps."""

from __future__ import annotations

import csv
import json

import pytest

from vidcap.ablate import CSV_COLUMNS, Gate, check_gates, format_ablation, mean_rows, parse_runs
from vidcap.cli import main
from vidcap.demo import DEMO_METRIC_KEYS
from vidcap.errors import UsageError
from vidcap.evaluation import model_label

# 12 videos (8 train / 1 val / 3 test), features at 32 px, a tiny model trained for a few steps.
TINY = ["--num-videos", "12", "--image-size", "32", "--epochs", "1", "--max-steps", "3", "--hidden-dim", "16",
        "--embed-dim", "8", "--attention-dim", "8", "--batch-size", "8", "--beam-size", "2", "--workers", "1",
        "--quiet"]


@pytest.mark.java
@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    first = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(DEMO_METRIC_KEYS)
    assert all(0.0 <= metrics[k] <= 1.0 for k in DEMO_METRIC_KEYS if k.endswith("_acc") or k == "reversal_changed")
    assert len(json.loads((out / "eval" / "predictions.json").read_text())) == 3
    assert (out / "explain" / "syn00009.png").stat().st_size > 0
    assert "Held-out video syn00009" in first.out
    for stage in ("prepare", "extract", "fit", "evaluate", "caption"):
        assert f"] {stage}: done in " in first.err
    timings = json.loads((out / "timings.json").read_text())
    assert list(timings) == ["prepare", "extract", "fit", "evaluate", "caption"]

    # A second run reuses the trained model and its evaluation.
    assert main(["demo", "--out", str(out), *TINY]) == 0
    second = capsys.readouterr()
    for number, stage in enumerate(("prepare", "extract", "fit", "evaluate"), 1):
        assert f"[{number}/5] {stage}: reused from an earlier run" in second.err
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_demo_refuses_a_folder_trained_with_other_settings(tmp_path, capsys):
    from vidcap.demo import TrainSettings, train

    run = tmp_path / "run"
    run.mkdir()
    (run / "settings.json").write_text(json.dumps({"variant": "basic"}))
    with pytest.raises(UsageError, match="trained with other settings"):
        train(tmp_path / "data", tmp_path / "feats", run, TrainSettings(), "global", "position")


@pytest.mark.java
@pytest.mark.slow
def test_ablate_trains_every_variant_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "ablate"
    assert main(["ablate", "--out", str(out), "--seeds", "1", *TINY]) == 0
    stdout = capsys.readouterr().out
    with open(out / "ablation.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["variant"], r["encoder"], r["seed"]) for r in rows] == [
        ("basic", "none", "0"), ("global", "none", "0"), ("global", "position", "0"), ("local", "none", "0"),
        ("local_global", "position", "0")]
    # Models blind to frame order write the same caption for reversed frames.
    assert float(rows[0]["reversal_changed"]) == 0.0
    assert float(rows[3]["reversal_changed"]) == 0.0
    labels = [line.split("|")[1].strip() for line in stdout.splitlines() if line.startswith("| ")][1:]
    assert labels == ["Enc-Dec (Basic)", "+ Global (temporal attention)",
                      "+ Global (temporal attention) [position encoder]",
                      "+ Local [local: frame_delta_efficientnet_lite0]",
                      "+ Local + Global [local: frame_delta_efficientnet_lite0, position encoder]"]
    assert "Gates (issue 7, synthetic data):" in stdout
    meta = json.loads((out / "features" / "meta.json").read_text())
    assert meta["local"]["name"] == "frame_delta_efficientnet_lite0"


def test_means_over_seeds_and_gates():
    rows = [
        {"variant": "basic", "encoder": "none", "seed": s, "CIDEr": c, "reversal_changed": 0.0}
        for s, c in ((0, 1.0), (1, 2.0))
    ] + [
        {"variant": "global", "encoder": "position", "seed": s, "CIDEr": 2.0 + s, "objects_order_acc": 0.8 + s / 10,
         "order_given_objects_acc": 0.95, "colour_acc": 0.85, "shape_acc": 1.0, "reversal_changed": 0.9}
        for s in (0, 1)
    ]
    means = {key: m for key, m, n in mean_rows(rows)}
    assert means[("basic", "none")]["CIDEr"] == 1.5
    assert means[("global", "position")]["objects_order_acc"] == pytest.approx(0.85)
    gates = {g.name: g for g in check_gates(rows)}
    assert gates["global+position colour_acc"] == Gate("global+position colour_acc", 0.85, ">= 0.90", False)
    assert gates["global+position objects_order_acc"].passed
    assert gates["global+position CIDEr - basic CIDEr"].value == pytest.approx(1.0)
    assert gates["basic reversal_changed"].passed
    table = format_ablation(rows).splitlines()
    assert table[2].split("|")[1].strip() == "Enc-Dec (Basic)"
    assert table[2].split("|")[4].strip() == "1.5000"


def test_ablation_table_names_the_local_extractor():
    rows = [{"variant": "local", "encoder": "none", "seed": 0, "CIDEr": 1.0, "local_features": "frame_delta_x"},
            {"variant": "local_global", "encoder": "position", "seed": 0, "CIDEr": 2.0, "local_features": "x3d_xs"},
            {"variant": "local", "encoder": "none", "seed": 1, "CIDEr": 1.0}]
    labels = [line.split("|")[1].strip() for line in format_ablation(rows).splitlines()[2:]]
    assert labels == ["+ Local [local: frame_delta_x]", "+ Local + Global [local: x3d_xs, position encoder]"]
    assert model_label({"variant": "local", "encoder": "none"}) == "+ Local (3-D CNN)"
    assert model_label({"variant": "global", "encoder": "position"}, "x3d_xs") == \
        "+ Global (temporal attention) [position encoder]"


def test_parse_runs():
    assert parse_runs("basic, global:position") == (("basic", "none"), ("global", "position"))
    with pytest.raises(UsageError, match="'global:transformer' is not VARIANT:ENCODER"):
        parse_runs("global:transformer")


def test_ablate_needs_both_data_and_features(tmp_path, capsys):
    assert main(["ablate", "--out", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("give both --data and --features (real data), or neither "
                                                    "(the synthetic dataset)")
