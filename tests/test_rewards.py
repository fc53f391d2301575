"""CiderD (vidcap/text/cider.py) against pycocoevalcap's Cider, computed directly on the same reference set."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from vidcap.text.cider import CiderD

REFERENCES = {
    "cook": [
        "a man is slicing a tomato".split(),
        "a man slices a tomato in the kitchen".split(),
        "someone is cutting a tomato".split(),
    ],
    "dance": [
        "two girls are dancing".split(),
        "girls dance on a stage".split(),
    ],
    "ride": [
        "a boy rides a bicycle".split(),
        "a boy is riding a bike on the road".split(),
        "a child rides".split(),
        [],  # an empty reference counts in the mean and matches nothing
    ],
}

# Column k holds the k-th candidate of every video, so that each column can be scored by pycocoevalcap in one call.
CANDIDATES = {
    "cook": [
        "a man is slicing a tomato".split(),  # equal to a reference
        [],
        "a a a a a".split(),
        "a man is slicing a tomato with a big knife in a small kitchen next to a window today".split(),
    ],
    "dance": [
        "girls are dancing on a stage".split(),
        "dancing dancing dancing".split(),
        "zebra zebra quietly zebra".split(),  # words no reference has, one repeated
        [],
    ],
    "ride": [
        "a boy".split(),
        "a boy rides a bicycle on the road".split(),
        "the the the the the the the the".split(),
        "a".split(),
    ],
}


def pycoco_column(references, candidates, column: int) -> dict:
    """pycocoevalcap's Cider of candidates[v][column] for every video v of `references`, by video id.

    Its per-item scores follow the order of the `gts` keys; the keys are passed sorted so that they line up however
    that order is defined.
    """
    order = sorted(references, key=str)
    gts = {v: [" ".join(ref) for ref in references[v]] for v in order}
    res = {v: [" ".join(candidates[v][column])] for v in order}
    _, per_video = Cider().compute_score(gts, res)
    return dict(zip(order, per_video, strict=True))


def assert_equal_to_pycoco(references, candidates, columns: int) -> None:
    ours = CiderD(references).scores(candidates)
    assert list(ours) == list(candidates)
    for column in range(columns):
        expected = pycoco_column(references, candidates, column)
        for video_id in references:
            assert ours[video_id][column] == pytest.approx(expected[video_id], abs=1e-9, rel=0), (video_id, column)


def test_equals_pycocoevalcap_on_chosen_candidates():
    assert_equal_to_pycoco(REFERENCES, CANDIDATES, columns=4)


def test_chosen_candidates_behave_as_cider_d():
    scores = CiderD(REFERENCES).scores(CANDIDATES)
    assert scores["cook"][1] == 0.0 and scores["dance"][3] == 0.0  # empty candidates
    assert scores["dance"][2] == 0.0  # no n-gram in common
    assert scores["cook"][0] > scores["cook"][3] > 0  # the long one pays the length penalty
    assert scores["cook"][2] < 0.1 * scores["cook"][0]  # "a a a a a": clipped to the references' count of "a"


@pytest.mark.parametrize("seed", range(5))
def test_equals_pycocoevalcap_on_random_captions(seed):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(5)]  # few words: n-grams up to 4 overlap often
    references = {
        video_id: [[rng.choice(words) for _ in range(rng.randint(0, 9))] for _ in range(rng.randint(1, 5))]
        for video_id in range(8)  # ids need not be strings
    }
    candidates = {
        video_id: [[rng.choice(words + ["x", "y"]) for _ in range(rng.randint(0, 14))] for _ in range(3)]
        for video_id in references
    }
    assert_equal_to_pycoco(references, candidates, columns=3)


def test_references_without_4_grams():
    references = {"a": [["one"], ["one", "two"]], "b": [["two", "three", "four"]]}
    candidates = {"a": [["one", "two", "three"]], "b": [["two", "three", "four", "five"]]}
    assert_equal_to_pycoco(references, candidates, columns=1)


def test_score_array_matches_scores_and_depends_on_no_other_candidate():
    scorer = CiderD(REFERENCES)
    by_video = scorer.scores(CANDIDATES)
    video_ids = list(CANDIDATES)
    flat = [cand for cands in CANDIDATES.values() for cand in cands]
    array = scorer.score_array(np.repeat(video_ids, 4), flat)
    assert array.shape == (12,) and array.dtype == np.float64
    np.testing.assert_array_equal(array.reshape(3, 4), np.array([by_video[v] for v in video_ids]))
    # Document frequencies are fixed at construction: one candidate alone scores as it does in the batch.
    assert scorer.scores({"ride": [CANDIDATES["ride"][1]]})["ride"][0] == pytest.approx(by_video["ride"][1], abs=1e-12)


def test_empty_inputs_score_zero_and_do_not_crash():
    scorer = CiderD(REFERENCES)
    assert scorer.scores({}) == {}
    assert scorer.score_array([], []).shape == (0,)
    assert scorer.scores({"cook": [[], []], "dance": []}) == {"cook": [0.0, 0.0], "dance": []}


def test_unknown_video_is_a_value_error_naming_it():
    scorer = CiderD(REFERENCES)
    with pytest.raises(ValueError, match="'ghost'") as caught:
        scorer.scores({"cook": [["a"]], "ghost": [["a"]]})
    assert caught.value.__suppress_context__  # no KeyError traceback attached


@pytest.mark.parametrize(
    ("references", "message"),
    [({}, "at least one video"), ({"v": []}, "'v'"), ({"v": "a man"}, "'v'"), ({"v": ["a man"]}, "lists of tokens")],
)
def test_bad_references_are_value_errors(references, message):
    with pytest.raises(ValueError, match=message):
        CiderD(references)


def test_untokenised_candidates_are_value_errors():
    scorer = CiderD(REFERENCES)
    with pytest.raises(ValueError, match="lists of tokens"):
        scorer.scores({"cook": ["a man is slicing a tomato"]})
    with pytest.raises(ValueError, match="'cook'"):
        scorer.scores({"cook": "a man"})
    with pytest.raises(ValueError, match="2 video ids for 1 candidates"):
        scorer.score_array(["cook", "ride"], [["a"]])
