"""`vidcap demo` and `vidcap ablate` end to end on a handful of synthetic videos, tiny models and few steps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_DEMO, tiny_dataset
from vidcap.cli import main
from vidcap.errors import UsageError
from vidcap.experiments.ablate import CSV_COLUMNS, Gate, check_gates, format_ablation, mean_rows, parse_runs
from vidcap.experiments.demo import DEMO_METRIC_KEYS
from vidcap.report.table import model_label

# 12 videos (8 train / 1 val / 3 test), features at 32 px, a tiny model trained for a few steps.
TINY = ["--num-videos", "12", "--image-size", "32", "--epochs", "1", "--max-steps", "3", "--hidden-dim", "16",
        "--embed-dim", "8", "--attention-dim", "8", "--batch-size", "8", "--beam-size", "2", "--workers", "1",
        "--quiet"]


@pytest.mark.java
@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(tiny_demo, capsys):
    """The session's tiny demo run (tests/conftest.py; tests/test_report.py loads its report in a browser), then a
    second run of the same settings into the same folder."""
    out, first_out, first_err = tiny_demo
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(DEMO_METRIC_KEYS)
    assert all(0.0 <= metrics[k] <= 1.0 for k in DEMO_METRIC_KEYS if k.endswith("_acc") or k == "reversal_changed")
    assert len(json.loads((out / "eval" / "predictions.json").read_text())) == 3
    assert (out / "explain" / "syn00009.png").stat().st_size > 0
    assert "Held-out video syn00009" in first_out
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert page.count('class="card"') == 3 and page.count("<img") == 3  # the test videos, with their frames
    assert f"Open {out / 'report' / 'index.html'} in a browser" in first_out
    # It ends with the command that serves its model.
    command = first_out.strip().splitlines()[-1].split()
    assert command[:3] == ["vidcap", "app", "--checkpoint"] and Path(command[3]).is_file() and len(command) == 4
    assert list((out / "run" / "lightning_logs" / "version_0").glob("events.out.tfevents.*"))
    for stage in ("prepare", "extract", "fit", "evaluate", "caption"):
        assert f"] {stage}: done in " in first_err
    timings = json.loads((out / "timings.json").read_text())
    assert list(timings) == ["prepare", "extract", "fit", "evaluate", "caption"]

    # A second run reuses the trained model and its evaluation.
    assert main(["demo", "--out", str(out), *TINY_DEMO]) == 0
    second = capsys.readouterr()
    for number, stage in enumerate(("prepare", "extract", "fit", "evaluate"), 1):
        assert f"[{number}/5] {stage}: reused from an earlier run" in second.err
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_demo_refuses_a_folder_trained_with_other_settings(tmp_path, capsys):
    from vidcap.experiments.demo import DemoSettings, train

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  architecture:\n    variant: basic\n")
    with pytest.raises(UsageError, match="trained with other settings"):
        train(tmp_path / "data", tmp_path / "feats", run, DemoSettings().training())
    # A folder an older vidcap trained (a checkpoint, no config.yaml) is refused too, not resumed.
    (run / "config.yaml").unlink()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(UsageError, match="has a checkpoint but no config.yaml"):
        train(tmp_path / "data", tmp_path / "feats", run, DemoSettings().training())


def test_experiment_configs_compose_the_data_config():
    """The experiment configs hold no data settings of their own: the demo composes configs/data/synthetic.yaml with
    them, and the resolved data settings are that file's."""
    import yaml

    from vidcap.experiments.demo import CONFIGS, DATA_CONFIG, DemoSettings
    from vidcap.training.lightning_cli import resolve_config

    for name in ("demo", "scst", "hard"):
        assert "data" not in yaml.safe_load((CONFIGS / "experiment" / f"{name}.yaml").read_text()), name
    training = DemoSettings().training({"data.data_dir": ".", "data.features_dir": "."})
    assert training.configs == (str(DATA_CONFIG), str(CONFIGS / "experiment" / "demo.yaml"))
    data = resolve_config(training.configs, training.values)["data"]
    assert {k: data[k] for k in yaml.safe_load(DATA_CONFIG.read_text())["data"]} == yaml.safe_load(
        DATA_CONFIG.read_text())["data"]


