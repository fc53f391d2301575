"""The authors' preprocessed Youtube2Text (vidcap.datasets.youtube2text_arctic) and the restricted unpickler.

Every pickle here is generated in the structure of youtube2text_iccv15/; `py2_pickle` writes the opcodes Python 2's
cPickle writes (8-bit strings as SHORT_BINSTRING/BINSTRING, arrays through numpy.core.multiarray._reconstruct with
their raw bytes as a string), so the Python-2 path is tested without a Python 2.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.fixtures_arctic import DIM, FRAMES, TEST, TRAIN, VAL, WORDS, _frames, py2_pickle
from vidcap.datasets import youtube2text_arctic as arctic
from vidcap.datasets.options import dataset_options
from vidcap.datasets.safe_pickle import load_pickle, py2_text
from vidcap.errors import UsageError
from vidcap.features import store
from vidcap.text.vocab import Vocabulary


class _Call:
    """Pickles as a call of `func(*args)`: what an attacker's file looks like."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# ---------------------------------------------------------------------------------------------------------------------
# safe_pickle


def test_python2_pickle_gives_the_float32_array_and_text(tmp_path):
    frames = np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM) / 7
    path = tmp_path / "py2.pkl"
    path.write_bytes(py2_pickle({"vid1": frames, "caption": "un café", "ids": ["vid1_0", 3]}))
    loaded = load_pickle(path)
    assert loaded["vid1"].dtype == np.float32 and np.array_equal(loaded["vid1"], frames)
    assert loaded["caption"] == "un caf\xc3\xa9"  # 8-bit string read as latin-1 ...
    assert py2_text(loaded["caption"]) == "un café"  # ... and back to its text
    assert loaded["ids"] == ["vid1_0", 3]
    path.write_bytes(b"(dp0\nS'vid1'\np1\n(lp2\nS'caf\\xc3\\xa9'\np3\naI7\nas.")  # cPickle protocol 0
    assert {k: [py2_text(v[0]), v[1]] for k, v in load_pickle(path).items()} == {"vid1": ["café", 7]}


def test_python3_pickles_of_arrays_load(tmp_path):
    arrays = {"a": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3), "b": np.float64(2.5), "c": {1, 2}}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(arrays, protocol=protocol))
        loaded = load_pickle(path)
        assert np.array_equal(loaded["a"], arrays["a"]) and loaded["b"] == 2.5 and loaded["c"] == {1, 2}


@pytest.mark.parametrize(
    "payload, forbidden",
    [
        (lambda cmd: b"\x80\x02cos\nsystem\nU" + bytes([len(cmd)]) + cmd + b"\x85R.", "os.system"),
        (lambda cmd: pickle.dumps(_Call(os.system, cmd.decode()), protocol=2), f"{os.system.__module__}.system"),
        (lambda cmd: pickle.dumps(_Call(eval, f"__import__('os').system({cmd.decode()!r})")), "builtins.eval"),
        (lambda cmd: pickle.dumps({"vid1": [_Call(getattr, "x", "upper")]}, protocol=0), "__builtin__.getattr"),
    ],
)
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, payload, forbidden):
    marker = tmp_path / "pwned"
    path = tmp_path / "CAP.pkl"
    path.write_bytes(payload(f"touch {marker}".encode()))
    with pytest.raises(UsageError) as error:
        load_pickle(path)
    message = str(error.value)
    assert message == (f"refused: {path} wants to load {forbidden}; only containers, strings, numbers and numpy "
                       "arrays are allowed")
    assert not marker.exists()


