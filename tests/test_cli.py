"""The command line as a user meets it: help, examples, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vidcap.cli import LIGHTNING_SUBCOMMANDS, SUBCOMMANDS, main
from vidcap.report.table import format_table, paper_row

REPO = Path(__file__).resolve().parents[1]


def test_top_level_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert f"    {name} " in out


def test_no_subcommand_is_a_usage_error(capsys):
    assert main([]) == 2


def test_unknown_subcommand_is_one_line_and_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vidcap: error: unknown subcommand 'frobnicate'")


@pytest.mark.parametrize("name", [n for n in SUBCOMMANDS if n not in LIGHTNING_SUBCOMMANDS])
def test_every_subcommand_help_has_an_example(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out
    assert f"vidcap {name}" in out.split("example:", 1)[1]


def test_cli_py_and_module_entry_point_agree():
    script = subprocess.run([sys.executable, str(REPO / "cli.py"), "--help"], capture_output=True, text=True)
    module = subprocess.run([sys.executable, "-m", "vidcap", "--help"], capture_output=True, text=True)
    assert script.returncode == module.returncode == 0
    assert script.stdout == module.stdout


@pytest.mark.parametrize("entry", [["cli.py"], ["-m", "vidcap"]])
def test_entry_points_work_with_worker_processes(entry, tmp_path):
    """Worker processes (spawn) import the main script again: it must not run the command a second time."""
    out = tmp_path / "syn"
    args = [sys.executable, *entry, "prepare", "synthetic", "--num-videos", "4", "--workers", "2", "--out", str(out)]
    if entry[0] == "cli.py":
        args[1] = str(REPO / "cli.py")
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert len(list((out / "videos").glob("*.mp4"))) == 4


def test_paper_row_and_table_layout():
    row = paper_row("youtube2text", "local_global")
    assert row == {"Bleu_4": 0.4192, "METEOR": 0.2960, "CIDEr": 0.5167, "perplexity": 27.55}
    assert paper_row("dvs", "basic")["perplexity"] == 88.28
    assert paper_row("msvd", "nonexistent") is None
    table = format_table([("ours", {"Bleu_4": 0.5, "METEOR": 0.25, "CIDEr": 1.0, "perplexity": 3.14159})])
    lines = table.splitlines()
    assert lines[0].split("|")[2:6] == [" BLEU-4 ", " METEOR ", "  CIDEr ", " Perplexity "]
    assert lines[2].split("|")[2:6] == [" 0.5000 ", " 0.2500 ", " 1.0000 ", "       3.14 "]


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHTNING_SUBCOMMANDS)
def test_lightning_subcommand_help_ends_with_examples(name):
    result = subprocess.run([sys.executable, "-m", "vidcap", name, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--data.data_dir" in result.stdout and "--model.architecture.variant" in result.stdout
    assert "vidcap fit --config configs/data/msvd.yaml" in result.stdout.split("example")[-1]


@pytest.mark.slow
def test_fit_resumes_with_weights_only_loading():
    result = subprocess.run([sys.executable, "-m", "vidcap", "fit", "--print_config"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "\nweights_only: true\n" in result.stdout
