"""Shared fixtures. Tests make their own tiny videos with PyAV (tests/helpers.py); nothing is downloaded."""

from __future__ import annotations

import io
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import av  # noqa: F401  before any test imports decord: see below
import pytest
from hypothesis import settings

from tests.fixtures_arctic import write_youtube2text_iccv15
from tests.helpers import TINY_DEMO, numbered_frames, write_video

# decord ships FFmpeg libraries of its own. Loaded before PyAV's, they take over symbols PyAV's encoders resolve, and
# PyAV can no longer open the libvpx (VP8/VP9) or MJPEG encoders (avcodec_open2 returns EINVAL); PyAV's decoding is
# unaffected. vidcap imports PyAV before decord (vidcap/video/decord_backend.py); the tests that import decord
# themselves get the same order from this import.

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


# Debian's paths; elsewhere point these variables at a Chromium (or Chrome) and its matching driver.
CHROMIUM = Path(os.environ.get("VIDCAP_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("VIDCAP_CHROMEDRIVER", "/usr/bin/chromedriver"))


@pytest.fixture
def pkl_dir(tmp_path: Path) -> Path:
    """A reduced youtube2text_iccv15/ of the authors' pickles (tests/fixtures_arctic.py)."""
    return write_youtube2text_iccv15(tmp_path)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's headless Chromium driven by Selenium (no browser download), one per test module; skips, saying what
    is missing, without it. Its console and performance logs are kept (get_log("browser" | "performance"))."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"no browser for this test: {', '.join(missing)} missing (Debian/Ubuntu: apt-get install "
                    "chromium chromium-driver; elsewhere set VIDCAP_CHROMIUM and VIDCAP_CHROMEDRIVER)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[dev])")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    yield driver
    driver.quit()


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


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> tuple[Path, str, str]:
    """(its output folder, stdout, stderr) of one `vidcap demo` run at TINY_DEMO's size, shared by the tests that need
    a real run: tests/test_demo.py checks its stages and its resume, tests/test_report.py its report in a browser.
    Needs Java (METEOR, the PTB tokenizer)."""
    if shutil.which("java") is None:
        pytest.skip("java not on PATH (METEOR, PTB tokenizer)")
    from vidcap.cli import main

    out = tmp_path_factory.mktemp("tiny_demo") / "demo"
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = main(["demo", "--out", str(out), *TINY_DEMO])
    assert code == 0, stderr.getvalue()[-3000:]
    return out, stdout.getvalue(), stderr.getvalue()


def pytest_collection_modifyitems(items):
    """Tests that drive Chromium (they use the `browser` fixture) get the `browser` marker, so
    that `make test-fast` can leave them out."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)
