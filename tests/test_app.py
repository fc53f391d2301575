"""`vidcap app`: the HTTP API and the Gradio page over one real checkpoint, served on loopback by uvicorn.

The checkpoint is made as in tests/test_caption.py (EfficientNet-Lite0 features of two tiny videos, a small model
that learnt their captions); one caption carries HTML, so that the page must show it as text. The browser tests
drive Debian's Chromium (the `browser` fixture of tests/conftest.py). VIDCAP_APP_SCREENSHOT=docs/app_example.png
makes test_page_captions_an_upload save the docs' picture there.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import free_port, learn_captions, moving_square, write_video

pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e .[app])")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

HOSTILE = "<b>blue</b>"
CAPTIONS = {"red": "a red square moves right", "blue": f"a {HOSTILE} square moves left"}
NUM_FRAMES, IMAGE_SIZE = 6, 64
MAX_UPLOAD = 1 << 20  # bytes: small, so that an over-size upload is cheap to send
MAX_DURATION = 4.0  # seconds: the test videos last 1.6 s and 1.2 s; "long.mp4" 12 s


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread) -> dict:
    """Two real videos, a checkpoint that learnt their captions, and files the app must refuse."""
    from vidcap.features.extract import ExtractOptions, run_extract
    from vidcap.text.vocab import Vocabulary

    root = tmp_path_factory.mktemp("app")
    videos = root / "videos"
    paths = {"red": write_video(videos / "red.mp4", moving_square(40, (220, 30, 30), 1)),
             "blue": write_video(videos / "blue.mp4", moving_square(30, (30, 30, 220), -1))}
    data = root / "data"
    data.mkdir()
    (data / "videos.csv").write_text("video_id,split,path\n" + "".join(f"{k},train,{p}\n" for k, p in paths.items()))
    options = ExtractOptions(global_name="efficientnet_lite0", num_frames=NUM_FRAMES,
                             image_sizes={"global": IMAGE_SIZE}, num_workers=0, threads=1)
    assert run_extract(data, root / "feats", options, progress=False).extracted == 2
    vocab = Vocabulary(" ".join(CAPTIONS.values()).split())
    checkpoint = learn_captions(root / "feats", CAPTIONS, vocab, root / "model.ckpt")
    bad = root / "bad"
    bad.mkdir()
    (bad / "zero.mp4").write_bytes(b"")
    (bad / "text.mp4").write_text("not a video\n" * 40)
    write_video(bad / "long.mp4", moving_square(120, (30, 200, 30), 1, size=(32, 32)), fps=10)
    return {"checkpoint": checkpoint, "videos": paths, "bad": bad, "root": root}


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """`vidcap app`'s FastAPI app (API + page) on a free loopback port, in this process: {"url", "service"}."""
    import uvicorn

    work = tmp_path_factory.mktemp("work")
    saved = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")  # as `vidcap app` does: the page's uploads, private
    from vidcap.app.server import build_app
    from vidcap.app.service import CaptionService, Limits
    from vidcap.caption import load_captioner

    service = CaptionService(load_captioner(trained["checkpoint"]),
                             Limits(max_upload_bytes=MAX_UPLOAD, max_duration=MAX_DURATION))
    app = build_app(service, work_dir=work, examples={"red.mp4": trained["videos"]["red"]})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the app did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "service": service, "work": work}
    server.should_exit = True
    thread.join(timeout=30)
    service.close()
    if saved is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = saved


def post(url: str, path: Path, name: str | None = None, **fields):
    import httpx

    with open(path, "rb") as handle:
        return httpx.post(f"{url}/api/caption", files={"video": (name or path.name, handle)},
                          data={k: str(v) for k, v in fields.items()}, timeout=60)


