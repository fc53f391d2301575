"""Tokenizer (the same tokens coco-caption scores) and the vocabulary."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vidcap.errors import UsageError
from vidcap.vocab import SPECIAL_TOKENS, Vocabulary, tokenize

# Sentences that exercise the PTB tokenizer's corners; the expected tokens of a few are written out below, all of
# them are compared with the real Stanford tokenizer in the java test.
AWKWARD = [
    "A man (in a hat) is playing {guitar} [loudly].",
    "He said \"hello\" to the 'dog'.",
    "Don't you think the man's car can't go? I'm gonna wanna gotta cannot.",
    "Mr. Smith went to the U.S. and met Dr. Jones, etc.",
    "The price is $5.50 or 1,000 yen & 3/4 of a pie*.",
    "A well-known man -- walking... slowly; yes: no!",
    "she's they're we'll you've he'd I'd",
    "the women's team; the girls' team",
    "A MAN IS SLICING A TOMATO.",
    "a man  is \t riding a bike ",
    "email me at foo@bar.com or http://www.example.com/a?b=c",
    "5:30 pm, 12.5%, #1, @user, 50-50, 3x, 2nd",
    "\u201cSmart quotes\u201d and \u2018single\u2019 \u2026 and \u2014 em dash \u2013 en dash",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber \u00c9COLE",
    "'Tis the season o'clock rock 'n' roll y'all",
    "he's running.she is. it's 5 p.m. the U.S. Army",
    "wow!!! what?! huh??",
    "it costs \u20ac5 and \u00a33 and \u00a520 and 50\u00a2",
    "a \u00bd cup and \u00bc cup, 5 1/2 inches",
    "the man--the woman---and----then",
    "a...b a. . . b a....b \u2026",
    "a <b> tag < 3 > 2 a|b a\\b a=b a+b a~b a^b",
    "isn't aren't wasn't won't shan't ain't didn't couldn't y'know",
    "point a. He goes. the u.s. The end. etc. The etc. the",
    "he is 5'11\" tall and 6' 2''",
    "the 80's, the '80s, rock'n'roll",
    "(a) (b) 1) 2) :) ;-) :D",
    "AT&T at&t US$5 #tag #1",
    "e.g. i.e. a.k.a. vs ca. approx.",
    "someone puts SOMEONE's hat on the table (again).",
    "a cat.A dog cooking., stuff; item.: end",
    "a \U0001f600 emoji and \u2605 star and \u2122 tm and \u00a9 and \u00b0 degree 30\u00b0C",
    "A-U.S. t-shirt's 2nd-year x-ray u.s.-based",
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A man is slicing a tomato.", "a man is slicing a tomato"),
        (AWKWARD[0], "a man -lrb- in a hat -rrb- is playing -lcb- guitar -rcb- -lsb- loudly -rsb-"),
        (AWKWARD[1], "he said hello to the dog"),
        (AWKWARD[2], "do n't you think the man 's car ca n't go i 'm gon na wan na got ta can not"),
        (AWKWARD[3], "mr. smith went to the u.s. and met dr. jones etc."),
        (AWKWARD[4], "the price is $ 5.50 or 1,000 yen & 3/4 of a pie *"),
        (AWKWARD[16], "wow !!! what ?! huh ??"),
        (AWKWARD[23], "point a he goes the u.s. the end etc. the etc. the"),
        (AWKWARD[26], "-lrb- a -rrb- -lrb- b -rrb- 1 -rrb- 2 -rrb- :-rrb- ;--rrb- :d"),
        ("", ""),
        ("  \t ", ""),
        ("line one\nline two", "line one line two"),
    ],
)
def test_tokenize_known_outputs(text, expected):
    assert tokenize(text) == (expected.split(" ") if expected else [])


def test_tokenize_returns_a_fresh_list():
    first = tokenize("a dog runs")
    first.append("x")
    assert tokenize("a dog runs") == ["a", "dog", "runs"]


def _stanford_ptb(sentences: list[str], tmp_path: Path) -> list[list[str]]:
    """What pycocoevalcap's PTBTokenizer.tokenize does: the CoreNLP 3.4.1 jar, one caption per line, then its
    punctuation list removed. Run in tmp_path because the package folder may be read-only."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    source = tmp_path / "captions.txt"
    source.write_bytes("\n".join(s.replace("\n", " ") for s in sentences).encode("utf-8"))
    cmd = ["java", "-Duser.language=en", "-Duser.country=US", "-Dfile.encoding=UTF-8", "-cp", str(jar),
           "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", source.name]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, check=True, timeout=120).stdout.decode("utf-8")
    lines = out.split("\n")
    return [[w for w in line.rstrip().split(" ") if w and w not in ptbtokenizer.PUNCTUATIONS]
            for line in lines[: len(sentences)]]


@pytest.mark.java
@pytest.mark.skipif(shutil.which("java") is None, reason="needs Java for the Stanford PTB tokenizer")
def test_tokenize_equals_the_coco_ptb_tokenizer(tmp_path):
    reference = _stanford_ptb(AWKWARD, tmp_path)
    assert len(reference) == len(AWKWARD)
    mismatches = [(s, tokenize(s), ref) for s, ref in zip(AWKWARD, reference, strict=True) if tokenize(s) != ref]
    assert mismatches == []


# ---------------------------------------------------------------------------------------------------------------
CAPTIONS = ["A man runs.", "a man walks", "A dog runs!", "the dog"]


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
    vocab = Vocabulary.build(["<unk> <pad> ok", "<unk> ok"], min_count=1)
    assert vocab.itos == [*SPECIAL_TOKENS, "ok"]


@pytest.mark.parametrize(("kwargs", "message"), [({"min_count": 0}, "min_count"), ({"max_size": 4}, "max_size")])
def test_build_rejects_bad_sizes(kwargs, message):
    with pytest.raises(UsageError, match=message):
        Vocabulary.build(CAPTIONS, **kwargs)


def test_encode_appends_eos_maps_unknown_and_truncates_keeping_eos():
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    a, dog, man, runs = (vocab.token_to_id(w) for w in ("a", "dog", "man", "runs"))
    assert vocab.encode("A man flies.") == [a, man, vocab.UNK, vocab.EOS]
    assert vocab.encode("a man runs", max_len=3) == [a, man, vocab.EOS]
    assert vocab.encode("a man runs", max_len=1) == [vocab.EOS]
    assert vocab.encode("a dog", max_len=10) == [a, dog, vocab.EOS]
    assert vocab.encode("") == [vocab.EOS]
    with pytest.raises(ValueError, match="max_len"):
        vocab.encode("a", max_len=0)
    assert runs == 7


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
    for text in AWKWARD:
        assert vocab.decode(vocab.encode(text)) == " ".join(tokenize(text))


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
