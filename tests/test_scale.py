"""What issue 15's LSMDC-size benchmark (benchmarks/bench_scale.py) found not to scale, fixed and kept fixed."""

from __future__ import annotations

import time

import pandas as pd

from vidcap.data import read_split
from vidcap.vocab import Vocabulary


def _captions(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """rows of (video_id, split, caption); the tokens are the caption's words."""
    table = pd.DataFrame(rows, columns=["video_id", "split", "caption"])
    return table.assign(tokens=table["caption"])


def test_read_split_groups_references_in_file_order_and_sorts_videos():
    vocab = Vocabulary(["a", "b", "c"])
    captions = _captions([
        ("v2", "train", "a b"), ("v10", "train", "c"), ("v2", "val", "b"), ("v2", "train", "c a"),
        ("gone", "train", "a"), ("v1", "train", "b b b b"),
    ])
    videos, skipped = read_split(captions, "train", vocab, max_caption_len=3, available={"v1", "v2", "v10"})
    assert skipped == 1
    assert [v.video_id for v in videos] == ["v1", "v10", "v2"]  # sorted as strings
    by_id = {v.video_id: v for v in videos}
    assert by_id["v2"].references == ("a b", "c a")  # the val caption stays out, the order is the file's
    assert by_id["v2"].tokens == ((4, 5, Vocabulary.EOS), (6, 4, Vocabulary.EOS))
    assert by_id["v1"].tokens == ((5, 5, Vocabulary.EOS),)  # cut to max_caption_len, EOS kept


def test_read_split_is_linear_at_lsmdc_size():
    # A pandas group per video took ~0.3 ms, 12 s for these 40k videos; one pass over the columns takes ~0.2 s.
    n = 40_000
    captions = _captions([(f"clip{i:06d}", "train", "a b c") for i in range(n)] + [("clip000001", "train", "b")])
    start = time.perf_counter()
    videos, skipped = read_split(captions, "train", Vocabulary(["a", "b", "c"]), 30, {f"clip{i:06d}" for i in range(n)})
    elapsed = time.perf_counter() - start
    assert (len(videos), skipped, len(videos[1].tokens)) == (n, 0, 2)
    assert elapsed < 3.0, f"read_split took {elapsed:.1f} s for {n} videos"