def cli_json(checkpoint: Path, video: Path, monkeypatch, capsys, *flags: str) -> dict:
    """`vidcap caption VIDEO --json` run from the video's folder (so its "path" is the file name)."""
    from vidcap.cli import main

    monkeypatch.chdir(video.parent)
    capsys.readouterr()
    assert main(["caption", video.name, "--checkpoint", str(checkpoint), "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def cli_skip_line(checkpoint: Path, video: Path, monkeypatch, capsys) -> str:
    from vidcap.cli import main

    monkeypatch.chdir(video.parent)
    capsys.readouterr()
    assert main(["caption", video.name, "--checkpoint", str(checkpoint)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1].removeprefix("skipping ")


def uploads_left(server) -> list[Path]:
    return [p for p in (server["work"] / "uploads").rglob("*") if p.is_file()]


# -- the API ---------------------------------------------------------------------------------------------------------


def test_api_caption_equals_caption_json(server, trained, monkeypatch, capsys):
    video = trained["videos"]["red"]
    response = post(server["url"], video, beam_size=2, n_best=2, max_len=8)
    assert response.status_code == 200, response.text
    expected = cli_json(trained["checkpoint"], video, monkeypatch, capsys, "--beam-size", "2", "--n-best", "2",
                        "--max-len", "8")
    assert response.json() == expected
    assert expected["caption"] == CAPTIONS["red"] and len(expected["alternatives"]) == 2
    # The checkpoint's own options when none are given, as `vidcap caption` without flags.
    assert post(server["url"], video).json() == cli_json(trained["checkpoint"], video, monkeypatch, capsys)
    assert uploads_left(server) == []


def test_health_and_info(server, trained):
    import httpx

    health = httpx.get(f"{server['url']}/api/health").json()
    assert health["status"] == "ok" and health["videos"] >= health["searches"] >= 0
    info = httpx.get(f"{server['url']}/api/info").json()
    assert info["checkpoint"] == "model.ckpt" and str(trained["root"]) not in json.dumps(info)
    assert info["model"]["variant"] == "global" and info["num_frames"] == NUM_FRAMES
    assert info["extractors"]["global"]["name"] == "efficientnet_lite0"
    assert info["vocabulary_size"] == 4 + len(set(" ".join(CAPTIONS.values()).split()))
    assert info["decoding"]["beam_size"] == server["service"].captioner.decoding.beam_size


def test_bad_uploads_get_their_status_and_the_server_goes_on(server, trained, monkeypatch, capsys, tmp_path):
    import httpx

    url, bad = server["url"], trained["bad"]
    for name in ("zero.mp4", "text.mp4"):  # the reason `vidcap caption` gives, HTTP 422
        response = post(url, bad / name)
        assert response.status_code == 422
        reason = cli_skip_line(trained["checkpoint"], bad / name, monkeypatch, capsys)
        assert response.json() == {"error": reason}
    response = post(url, bad / "long.mp4")
    assert response.status_code == 422 and "more than this server's limit of 4 s" in response.json()["error"]
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(MAX_UPLOAD + 100_000))
    assert post(url, big).status_code == 413  # refused from its Content-Length

    def chunks():  # no Content-Length: refused once the body passes the limit
        yield b"--b\r\nContent-Disposition: form-data; name=\"video\"; filename=\"big.mp4\"\r\n\r\n"
        for _ in range(20):
            yield b"\0" * 100_000
        yield b"\r\n--b--\r\n"

    response = httpx.post(f"{url}/api/caption", content=chunks(), timeout=60,
                          headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert post(url, trained["videos"]["red"], beam_size=2, n_best=3).status_code == 422  # n_best > beam
    assert post(url, trained["videos"]["red"], beam_size="x").status_code == 422
    assert httpx.post(f"{url}/api/caption", data={"beam_size": "2"}).status_code == 422  # no video field
    # Still answering, and nothing left behind.
    assert post(url, trained["videos"]["red"]).json()["caption"] == CAPTIONS["red"]
    assert uploads_left(server) == []


def test_hostile_file_name_is_only_a_label(server, trained):
    response = post(server["url"], trained["videos"]["blue"], name="../../etc/<img src=x onerror=alert(1)>.mp4")
    assert response.status_code == 200
    body = response.json()
    assert body["path"] == "<img src=x onerror=alert(1)>.mp4" and body["caption"] == CAPTIONS["blue"]
    assert response.headers["content-type"] == "application/json"


def test_concurrent_requests_are_decoded_together(trained):
    """Videos that are ready together go through one batched search, with the captions of one at a time."""
    from vidcap.app.service import CaptionService
    from vidcap.caption import caption_video, load_captioner

    captioner = load_captioner(trained["checkpoint"])
    service = CaptionService(captioner, wait_s=0.5, readers=4)
    videos = [trained["videos"]["red"], trained["videos"]["blue"]] * 2
    results = [None] * len(videos)

    def one(i):
        results[i] = service.caption_file(videos[i], with_frames=False)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(videos))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    service.close()
    assert service.largest_batch > 1 and service.videos == len(videos) and service.searches < len(videos)
    for video, result in zip(videos, results, strict=True):
        alone = caption_video(video, captioner)
        assert result.caption == alone.caption and result.path == video.name
        assert result.score == pytest.approx(alone.score, abs=1e-4)
        np.testing.assert_allclose(result.attention, alone.attention, atol=1e-5)


def test_auth_guards_page_and_api(trained, tmp_path):
    from starlette.testclient import TestClient

    from vidcap.app.server import build_app
    from vidcap.app.service import CaptionService
    from vidcap.caption import load_captioner

    service = CaptionService(load_captioner(trained["checkpoint"]))
    try:
        with TestClient(build_app(service, work_dir=tmp_path, auth=("me", "s3cret"))) as client:
            assert client.get("/api/health").status_code == 200
            assert client.get("/api/info").status_code == 401
            assert client.get("/api/info", auth=("me", "wrong")).status_code == 401
            assert client.get("/api/info", auth=("me", "s3cret")).json()["checkpoint"] == "model.ckpt"
            with open(trained["videos"]["red"], "rb") as handle:
                assert client.post("/api/caption", files={"video": handle}).status_code == 401
            assert client.get("/config").status_code == 401  # the page's own routes want the login
    finally:
        service.close()


def test_without_gradio_one_line_and_exit_2(monkeypatch, capsys):
    from vidcap.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["app", "--checkpoint", "any.ckpt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vidcap app: error: vidcap app needs gradio: pip install 'vidcap[app]'"]


def test_card_escapes_name_and_caption(trained):
    from vidcap.caption import CaptionResult
    from vidcap.report.cards import caption_card
    from vidcap.report.page import render_card

    words = ["a", HOSTILE, "<eos>"]
    result = CaptionResult(path="<img src=x onerror=alert(1)>.mp4", caption=f"a {HOSTILE}", score=-1.0,
                           alternatives=[(f"a {HOSTILE}", -1.0)], words=words,
                           frame_times=np.arange(3, dtype=np.float32), attention=np.eye(3))
    html = render_card(caption_card(result))
    assert "<b>blue" not in html and "<img src=x" not in html
    assert "&lt;b&gt;blue&lt;/b&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;.mp4" in html


# -- the page, in Chromium ---------------------------------------------------------------------------------------


def caption_on_page(browser, url: str, video: Path) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    wait = WebDriverWait(browser, 60)
    upload = wait.until(lambda b: b.find_element("css selector", "#video input[type=file]"))
    upload.send_keys(str(video))
    # The upload is done when the player shows it; then caption.
    wait.until(lambda b: b.find_elements("css selector", "#video video"))
    browser.find_element("id", "run").click()
    return wait.until(lambda b: b.find_element("css selector", "#caption textarea").get_attribute("value"))


def test_page_captions_an_upload(server, trained, browser, monkeypatch, capsys):
    video = trained["videos"]["red"]
    caption = caption_on_page(browser, server["url"], video)
    assert caption == cli_json(trained["checkpoint"], video, monkeypatch, capsys)["caption"] == CAPTIONS["red"]
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert uploads_left(server) == [] and not list((server["work"] / "gradio").rglob("red.mp4"))
    target = os.environ.get("VIDCAP_APP_SCREENSHOT")
    if target:
        from selenium.webdriver import ActionChains

        words = browser.find_elements("css selector", "#attention .w")
        ActionChains(browser).move_to_element(words[1]).perform()
        browser.save_screenshot(target)


def test_hovering_a_word_highlights_its_frames(server, trained, browser, monkeypatch, capsys):
    from selenium.webdriver import ActionChains

    video = trained["videos"]["blue"]
    caption_on_page(browser, server["url"], video)
    expected = cli_json(trained["checkpoint"], video, monkeypatch, capsys)
    words = browser.find_elements("css selector", "#attention .w")
    # The hostile caption word is text, not markup.
    assert [w.text for w in words] == expected["words"] and HOSTILE in expected["words"]
    assert browser.find_elements("css selector", "#attention .caption b") == []
    for row in (1, len(words) - 1):
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", words[row])
        ActionChains(browser).move_to_element(words[row]).perform()
        cells = browser.find_elements("css selector", "#attention .cell")
        shown = browser.execute_script("return arguments[0].map(c => +c.style.getPropertyValue('--w'))", cells)
        attention = np.array(expected["attention"][row])
        np.testing.assert_allclose(shown, attention / attention.max(), atol=2e-3)
        top = [i for i, c in enumerate(cells) if "top" in c.get_attribute("class").split()]
        assert top == [int(attention.argmax())]


def test_page_reports_a_bad_file_and_goes_on(server, trained, browser, monkeypatch, capsys):
    from selenium.webdriver.support.ui import WebDriverWait

    bad = trained["bad"] / "text.mp4"
    browser.get(server["url"])
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: b.find_element("css selector", "#video input[type=file]")).send_keys(str(bad))
    wait.until(lambda b: b.find_elements("css selector", "#video video"))
    browser.find_element("id", "run").click()
    expected = cli_skip_line(trained["checkpoint"], bad, monkeypatch, capsys)
    # The player's own notice ("Video not playable") may come first: wait for the app's.
    notices = wait.until(lambda b: [t.text for t in b.find_elements("css selector", "[data-testid=toast-text]")
                                    if t.text.startswith("text.mp4")])
    assert notices == [expected]
    assert caption_on_page(browser, server["url"], trained["videos"]["red"]) == CAPTIONS["red"]


def test_the_command_serves_the_checkpoint_with_its_flags(trained, tmp_path):
    """`vidcap app` itself, as a process: the flags reach the server (auth, upload limit), and it stops cleanly."""
    import subprocess

    import httpx

    port = free_port()
    log = (tmp_path / "app.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "vidcap", "app", "--checkpoint", str(trained["checkpoint"]),
                                "--port", str(port), "--auth", "me:s3cret", "--max-upload-mb", "0.5"],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "app.log").read_text()
            try:
                if httpx.get(f"{url}/api/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert httpx.get(f"{url}/api/info").status_code == 401
        assert httpx.get(f"{url}/api/info", auth=("me", "s3cret")).json()["checkpoint"] == "model.ckpt"
        big = tmp_path / "big.mp4"
        big.write_bytes(b"\0" * (600 << 10))
        with open(big, "rb") as handle:
            response = httpx.post(f"{url}/api/caption", files={"video": handle}, auth=("me", "s3cret"))
        assert response.status_code == 413
        with open(trained["videos"]["red"], "rb") as handle:
            response = httpx.post(f"{url}/api/caption", files={"video": handle}, auth=("me", "s3cret"), timeout=60)
        assert response.json()["caption"] == CAPTIONS["red"]
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert "serving" in (tmp_path / "app.log").read_text()
