"""The vocabulary (captions arrive as PTB token lists: tests/test_datasets.py checks the tokens `prepare` stores)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vidcap.errors import UsageError
from vidcap.text.vocab import SPECIAL_TOKENS, Vocabulary

# ---------------------------------------------------------------------------------------------------------------
CAPTIONS = [c.split() for c in ("a man runs", "a man walks", "a dog runs", "the dog")]
# Tokens as coco's PTB tokenizer leaves them: brackets as -lrb-, split contractions, kept abbreviation periods.
AWKWARD = [c.split() for c in (
    "a man -lrb- in a hat -rrb- is playing -lcb- guitar -rcb- -lsb- loudly -rsb-",
    "do n't you think the man 's car ca n't go i 'm gon na wan na got ta can not",
    "mr. smith went to the u.s. and met dr. jones etc.",
    "the price is $ 5.50 or 1,000 yen & 3/4 of a pie *",
    "wow !!! what ?! huh ??",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber \u00e9cole",
)]


def test_build_counts_min_count_and_orders_by_count_then_word():
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    # a: 3, dog: 2, man: 2, runs: 2 (ties alphabetical); the, walks: 1
    assert vocab.itos == [*SPECIAL_TOKENS, "a", "dog", "man", "runs"]
    assert (vocab.PAD, vocab.BOS, vocab.EOS, vocab.UNK) == (0, 1, 2, 3)
    assert len(vocab) == 8
    assert "walks" not in vocab and "man" in vocab


def test_build_max_size_counts_the_special_tokens():
    vocab = Vocabulary.build(CAPTIONS, min_count=1, max_size=6)
    assert vocab.itos == [*SPECIAL_TOKENS, "a", "dog"]


def test_build_never_adds_special_tokens_as_words():
    vocab = Vocabulary.build([["<unk>", "<pad>", "ok"], ["<unk>", "ok"]], min_count=1)
    assert vocab.itos == [*SPECIAL_TOKENS, "ok"]


@pytest.mark.parametrize(("kwargs", "message"), [({"min_count": 0}, "min_count"), ({"max_size": 4}, "max_size")])
def test_build_rejects_bad_sizes(kwargs, message):
    with pytest.raises(UsageError, match=message):
        Vocabulary.build(CAPTIONS, **kwargs)


def test_encode_appends_eos_maps_unknown_and_truncates_keeping_eos():
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    a, dog, man, runs = (vocab.token_to_id(w) for w in ("a", "dog", "man", "runs"))
    assert vocab.encode(["a", "man", "flies"]) == [a, man, vocab.UNK, vocab.EOS]
    assert vocab.encode(["a", "man", "runs"], max_len=3) == [a, man, vocab.EOS]
    assert vocab.encode(("a", "man", "runs"), max_len=1) == [vocab.EOS]
    assert vocab.encode(["a", "dog"], max_len=10) == [a, dog, vocab.EOS]
    assert vocab.encode([]) == [vocab.EOS]
    with pytest.raises(ValueError, match="max_len"):
        vocab.encode(["a"], max_len=0)
    assert runs == 7


def test_raw_text_is_refused_not_spelled_out():
    # A string is a sequence of letters: counting or encoding it letter by letter would be a silent bug.
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    with pytest.raises(TypeError, match="list of tokens"):
        vocab.encode("a man")
    with pytest.raises(TypeError, match="list of tokens"):
        Vocabulary.build(["a man runs"], min_count=1)


def test_decode_stops_at_eos_and_drops_special_tokens():
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    a, man, runs = (vocab.token_to_id(w) for w in ("a", "man", "runs"))
    assert vocab.decode([vocab.BOS, a, vocab.UNK, man, runs, vocab.EOS, a, a]) == "a man runs"
    assert vocab.decode(np.array([a, man, vocab.PAD, vocab.PAD])) == "a man"
    assert vocab.decode([vocab.EOS, a]) == ""
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.decode([a, 99])


def test_encode_decode_round_trip_equals_the_tokens():
    vocab = Vocabulary.build(AWKWARD, min_count=1)
    for tokens in AWKWARD:
        assert vocab.decode(vocab.encode(tokens)) == " ".join(tokens)


def test_to_dict_from_dict_and_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build(AWKWARD, min_count=1, max_size=50)
    data = vocab.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain types only
    assert Vocabulary.from_dict(data) == vocab
    path = vocab.save(tmp_path / "sub" / "vocab.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["vocab.json"]  # no temp file left behind
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.itos == vocab.itos and loaded.max_size == 50
    assert Vocabulary.build(CAPTIONS, min_count=2) != vocab


def _good() -> dict:
    return Vocabulary.build(CAPTIONS, min_count=2).to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("format"), "format None is not supported"),
        (lambda d: d.update(format=2), "format 2 is not supported"),
        (lambda d: d.pop("tokens"), "'tokens' must be a list of strings"),
        (lambda d: d.update(tokens=["<pad>", 3]), "'tokens' must be a list of strings"),
        (lambda d: d.update(tokens=["<bos>", "<pad>", "<eos>", "<unk>", "a"]), "must start with the special tokens"),
        (lambda d: d["tokens"].append("a"), "token 'a' appears twice"),
        (lambda d: d["tokens"].append(""), "token '' is empty or contains a space"),
        (lambda d: d["tokens"].append("a b"), "token 'a b' is empty or contains a space"),
        (lambda d: d.update(min_count=0), "'min_count' must be a positive integer"),
        (lambda d: d.update(max_size="big"), "'max_size' must be an integer or null"),
    ],
)
def test_from_dict_names_the_problem(change, message):
    data = _good()
    change(data)
    with pytest.raises(UsageError, match=message):
        Vocabulary.from_dict(data)


def test_from_dict_rejects_a_non_object():
    with pytest.raises(UsageError, match="must be a JSON object, got list"):
        Vocabulary.from_dict(["<pad>"])


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(UsageError, match=r"nope\.json: vocabulary file not found"):
        Vocabulary.load(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(UsageError, match=r"broken\.json: cannot read vocabulary"):
        Vocabulary.load(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": 1, "tokens": ["a"]}), encoding="utf-8")
    with pytest.raises(UsageError, match=r"wrong\.json: vocabulary must start with the special tokens"):
        Vocabulary.load(wrong)
