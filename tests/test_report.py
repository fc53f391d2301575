"""The evaluation report (vidcap.report.page): the page's content in Python, and its behaviour in headless Chromium.

The browser tests drive Debian's `chromium` with its `chromium-driver` through Selenium (no browser download):
`apt-get install chromium chromium-driver` (.ci/run installs them), or VIDCAP_CHROMIUM and VIDCAP_CHROMEDRIVER
name other paths. Without them those tests skip and say so.
The last tests load the report of a real evaluation (`vidcap demo` at a tiny size; needs Java).
VIDCAP_REPORT_SCREENSHOT=docs/report_example.png makes test_screenshot save the README's picture there, of a model
trained a few minutes longer; VIDCAP_REPORT_DEMO_OUT=DIR keeps that demo run in DIR (a second run reuses it).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY_DEMO, write_video
from vidcap.report.page import Card, frames_to_sprite, per_video_scores, render_report, write_report

INJECTED = "<script>window.injected = 1</script> a man <b>runs</b>"
METRICS = {"Bleu_4": 0.41234567, "METEOR": 0.2961, "CIDEr": 0.5167, "perplexity": 27.55, "ROUGE_L": 0.68}
PAPER = {"Bleu_4": 0.4192, "METEOR": 0.2960, "CIDEr": 0.5167, "perplexity": 27.55}
COLOURS = {"red": (220, 45, 45), "green": (45, 185, 65), "blue": (45, 90, 225), "yellow": (235, 210, 45)}


def synthetic_frames(first: str, second: str, k: int = 12, size: int = 96, seed: int = 0) -> np.ndarray:
    """(k, size, size, 3) uint8: a `first` box slides right over a gradient in the first half, then a `second`
    circle appears in the middle (the synthetic dataset's kind of video)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([80 + 60 * x / size, 90 + 40 * y / size, 120 + 50 * (1 - x / size)], -1)
    frames = np.repeat(base[None], k, axis=0) + rng.normal(0, 4, (k, size, size, 3))
    for j in range(k):
        if j < k // 2:
            cx = int(16 + (size - 32) * j / max(k // 2 - 1, 1))
            frames[j, size // 2 - 12 : size // 2 + 12, cx - 12 : cx + 12] = COLOURS[first]
        else:
            frames[j][(x - size / 2) ** 2 + (y - size / 2) ** 2 < 14**2] = COLOURS[second]
    return frames.clip(0, 255).astype(np.uint8)


def attention_for(words: list[str], k: int, seed: int, hard: bool = False) -> np.ndarray:
    """(L, K) weights that move along the frames as the caption goes on, with noise (one-hot when hard)."""
    rng = np.random.default_rng(seed)
    centres = np.linspace(0, k - 1, len(words))[:, None] + rng.normal(0, 1.5, (len(words), 1))
    logits = -(((np.arange(k) - centres) / 1.5) ** 2) + rng.normal(0, 0.8, (len(words), k))
    if hard:
        return np.eye(k)[logits.argmax(1)]
    weights = np.exp(logits)
    return weights / weights.sum(1, keepdims=True)


def make_cards(k: int = 12) -> list[Card]:
    """Four videos: soft attention, hard attention, no pictures (a note), and untrusted text."""
    specs = [
        ("video_0003", "a red square moves right and then a blue circle appears", ("red", "blue"),
         {"Bleu_4": 0.61, "METEOR": 0.42, "CIDEr": 1.90}),
        ("video_0011", "a green square moves right then a yellow circle appears", ("green", "yellow"),
         {"Bleu_4": 0.35, "METEOR": 0.31, "CIDEr": 0.40}),
        ("video_0007", "a blue circle appears and then a red square moves left", ("red", "blue"),
         {"Bleu_4": 0.12, "METEOR": 0.22, "CIDEr": 0.05}),
        ("video_0100", INJECTED, ("yellow", "green"), {"Bleu_4": 0.50, "METEOR": 0.36, "CIDEr": 0.90}),
    ]
    cards = []
    for index, (video_id, caption, (first, second), scores) in enumerate(specs):
        words = caption.split() + ["<eos>"]
        truth = ((first, "square", "right"), (second, "circle", "appears"))
        cards.append(Card(
            video_id=video_id, caption=caption, words=words,
            attention=attention_for(words, k, index, hard=index == 1),
            frame_times=np.arange(k) * 0.5 + 0.25,
            sprite=None if index == 2 else frames_to_sprite(synthetic_frames(first, second, k, seed=index)),
            nbest=[(caption, -3.2), (caption.replace(" and then", " then"), -4.1)],
            references=[f"a {first} square moves right and then a {second} circle appears",
                        f"first a {first} box goes right, then a {second} ball shows up"]
                       + ([INJECTED] if index == 3 else []),
            scores=scores, events=truth,
            reversed_caption=f"a {second} circle appears and then a {first} square moves left",
            note="no video file: features only" if index == 2 else None,
        ))
    return cards


def test_sprite_is_a_jpeg_of_k_thumbnails():
    from PIL import Image

    sprite = frames_to_sprite(synthetic_frames("red", "blue", k=5, size=96), height=48)
    assert (sprite.frames, sprite.width, sprite.height) == (5, 48, 48)
    import io

    assert Image.open(io.BytesIO(sprite.jpeg)).size == (5 * 48, 48)


def test_page_escapes_text_and_keeps_exact_metrics(tmp_path):
    cards = make_cards()
    path = write_report(tmp_path / "report", cards, title="<i>t</i>", table=[("this model", METRICS)],
                        info={"split": "test"})
    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "report" / "index.html" and not list(path.parent.glob(".*"))
    assert "<script>window.injected" not in page and "&lt;script&gt;window.injected" in page
    assert page.count("<script>") == 1 and "<i>t</i>" not in page
    assert 'data-value="0.41234567"' in page and ">0.4123<" in page and ">27.55<" in page
    assert page.count('class="card"') == len(cards) and "http://" not in page and "https://" not in page


def test_frame_counts_must_agree():
    card = make_cards()[0]
    card.frame_times = card.frame_times[:-1]
    with pytest.raises(ValueError, match="frame counts disagree"):
        render_report([card])
    card = make_cards()[0]
    card.attention = card.attention[:-1]
    with pytest.raises(ValueError, match="expected \\(L, K\\)"):
        render_report([card])


def test_a_score_that_is_not_finite_is_left_out():
    cards = make_cards()
    cards[0].scores = {"CIDEr": float("nan")}
    page = render_report(cards)
    assert 'data-scores="{}"' in page and "NaN" not in page


def test_evaluation_cards_pictures_or_a_note(tmp_path, caplog):
    from vidcap.report.cards import NO_VIDEO_FILE, evaluation_cards

    video = write_video(tmp_path / "v1.mp4", synthetic_frames("red", "blue", k=20, size=64))
    predictions = {"v1": "a red box", "v2": "a blue ball", "v3": "a green ball", "v4": "a red box"}
    words = ["a", "red", "box", "<eos>"]
    cards = evaluation_cards(
        predictions, {"v1": ["a red square"], "v2": ["r2"], "v3": ["r3"], "v4": ["r4"]},
        nbest={"v1": [{"caption": "a red box", "log_prob": -1.5, "score": -0.5}]},
        attention={"v1": (words, attention_for(words, 8, 0)), "v4": (words, attention_for(words, 6, 0))},
        videos={"v1": str(video), "v2": "", "v3": str(tmp_path / "missing.mp4"), "v4": str(video)}, num_frames=8)
    assert [c.video_id for c in cards] == ["v1", "v2", "v3", "v4"]
    assert cards[0].sprite.frames == 8 and cards[0].frame_count() == 8 and cards[0].note is None
    assert cards[0].nbest == [("a red box", -1.5)] and cards[0].references == ["a red square"]
    assert cards[1].sprite is None and cards[1].note == NO_VIDEO_FILE
    assert cards[2].sprite is None and "missing.mp4" in cards[2].note
    assert [r.levelname for r in caplog.records if "missing.mp4" in r.getMessage()] == ["WARNING"]
    # A video that decodes to another number of frames than its features (attention over 6) gets no pictures.
    assert cards[3].sprite is None and cards[3].note == ("no pictures: the video decodes to other frames than its "
                                                         "features (8 frames, the features have 6)")
    assert [r.getMessage() for r in caplog.records if "for v4 in the report" in r.getMessage()] == [
        f"{video}: no pictures for v4 in the report: {cards[3].note.removeprefix('no pictures: ')}"]
    assert 'class="card"' in render_report(cards)


def test_caption_card():
    from vidcap.caption import CaptionResult
    from vidcap.report.cards import caption_card

    words = ["a", "ball", "<eos>"]
    result = CaptionResult(path="clips/x.mp4", caption="a ball", score=-2.0, alternatives=[("a ball", -2.0)],
                           words=words, frame_times=np.arange(6, dtype=np.float32),
                           attention=attention_for(words, 6, 1), frames=synthetic_frames("red", "blue", k=6))
    card = caption_card(result)
    assert (card.video_id, card.sprite.frames, card.scores) == ("clips/x.mp4", 6, {"log_prob": -2.0})


@pytest.mark.java
@pytest.mark.slow
def test_per_video_scores():
    if shutil.which("java") is None:
        pytest.skip("java not on PATH")
    from pycocoevalcap.cider.cider import Cider

    references = {"v1": ["a man is playing a guitar", "a person plays guitar"],
                  "v2": ["a cat is sleeping on a bed", "a kitten sleeps"],
                  "v3": ["a woman is slicing an onion", "someone cuts an onion"]}
    predictions = {"v1": "a man is playing a guitar", "v2": "a dog is running", "v3": "a woman is cutting an onion"}
    scores = per_video_scores(references, predictions)
    assert set(scores) == set(predictions)
    assert scores["v1"]["Bleu_4"] == pytest.approx(1.0, abs=1e-6) and scores["v2"]["Bleu_4"] < 0.01
    assert scores["v1"]["METEOR"] > scores["v3"]["METEOR"] > scores["v2"]["METEOR"] > 0
    # CIDEr-D's IDF comes from the whole split: the per-video values average to the corpus score.
    gts = {i: refs for i, refs in references.items()}
    corpus, _ = Cider().compute_score(gts, {i: [p] for i, p in predictions.items()})
    assert np.mean([s["CIDEr"] for s in scores.values()]) == pytest.approx(corpus, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# In the browser


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    """The report of make_cards() loaded in the browser; the performance log of the load."""
    cards = make_cards()
    path = write_report(tmp_path_factory.mktemp("report"), cards, title="tiny evaluation",
                        table=[("this model", METRICS), ("Yao et al. 2015", PAPER)],
                        info={"checkpoint": "best.ckpt", "split": "test", "decoding": {"beam_size": 5}})
    browser.get_log("performance")
    browser.get(path.as_uri())
    return {"cards": cards, "url": path.as_uri(), "log": browser.get_log("performance")}


def card_ids(browser) -> list[str]:
    return browser.execute_script("return [...document.querySelectorAll('.card')].map(c => c.dataset.id)")


def test_no_console_errors_and_no_network(browser, page):
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    requests = [json.loads(entry["message"])["message"] for entry in page["log"]]
    sent = [m["params"] for m in requests if m["method"] == "Network.requestWillBeSent"]
    # The browser's own pages (chrome://) log requests too: look at the report's, and at any network URL at all.
    urls = [p["request"]["url"] for p in sent if p.get("documentURL") == page["url"]]
    assert page["url"] in urls
    assert [u for u in urls if u != page["url"] and not u.startswith("data:")] == []
    assert [p["request"]["url"] for p in sent if p["request"]["url"].startswith(("http:", "https:", "ws"))] == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0


def test_one_card_per_video_sorted_worst_first(browser, page):
    from selenium.webdriver.support.ui import Select

    cards = page["cards"]
    by_cider = [c.video_id for c in sorted(cards, key=lambda c: c.scores["CIDEr"])]
    assert card_ids(browser) == by_cider
    sort = Select(browser.find_element("id", "sort"))
    sort.select_by_value("")
    assert card_ids(browser) == [c.video_id for c in cards]
    sort.select_by_value("CIDEr")
    assert card_ids(browser) == by_cider
    browser.find_element("id", "direction").click()
    assert card_ids(browser) == by_cider[::-1]
    browser.find_element("id", "direction").click()
    box = browser.find_element("id", "filter")
    box.send_keys("YELLOW")
    assert browser.execute_script("return [...document.querySelectorAll('.card:not([hidden])')].length") == 2
    box.clear()
    box.send_keys(" ")  # the input event of clear() is not sent: type something that matches everything
    assert browser.find_element("id", "count").text == f"{len(cards)} of {len(cards)} videos"


def test_metric_table_equals_the_metrics(browser, page):
    cells = browser.find_elements("css selector", "#metrics tbody tr:first-child td[data-key]")
    assert {c.get_attribute("data-key"): float(c.get_attribute("data-value")) for c in cells} == METRICS
    heads = [th.text for th in browser.find_elements("css selector", "#metrics thead th")]
    assert heads == ["model", "BLEU-4", "METEOR", "CIDEr", "Perplexity", "ROUGE_L"]


def test_hovering_or_focusing_a_word_highlights_its_frames(browser, page):
    from selenium.webdriver import ActionChains

    for index, card in enumerate(page["cards"][:2]):  # soft, then hard attention
        element = browser.find_element("css selector", f'.card[data-id="{card.video_id}"]')
        words = element.find_elements("css selector", ".w")
        row = 2
        # Centred, so that the sticky controls bar does not cover the word.
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", words[row])
        ActionChains(browser).move_to_element(words[row]).perform()
        cells = element.find_elements("css selector", ".cell")
        weights = browser.execute_script("return arguments[0].map(c => +c.style.getPropertyValue('--w'))", cells)
        top = [i for i, c in enumerate(cells) if "top" in c.get_attribute("class").split()]
        expected = card.attention[row] / card.attention[row].max()
        assert top == [int(card.attention[row].argmax())]
        np.testing.assert_allclose(weights, expected, atol=5e-3)  # weights travel with 3 decimals
        if index == 1:  # hard attention: the one frame it took stays, all others fade out
            assert sorted(weights) == [0.0] * (len(cells) - 1) + [1.0]
        ActionChains(browser).move_to_element(browser.find_element("tag name", "h1")).perform()
        assert element.find_elements("css selector", ".cell.top") == []
        browser.execute_script("arguments[0].focus()", words[0])
        top = [i for i, c in enumerate(cells) if "top" in c.get_attribute("class").split()]
        assert top == [int(card.attention[0].argmax())]
        browser.execute_script("arguments[0].blur()", words[0])


def test_untrusted_text_shows_as_text(browser, page):
    assert browser.execute_script("return window.injected") is None
    texts = [li.get_attribute("textContent") for li in browser.find_elements("css selector", ".refs li")]
    assert INJECTED in texts
    assert browser.find_elements("css selector", ".refs b, .caption b") == []


# ----------------------------------------------------------------------------------------------------------------
# The report of a real evaluation: a tiny model trained on a few synthetic videos by `vidcap demo`

# With VIDCAP_REPORT_SCREENSHOT set, a model trained long enough to say something right (the README's picture; a few
# minutes); otherwise the session's tiny demo run (tests/conftest.py `tiny_demo`, TINY_DEMO's size).
SCREENSHOT_DEMO = ["--num-videos", "80", "--image-size", "32", "--epochs", "20", "--hidden-dim", "64",
                   "--embed-dim", "32", "--attention-dim", "32", "--batch-size", "16", "--beam-size", "3",
                   "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def evaluated(browser, tmp_path_factory, request):
    """`vidcap demo` (prepare, extract, fit, evaluate + report) at a tiny size; its report loaded in the browser."""
    if shutil.which("java") is None:
        pytest.skip("java not on PATH (METEOR, PTB tokenizer)")
    from vidcap.cli import main

    screenshot = os.environ.get("VIDCAP_REPORT_SCREENSHOT")
    if screenshot or os.environ.get("VIDCAP_REPORT_DEMO_OUT"):
        out = Path(os.environ.get("VIDCAP_REPORT_DEMO_OUT") or tmp_path_factory.mktemp("demo"))
        assert main(["demo", "--out", str(out), *(SCREENSHOT_DEMO if screenshot else TINY_DEMO)]) == 0
    else:
        out = request.getfixturevalue("tiny_demo")[0]
    report = out / "report" / "index.html"
    browser.get_log("performance")
    browser.get(report.as_uri())
    return {"url": report.as_uri(), "log": browser.get_log("performance"), "console": browser.get_log("browser"),
            "out": out,
            **{name: json.loads((out / "eval" / f"{name}.json").read_text()) for name in ("metrics", "predictions")}}


def card_scores(browser) -> list[dict[str, float]]:
    return browser.execute_script("return [...document.querySelectorAll('.card')].map(c => JSON.parse("
                                  "c.dataset.scores))")


@pytest.mark.java
@pytest.mark.slow
def test_evaluation_report_in_the_browser(browser, evaluated):
    from selenium.webdriver import ActionChains
    from selenium.webdriver.support.ui import Select

    browser.get(evaluated["url"])
    assert [e for e in evaluated["console"] + browser.get_log("browser") if e["level"] == "SEVERE"] == []
    sent = [json.loads(e["message"])["message"]["params"] for e in evaluated["log"]]
    urls = [p["request"]["url"] for p in sent if "request" in p]
    assert [u for u in urls if u.startswith(("http:", "https:", "ws"))] == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0

    # One card per test video, each with the sampled frames of its video file.
    predictions, metrics = evaluated["predictions"], evaluated["metrics"]
    ids = sorted(predictions)
    assert sorted(card_ids(browser)) == ids
    assert len(browser.find_elements("css selector", ".card .strip img")) == len(ids)
    # The metric table is metrics.json; per-video CIDEr-D averages to the split's (its IDF is the split's).
    cells = browser.find_elements("css selector", "#metrics tbody tr:first-child td[data-key]")
    table = {c.get_attribute("data-key"): float(c.get_attribute("data-value")) for c in cells}
    assert table == metrics
    scores = dict(zip(card_ids(browser), card_scores(browser), strict=True))
    assert np.mean([s["CIDEr"] for s in scores.values()]) == pytest.approx(metrics["CIDEr"], abs=1e-5)

    # Worst CIDEr first; "input order" is by id; the button turns it around. The scores differ, so one of the two
    # CIDEr orders is not the id order.
    by_cider = sorted(ids, key=lambda i: scores[i]["CIDEr"])
    assert len({s["CIDEr"] for s in scores.values()}) == len(ids)
    assert card_ids(browser) == by_cider
    sort = Select(browser.find_element("id", "sort"))
    sort.select_by_value("")
    assert card_ids(browser) == ids
    sort.select_by_value("CIDEr")
    assert card_ids(browser) == by_cider
    browser.find_element("id", "direction").click()
    assert card_ids(browser) == by_cider[::-1]

    # Hovering a word lights its frames by the weights of the evaluation's attention, the top one outlined.
    card = browser.find_element("css selector", f'.card[data-id="{by_cider[0]}"]')
    words = card.find_elements("css selector", ".w")
    assert [w.text for w in words] == predictions[by_cider[0]].split() + ["<eos>"]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", words[0])
    ActionChains(browser).move_to_element(words[0]).perform()
    attention = np.array([float(a) for a in words[0].get_attribute("data-a").split()])
    cells = card.find_elements("css selector", ".cell")
    shown = browser.execute_script("return arguments[0].map(c => +c.style.getPropertyValue('--w'))", cells)
    np.testing.assert_allclose(shown, attention / attention.max(), atol=2e-3)
    assert [i for i, c in enumerate(cells) if "top" in c.get_attribute("class").split()] == [attention.argmax()]


@pytest.mark.java
@pytest.mark.slow
def test_caption_report(browser, evaluated, tmp_path, capsys):
    """`vidcap caption FILES --report DIR`: a card per captioned file (no references), the same attention on hover;
    a file that cannot be captioned gets its skip line and no card."""
    from selenium.webdriver import ActionChains

    from vidcap.cli import main

    out = evaluated["out"]
    videos = sorted(str(p) for p in (out / "data" / "videos").glob("*.mp4"))[:2]
    report = tmp_path / "report"
    code = main(["caption", *videos, str(tmp_path / "missing.mp4"), "--checkpoint",
                 str(out / "run" / "checkpoints" / "last.ckpt"), "--beam-size", "2", "--n-best", "2",
                 "--report", str(report)])
    assert code == 1  # the missing file
    captured = capsys.readouterr()
    assert f"report: {report / 'index.html'}" in captured.err and "skipping" in captured.err
    captions = dict(line.split("\t")[:2] for line in captured.out.splitlines())
    browser.get((report / "index.html").as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert sorted(card_ids(browser)) == videos
    assert browser.find_elements("css selector", ".refs") == []
    for video in videos:
        card = browser.find_element("css selector", f'.card[data-id="{video}"]')
        words = card.find_elements("css selector", ".w")
        assert [w.text for w in words] == captions[video].split() + ["<eos>"]
        assert len(card.find_elements("css selector", ".strip img")) == 1
    ActionChains(browser).move_to_element(words[0]).perform()
    attention = np.array([float(a) for a in words[0].get_attribute("data-a").split()])
    cells = card.find_elements("css selector", ".cell")
    assert [i for i, c in enumerate(cells) if "top" in c.get_attribute("class").split()] == [attention.argmax()]


def test_report_folder_that_cannot_be_created_is_exit_2(tmp_path, capsys):
    """Refused before the checkpoint is even read."""
    from vidcap.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["caption", "clip.mp4", "--checkpoint", "none.ckpt", "--report", str(blocker / "report")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"vidcap caption: error: {blocker / 'report'}: cannot create the report folder: Not a directory"]


@pytest.mark.java
@pytest.mark.slow
def test_screenshot(browser, evaluated, tmp_path):
    """The real report with a word of its worst caption hovered; saved for the README where
    VIDCAP_REPORT_SCREENSHOT says."""
    from selenium.webdriver import ActionChains

    browser.set_window_size(1280, 900)
    browser.get(evaluated["url"])
    words = browser.find_elements("css selector", ".card .w")  # the worst card comes first
    ActionChains(browser).move_to_element(words[min(3, len(words) - 1)]).perform()
    png = tmp_path / "report.png"
    assert browser.save_screenshot(str(png)) and png.stat().st_size > 10_000
    target = os.environ.get("VIDCAP_REPORT_SCREENSHOT")
    if target:
        shutil.copyfile(png, target)