def test_resolve_config_takes_values_and_checks_them(tmp_path, capsys):
    """resolve_config composes config files and typed values as `vidcap fit --config ... --flag value` does, returns
    plain values that config_yaml writes as a file `--config` reads back, and refuses what the command line would."""
    from vidcap.experiments.demo import DATA_CONFIG, DEMO_CONFIG
    from vidcap.training.lightning_cli import config_yaml, resolve_config

    values = {"data.data_dir": "d", "data.features_dir": "f", "trainer.max_epochs": 3, "model.lr": 0.5,
              "seed_everything": 7}
    config = resolve_config([DATA_CONFIG, DEMO_CONFIG], values)
    assert (config["trainer"]["max_epochs"], config["model"]["lr"], config["seed_everything"]) == (3, 0.5, 7)
    assert capsys.readouterr().out == ""  # values from the parser, not a printed config read back
    assert config["trainer"]["check_val_every_n_epoch"] == 9  # from the experiment config
    assert config["data"]["batch_size"] == yaml.safe_load(DATA_CONFIG.read_text())["data"]["batch_size"]
    (tmp_path / "config.yaml").write_text(config_yaml(config))
    assert resolve_config([tmp_path / "config.yaml"]) == config
    with pytest.raises(UsageError, match="invalid training options: .*trainer.max_epochs"):
        resolve_config([DATA_CONFIG, DEMO_CONFIG], {**values, "trainer.max_epochs": "many"})
    with pytest.raises(UsageError, match="invalid training options: .*no_such_option"):
        resolve_config([DATA_CONFIG, DEMO_CONFIG], {**values, "model.no_such_option": 1})
    with pytest.raises(UsageError, match="missing.yaml: config file not found"):
        resolve_config([tmp_path / "missing.yaml"], values)


