"""The public Python API (`import vidcap`, docs/api.md): every call runs, and each gives what its command gives."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import vidcap
from tests.helpers import learn_captions, moving_square, write_video

pytestmark = [pytest.mark.java, pytest.mark.usefixtures("one_thread")]
CAPTIONS = {"red": "a red square moves right", "blue": "a blue square moves left"}
NUM_FRAMES, IMAGE_SIZE = 6, 64


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread) -> dict:
    """Two real videos, their features through vidcap.run_extract, and a small model that learnt their captions."""
    from vidcap.text.vocab import Vocabulary

    root = tmp_path_factory.mktemp("api")
    data, store = root / "data", root / "feats"
    paths = {"red": write_video(data / "red.mp4", moving_square(24, (220, 30, 30), 1)),
             "blue": write_video(data / "blue.mp4", moving_square(24, (30, 30, 220), -1))}
    (data / "videos.csv").write_text("video_id,split,path\n" + "".join(f"{k},test,{k}.mp4\n" for k in paths))
    (data / "captions.csv").write_text("video_id,split,caption,tokens\n"
                                       + "".join(f"{k},test,{c},{c}\n" for k, c in CAPTIONS.items()))
    vocab = Vocabulary(" ".join(CAPTIONS.values()).split())
    vocab.save(data / "vocab.json")
    (data / "prepare.json").write_text(json.dumps({"dataset": "msvd"}))

    options = vidcap.ExtractOptions(global_name="efficientnet_lite0", num_frames=NUM_FRAMES,
                                    image_sizes={"global": IMAGE_SIZE}, num_workers=0, threads=1)
    summary = vidcap.run_extract(data, store, options, progress=False)
    assert (summary.extracted, summary.failed) == (2, [])

    learn_captions(store, CAPTIONS, vocab, root / "model.ckpt")
    return {"checkpoint": root / "model.ckpt", "data": data, "store": store, "paths": paths}


def test_import_vidcap_is_cheap_and_lists_the_api():
    code = "import sys, vidcap; assert 'torch' not in sys.modules, 'torch imported'; print(sorted(vidcap.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ["load_captioner", "caption_video", "ExtractOptions", "run_extract", "evaluate", "score_captions"]:
        assert name in out
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vidcap.nope  # noqa: B018


def test_caption_evaluate_and_score_through_the_api(run, tmp_path):
    captioner = vidcap.load_captioner(run["checkpoint"])
    captions = {k: vidcap.caption_video(path, captioner).caption for k, path in run["paths"].items()}
    assert captions == CAPTIONS

    result = vidcap.evaluate(run["checkpoint"], run["data"], run["store"], split="test", progress=False)
    assert result.predictions == captions  # the same checkpoint, video and default options: the same caption
    assert result.metrics["CIDEr"] == pytest.approx(result.metrics["CIDEr"]) and result.metrics["Bleu_4"] > 0.99
    files = vidcap.write_outputs(result, tmp_path / "eval")
    assert json.loads(files["predictions"].read_text()) == captions

    scores = vidcap.score_captions({k: [c] for k, c in CAPTIONS.items()}, captions)
    assert scores["Bleu_4"] == pytest.approx(result.metrics["Bleu_4"])
    assert scores["CIDEr"] == pytest.approx(result.metrics["CIDEr"])
