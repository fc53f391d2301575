"""The authors' preprocessed Youtube2Text as files: a Python-2 pickle writer and a reduced youtube2text_iccv15/
(tests/test_arctic.py, tests/test_paper.py; the `pkl_dir` fixture in conftest.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

DIM = 1024


# ---------------------------------------------------------------------------------------------------------------------
# Pickle writers


def py2_pickle(obj) -> bytes:
    """Protocol-2 bytes as Python 2's cPickle writes `obj` (str -> 8-bit UTF-8 string, ndarray -> _reconstruct)."""
    out = bytearray(b"\x80\x02")

    def string(data: bytes) -> None:
        out.extend(b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data)

    def emit(x) -> None:
        if isinstance(x, str):
            string(x.encode("utf-8"))
        elif isinstance(x, bool):
            out.extend(b"\x88" if x else b"\x89")
        elif isinstance(x, int):
            out.extend(b"J" + struct.pack("<i", x))
        elif x is None:
            out.extend(b"N")
        elif isinstance(x, dict):
            out.extend(b"}(")
            for key, value in x.items():
                emit(key)
                emit(value)
            out.extend(b"u")
        elif isinstance(x, list):
            out.extend(b"](")
            for value in x:
                emit(value)
            out.extend(b"e")
        elif isinstance(x, tuple):
            out.extend(b"(")
            for value in x:
                emit(value)
            out.extend(b"t")
        elif isinstance(x, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n")
            emit((0,))
            string(b"b")
            out.extend(b"tR(")  # _reconstruct(ndarray, (0,), 'b'), then BUILD with the array's state
            emit(1)
            emit(tuple(x.shape))
            out.extend(b"cnumpy\ndtype\n")
            emit((x.dtype.str[1:], 0, 1))
            out.extend(b"R")
            emit((3, x.dtype.str[0], None, None, None, -1, -1, 0))
            out.extend(b"b")
            emit(False)
            string(np.ascontiguousarray(x).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(x))

    emit(obj)
    return bytes(out + b".")


# ---------------------------------------------------------------------------------------------------------------------
# The dataset: a reduced youtube2text_iccv15 (4 train, 2 val, 3 test videos)

TRAIN, VAL, TEST = ["vid1", "vid2", "vid3", "vid10"], ["vid1201", "vid1202"], ["vid1301", "vid1302", "vid1970"]
FRAMES = {"vid1": 40, "vid2": 26, "vid3": 3, "vid10": 7, "vid1201": 30, "vid1202": 5, "vid1301": 9, "vid1302": 60}
WORDS = ["a", "man", "is", "playing", "guitar", "woman", "café", "cooking"]


def _frames(video: str) -> np.ndarray:
    """(n_frames, DIM) float32 whose row i holds video number + i / 1000 (so a row names its frame)."""
    n = FRAMES[video]
    return (int(video[3:]) + np.arange(n, dtype=np.float32)[:, None] / 1000 + np.zeros((1, DIM), np.float32))


def write_youtube2text_iccv15(root: Path) -> Path:
    """A reduced youtube2text_iccv15/ under `root` (4 train, 2 val, 3 test videos, one more outside the standard
    ids), in the pickles the authors distribute, written as Python 2 wrote them. Returns the folder."""
    folder = root / "youtube2text_iccv15"
    folder.mkdir()
    cap = {}
    for video in TRAIN + VAL + TEST + ["vid1971"]:
        cap[video] = [{"image_id": video, "cap_id": str(i), "caption": f"A man is playing {i}.",
                       "tokenized": f"a man is playing guitar {WORDS[i % len(WORDS)]}"} for i in range(3)]
    cap["vid2"][1] = {"image_id": "vid2", "cap_id": "1", "caption": "Un café  chaud", "tokenized": "a  café"}
    train = [f"{v}_{c['cap_id']}" for v in TRAIN for c in cap[v]]
    train.remove("vid3_2")  # a train caption the original does not train on
    train += ["vid1201_0", "vid5_0", "bogus"]  # wrong split, not in CAP.pkl, malformed
    valid = [f"{v}_{c['cap_id']}" for v in VAL for c in cap[v]]
    test = [f"{v}_{c['cap_id']}" for v in TEST for c in cap[v]]
    files = {
        "train.pkl": train, "valid.pkl": valid, "test.pkl": test, "CAP.pkl": cap,
        "worddict.pkl": {word: i + 2 for i, word in enumerate(WORDS)},
        "FEAT_key_vidID_value_features.pkl": {video: _frames(video) for video in FRAMES},  # no vid1970
        "dict_youtube_mapping.pkl": {"-4wsuPCjDBc_5_15": "vid1"},
    }
    for name, content in files.items():
        (folder / name).write_bytes(py2_pickle(content))
    return folder