def test_codecs_encode_rebuilds_latin1_bytes_only(tmp_path):
    path = tmp_path / "zip.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(UsageError, match=r"zip\.pkl: truncated or corrupt pickle \(_codecs.encode with encoding"):
        load_pickle(path)


def test_truncated_corrupt_and_missing_pickles_are_one_line_errors(tmp_path):
    good = pickle.dumps({"vid1": np.zeros((3, 4), np.float32)}, protocol=2)
    cases = {"cut.pkl": good[: len(good) // 2], "junk.pkl": b"not a pickle at all", "empty.pkl": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UsageError) as error:
            load_pickle(tmp_path / name)
        assert str(error.value).startswith(f"{tmp_path / name}: truncated or corrupt pickle (")
        assert "\n" not in str(error.value)
    with pytest.raises(UsageError, match=r"nope\.pkl: not found$"):
        load_pickle(tmp_path / "nope.pkl")




def _args(pkl_dir: Path, tmp_path: Path, **extra) -> dict:
    """The module's options as `vidcap.datasets.prepare` hands them over."""
    return dataset_options(arctic, {"pkl_dir": pkl_dir, "features": tmp_path / "feats", **extra})


def test_fixed_split_rule():
    assert [arctic.fixed_split(v) for v in ("vid1", "vid1200", "vid1201", "vid1300", "vid1301", "vid1970")] == [
        "train", "train", "val", "val", "test", "test"]
    assert [arctic.fixed_split(v) for v in ("vid0", "vid1971", "vid01", "video1", "vid1_2")] == [None] * 5


def test_load_keeps_the_original_tokens_and_splits(pkl_dir, tmp_path, caplog):
    captions, videos, report = arctic.load(tmp_path, **_args(pkl_dir, tmp_path))
    assert list(captions.columns[:4]) == ["video_id", "split", "caption", "tokens"]
    assert videos["video_id"].tolist() == TRAIN + VAL + TEST  # numeric order; vid1971 is outside the standard ids
    assert set(videos["path"]) == {""}
    assert dict(zip(videos["video_id"], videos["split"], strict=True)) == {
        **dict.fromkeys(TRAIN, "train"), **dict.fromkeys(VAL, "val"), **dict.fromkeys(TEST, "test")}
    by_id = captions.set_index(["video_id", "cap_id"])
    assert by_id.loc[("vid2", "1"), "caption"] == "Un café chaud" and by_id.loc[("vid2", "1"), "tokens"] == "a café"
    assert by_id.loc[("vid1", "0"), "tokens"] == "a man is playing guitar a"
    assert ("vid3", "2") not in by_id.index  # not in train.pkl
    assert captions["split"].value_counts().to_dict() == {"train": 11, "val": 6, "test": 9}
    assert report["train_captions_not_in_train_pkl"] == 1
    assert report["split_lists"]["train.pkl"] == {
        "entries": 14, "pairs_kept": 11, "videos": 4, "outside_split": 1, "not_in_cap": 1, "malformed": 1,
        "videos_of_split_not_listed": 0}
    assert report["cap_pkl"] == {"videos_outside_vid1_vid1970": 1}
    assert report["videos_without_captions"] == {"train": 1196, "val": 98, "test": 667}
    assert "train.pkl disagrees with the fixed split or CAP.pkl: 1 outside split, 1 not in cap, 1 malformed" in \
        caplog.text
    json.dumps(report)


def test_a_missing_needed_file_is_named_before_any_work(pkl_dir, tmp_path):
    (pkl_dir / "dict_youtube_mapping.pkl").unlink()  # not needed
    arctic.load(tmp_path, **_args(pkl_dir, tmp_path))
    (pkl_dir / "worddict.pkl").unlink()
    with pytest.raises(UsageError, match=r"youtube2text_iccv15/worddict\.pkl: needed file not found"):
        arctic.load(tmp_path, **_args(pkl_dir, tmp_path))
    with pytest.raises(UsageError, match="is not a folder"):
        arctic.load(tmp_path, **_args(tmp_path / "nowhere", tmp_path))


def test_a_malicious_caption_file_stops_load(pkl_dir, tmp_path):
    marker = tmp_path / "pwned"
    (pkl_dir / "CAP.pkl").write_bytes(pickle.dumps({"vid1": _Call(os.system, f"touch {marker}")}, protocol=2))
    with pytest.raises(UsageError, match=r"^refused: .*CAP\.pkl wants to load .*\.system;"):
        arctic.load(tmp_path, **_args(pkl_dir, tmp_path))
    assert not marker.exists()


def test_vocab_keeps_the_worddict_order_shifted_by_two(pkl_dir, tmp_path):
    args = _args(pkl_dir, tmp_path)
    captions, _, _ = arctic.load(tmp_path, **args)
    vocab = arctic.build_vocab(captions, max_vocab=None, **args)
    assert vocab.itos == ["<pad>", "<bos>", "<eos>", "<unk>", *WORDS]
    assert all(vocab.token_to_id(word) == index + 2 for index, word in enumerate(WORDS, start=2))
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    capped = arctic.build_vocab(captions, max_vocab=7, **args)
    assert capped.itos[4:] == WORDS[:3]
    (pkl_dir / "worddict.pkl").write_bytes(py2_pickle({"a": 2, "man": 1}))
    with pytest.raises(UsageError, match=r"worddict\.pkl: word 'man' has index 1, reserved for <eos> and UNK"):
        arctic.build_vocab(captions, max_vocab=None, **args)


def _original_sampling(frames: np.ndarray, k: int) -> np.ndarray:
    """The original's data_engine: array_split's first index of each chunk, or zero-padding when short."""
    if len(frames) < k:
        return np.concatenate([frames, np.zeros((k - len(frames), frames.shape[1]), frames.dtype)])
    return frames[[chunk[0] for chunk in np.array_split(range(len(frames)), k)]]


def test_write_features_samples_as_the_original(pkl_dir, tmp_path):
    args = _args(pkl_dir, tmp_path, num_frames=26)
    captions, videos, _ = arctic.load(tmp_path, **args)
    report = arctic.write_features(captions, videos, **args)
    feats = tmp_path / "feats"
    assert report["features_written"] == 8 and report["missing_features"] == {"test": 1}
    assert store.list_features(feats) == sorted(FRAMES)
    assert "vid1970" in store.read_failures(feats)
    for video, n in FRAMES.items():
        arrays = store.load_features(feats, video)
        assert arrays["global"].dtype == np.float32 and arrays["global"].shape == (26, DIM)
        assert np.array_equal(arrays["global"], _original_sampling(_frames(video), 26)), video
        assert arrays["mask"].tolist() == [True] * min(n, 26) + [False] * max(0, 26 - n)
        assert arrays["times"].dtype == np.float32
    assert store.load_features(feats, "vid1")["times"][:3].tolist() == [0, 2, 4]  # frame indices
    meta = store.read_meta(feats)
    assert meta["global"] == {"name": "googlenet_arctic", "dim": DIM, "weights": "external",
                              "source": arctic.FEATURE_SOURCE, "file": "FEAT_key_vidID_value_features.pkl"}
    assert meta["local"] is None and meta["num_frames"] == 26
    assert meta["sampling"] == {"rule": "array_split_first", "num_frames": 26} and meta["times_unit"] == "frame"


def test_write_features_resumes_without_reading_the_features_again(pkl_dir, tmp_path):
    args = _args(pkl_dir, tmp_path, num_frames=5)
    captions, videos, _ = arctic.load(tmp_path, **args)
    videos = videos[videos["video_id"] != "vid1970"]
    arctic.write_features(captions, videos.iloc[:3], **args)
    written = store.feature_path(tmp_path / "feats", "vid1").stat().st_mtime_ns
    report = arctic.write_features(captions, videos, **args)
    assert (report["features_written"], report["features_already_there"]) == (5, 3)
    assert store.feature_path(tmp_path / "feats", "vid1").stat().st_mtime_ns == written
    (pkl_dir / "FEAT_key_vidID_value_features.pkl").write_bytes(b"garbage")  # never read when nothing is left
    assert arctic.write_features(captions, videos, **args)["features_already_there"] == 8
    with pytest.raises(UsageError, match="this store holds other features"):
        arctic.write_features(captions, videos, **_args(pkl_dir, tmp_path, num_frames=6))


def test_write_features_records_unusable_arrays(pkl_dir, tmp_path):
    args = _args(pkl_dir, tmp_path, num_frames=4)
    features = {video: _frames(video) for video in FRAMES}
    features["vid2"] = features["vid2"][:, :10]
    features["vid3"] = np.full((3, DIM), np.nan, np.float32)
    (pkl_dir / "FEAT_key_vidID_value_features.pkl").write_bytes(py2_pickle(features))
    captions, videos, _ = arctic.load(tmp_path, **args)
    report = arctic.write_features(captions, videos, **args)
    assert report["missing_features"] == {"train": 2, "test": 1}
    failures = store.read_failures(tmp_path / "feats")
    assert failures["vid2"][0] == f"shape (26, 10), expected (n_frames >= 1, {DIM})"
    assert failures["vid3"][0] == "holds NaN or infinite values"


def test_captions_table_round_trips_through_prepare_tables(pkl_dir, tmp_path):
    from vidcap.datasets import read_captions, write_tables

    captions, videos, report = arctic.load(tmp_path, **_args(pkl_dir, tmp_path))
    write_tables(tmp_path / "data", captions, videos, report)
    back = read_captions(tmp_path / "data")
    pd.testing.assert_series_equal(back["tokens"], captions["tokens"])


def test_cli_prepare_writes_tables_vocab_and_store(pkl_dir, tmp_path, capsys):
    """`vidcap prepare youtube2text-arctic`: the original tokens and word order kept, the features stored."""
    from vidcap.cli import main
    from vidcap.datasets import read_captions, read_videos

    out, feats = tmp_path / "data", tmp_path / "feats"
    assert main(["prepare", "youtube2text-arctic", "--pkl-dir", str(pkl_dir), "--out", str(out),
                 "--features", str(feats), "--num-frames", "8"]) == 0
    captions = read_captions(out)
    assert captions.loc[captions["caption"] == "Un café chaud", "tokens"].tolist() == ["a café"]
    assert len(captions) == 26 and set(read_videos(out)["video_id"]) == set(TRAIN + VAL + TEST)
    assert Vocabulary.load(out / "vocab.json").itos[4:] == WORDS
    assert store.list_features(feats) == sorted(FRAMES) and store.read_meta(feats)["num_frames"] == 8
    assert store.read_meta(feats)["global"]["weights"] == "external"
