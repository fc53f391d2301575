"""Shared fixtures. Tests make their own tiny videos with PyAV (tests/helpers.py); nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from tests.helpers import numbered_frames, write_video

# Property tests (tests/test_fuzz_parsers.py) in CI: the same examples every run (derandomize), no example database
# written into the checkout, no per-example deadline on a loaded machine; each test sets its own max_examples.
# HYPOTHESIS_PROFILE=dev searches afresh each run.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def tiny_video(tmp_path: Path) -> Path:
    """A 16-frame 64x64 H.264 mp4 whose frame i has grey level 8 * i."""
    return write_video(tmp_path / "tiny.mp4", numbered_frames(16), codec="libx264", options={"crf": "0"})


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests (and its module-scoped fixtures that request it): tiny models run
    faster so, and on a busy shared CPU, OpenMP threads waiting for each other cost far more than they give. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`. The one definition of it: no test module defines its own."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    """Tests that drive Chromium (they use the `browser` fixture of tests/test_report.py) get the `browser` marker, so
    that `make test-fast` can leave them out."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)
