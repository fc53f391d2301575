"""The layer contract in pyproject.toml (import-linter): it holds, and it catches an upward import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=package_parent, env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layers():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """A decoder backend that imports the command line: the layer contract must fail and name the import."""
    shutil.copytree(REPO / "vidcap", tmp_path / "vidcap", ignore=shutil.ignore_patterns("__pycache__"))
    reader = tmp_path / "vidcap" / "video" / "reader.py"
    reader.write_text(reader.read_text() + "\n\ndef _upward():\n    import vidcap.cli  # noqa: F401\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "vidcap.video is not allowed to import vidcap.cli" in result.stdout
    assert "vidcap.video.reader -> vidcap.cli" in result.stdout