def test_fit_with_the_demo_config_trains_the_demos_model(tmp_path, monkeypatch):
    """`vidcap fit --config configs/experiment/demo.yaml` and the demo's training give the same model: same weights,
    same test metrics (issue 11)."""
    import torch

    import vidcap.text.metrics
    from vidcap.evaluation import evaluate
    from vidcap.experiments.demo import DATA_CONFIG, DEMO_CONFIG, DemoSettings, train

    monkeypatch.setattr(vidcap.text.metrics, "score_captions", lambda refs, preds: {
        "Bleu_4": len(set(preds.values())) / 10, "METEOR": 0.0, "ROUGE_L": 0.0, "CIDEr": 0.0})  # no Java
    data, store = tiny_dataset(tmp_path)
    tiny = {"trainer.max_epochs": 2, "trainer.check_val_every_n_epoch": 2, "data.batch_size": 8,
            "model.architecture.hidden_dim": 16, "model.architecture.embed_dim": 8,
            "model.architecture.attention_dim": 8}
    demo_ckpt, trained = train(data, store, tmp_path / "demo", DemoSettings(overrides=tiny).training(),
                               progress=False)
    assert trained and (tmp_path / "demo" / "config.yaml").is_file()
    root = tmp_path / "fit"
    assert main(["fit", "--config", str(DATA_CONFIG), "--config", str(DEMO_CONFIG), "--data.data_dir", str(data), "--data.features_dir", str(store),
                 *(part for key, value in tiny.items() for part in (f"--{key}", str(value))),
                 "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false"]) == 0
    fit_ckpt = root / "checkpoints" / "last.ckpt"
    weights = [torch.load(path, weights_only=True)["state_dict"] for path in (demo_ckpt, fit_ckpt)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    results = [evaluate(path, data, store, reverse=True, progress=False) for path in (demo_ckpt, fit_ckpt)]
    assert results[0].predictions == results[1].predictions
    assert {k: round(v, 3) for k, v in results[0].metrics.items()} == \
        {k: round(v, 3) for k, v in results[1].metrics.items()}
    assert results[0].options["max_len"] == 20  # the demo's decoding, from configs/experiment/demo.yaml


def ranking_score(references, predictions):
    """Stand-in for vidcap.text.metrics.score_captions without Java (the demo's test scores with the real one): every
    metric is the share of predicted words found in the video's references, so better captions score higher."""
    def share(video_id):
        words = predictions[video_id].split()
        known = {word for reference in references[video_id] for word in reference.split()}
        return sum(word in known for word in words) / max(1, len(words))

    value = sum(map(share, predictions)) / max(1, len(predictions))
    return {"Bleu_1": value, "Bleu_2": value, "Bleu_3": value, "Bleu_4": value, "METEOR": value, "ROUGE_L": value,
            "CIDEr": value}


@pytest.mark.slow
def test_ablate_trains_every_variant_and_writes_the_table(tmp_path, capsys, monkeypatch):
    """Seven trainings and evaluations; the coco-caption scorers are replaced by `ranking_score` (their JVM start-ups
    were most of this test's time; test_demo_runs_every_stage_and_resumes runs the real ones through the same
    evaluation)."""
    import vidcap.text.metrics

    monkeypatch.setattr(vidcap.text.metrics, "score_captions", ranking_score)
    out = tmp_path / "ablate"
    assert main(["ablate", "--out", str(out), "--seeds", "1", *TINY]) == 0
    stdout = capsys.readouterr().out
    with open(out / "ablation.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["variant"], r["encoder"], r["training"], r["seed"]) for r in rows] == [
        ("basic", "none", "xe", "0"), ("global", "none", "xe", "0"), ("global", "position", "xe", "0"),
        ("local", "none", "xe", "0"), ("local_global", "position", "xe", "0"), ("global", "position", "scst", "0"),
        ("global", "position", "hard", "0")]
    assert all(0 <= float(r["degenerate"]) <= 1 for r in rows)
    # The SCST run starts from the cross-entropy run of its seed.
    scst_config = (out / "runs" / "global-position-scst-seed0" / "config.yaml").read_text()
    assert str(out / "runs" / "global-position-seed0" / "checkpoints" / "last.ckpt") in scst_config
    # The hard-attention run is the demo's config with configs/experiment/hard.yaml on top, then the test's options.
    hard_config = yaml.safe_load((out / "runs" / "global-position-hard-seed0" / "config.yaml").read_text())
    assert hard_config["model"]["architecture"]["attention"] == "hard"
    assert hard_config["model"]["architecture"]["hidden_dim"] == 16 and hard_config["trainer"]["max_steps"] == 3
    # Models blind to frame order write the same caption for reversed frames.
    assert float(rows[0]["reversal_changed"]) == 0.0
    assert float(rows[3]["reversal_changed"]) == 0.0
    labels = [line.split("|")[1].strip() for line in stdout.splitlines() if line.startswith("| ")][1:]
    assert labels == ["Enc-Dec (Basic)", "+ Global (temporal attention)",
                      "+ Global (temporal attention) [position encoder]",
                      "+ Local [local: frame_delta_efficientnet_lite0]",
                      "+ Local + Global [local: frame_delta_efficientnet_lite0, position encoder]",
                      "+ Global (temporal attention) [position encoder] + SCST",
                      "+ Global (temporal attention) [position encoder] + hard attention"]
    assert "Gates (issues 7 and 12, synthetic data):" in stdout
    assert "global+position SCST CIDEr - XE CIDEr = " in stdout and "global+position hard reversal_changed" in stdout
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
    assert means[("basic", "none", "xe")]["CIDEr"] == 1.5
    assert means[("global", "position", "xe")]["objects_order_acc"] == pytest.approx(0.85)
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
    assert parse_runs("basic, global:position, global:position:scst") == (
        ("basic", "none", "xe"), ("global", "position", "xe"), ("global", "position", "scst"))
    for bad in ("global:transformer", "global:position:dpo", "global:position:xe:x"):
        with pytest.raises(UsageError, match=f"'{bad}' is not VARIANT:ENCODER"):
            parse_runs(bad)


def test_ablate_needs_both_data_and_features(tmp_path, capsys):
    assert main(["ablate", "--out", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("give both --data and --features (real data), or neither "
                                                    "(the synthetic dataset)")
