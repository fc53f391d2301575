"""Every parser of user files, fed generated and hostile bytes (hypothesis): the result is the parsed data, with the row
count the file holds, or one VidcapError line; never another exception or a hang. Encodings: a UTF-8 byte-order
mark is accepted, UTF-16 is decoded (with a byte-order mark) or refused with a line naming it (without one).

Fixed example budgets (`settings(max_examples=...)` per test, the "ci" profile of tests/conftest.py: derandomized,
no example database, no deadline) keep the whole module well under a minute."""

from __future__ import annotations

import codecs
import csv
import io
import json
import pickle
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vidcap.errors import VidcapError

FUZZ = settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
GENERATED = settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Text a caption may hold: any printable character, quotes, commas, tabs; no line or paragraph separators
# (the line-based formats split on them) and no other control characters.
WORD_CHARS = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85")
CAPTION = st.text(WORD_CHARS | st.sampled_from(',"\' '), min_size=0, max_size=30)
ID = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_"), min_size=1, max_size=11)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One folder for the module: hypothesis runs many examples per test, each rewrites its files."""
    return tmp_path_factory.mktemp("fuzz")


def mutated(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """`data` with each (kind, position, byte) edit applied: 0 overwrites, 1 inserts, 2 deletes."""
    out = bytearray(data)
    for kind, position, byte in edits:
        at = position % (len(out) + 1)
        if kind == 0 and at < len(out):
            out[at] = byte
        elif kind == 1:
            out.insert(at, byte)
        elif kind == 2 and at < len(out):
            del out[at]
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8)


def parsed_or_refused(parse, *args):
    """parse(*args), or None when it refused with a VidcapError (one line); any other exception fails the test."""
    try:
        return parse(*args)
    except VidcapError as error:
        assert "\n" not in str(error).strip(), str(error)
        return None


def encodings_agree(work: Path, name: str, text: str, parse) -> None:
    """A UTF-8 BOM and UTF-16 with a BOM give what plain UTF-8 gives; UTF-16 without one is refused, naming it."""
    path = work / name
    path.write_bytes(text.encode("utf-8"))
    plain = parse(path)
    for encoded in (codecs.BOM_UTF8 + text.encode("utf-8"), text.encode("utf-16")):
        path.write_bytes(encoded)
        assert same(parse(path), plain)
    path.write_bytes(text.encode("utf-16-le"))
    with pytest.raises(VidcapError, match="UTF-16"):
        parse(path)


def same(a, b) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "equals"):
        return a.equals(b)
    return a == b


# --------------------------------------------------------------------------------------------------------------------
# MSVD: the CSV and AllVideoDescriptions.txt


def msvd_rows():
    row = st.tuples(ID, st.integers(0, 999), st.integers(0, 999), st.sampled_from(["English", "German"]), CAPTION)
    return st.lists(row, min_size=1, max_size=12)


def msvd_csv(rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description"])
    writer.writerows([(v, s, e, "1", "clean", "0", lang, text) for v, s, e, lang, text in rows])
    return buffer.getvalue()


def msvd_txt(rows) -> str:
    return "".join(f"{v}_{s}_{e} {text}\n" for v, s, e, _, text in rows)


def read_msvd(path: Path):
    from vidcap.datasets.msvd import read_annotations

    table, counts = read_annotations(path)
    return table[["video_id", "caption"]].reset_index(drop=True), counts["rows_read"]


@GENERATED
@given(rows=msvd_rows())
def test_msvd_csv_and_txt_give_one_row_per_english_caption(work, rows):
    expected = [(f"{v}_{s}_{e}", " ".join(t.split())) for v, s, e, lang, t in rows if lang == "English" and t.split()]
    for name, text, english in (("msvd.csv", msvd_csv(rows), expected),
                                ("msvd.txt", msvd_txt(rows), [(f"{v}_{s}_{e}", " ".join(t.split()))
                                                              for v, s, e, _, t in rows if t.split()])):
        (work / name).write_text(text, encoding="utf-8")
        table, rows_read = read_msvd(work / name)
        assert rows_read == len(rows)
        assert list(table.itertuples(index=False, name=None)) == english
        encodings_agree(work, name, text, read_msvd)


@FUZZ
@given(data=st.binary(max_size=600) | msvd_rows().map(lambda r: msvd_csv(r).encode()),
       edits=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 255)), max_size=8))
def test_msvd_hostile_bytes(work, data, edits):
    path = work / "hostile_msvd.csv"
    path.write_bytes(mutated(data, edits))
    parsed_or_refused(read_msvd, path)


# --------------------------------------------------------------------------------------------------------------------
# LSMDC: tab-separated, no header, one file per split

TIMES = st.tuples(st.integers(0, 9), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999)).map(
    lambda t: f"{t[0]:02d}.{t[1]:02d}.{t[2]:02d}.{t[3]:03d}")


def lsmdc_rows():
    movie = st.sampled_from(["3001_21_JUMP_STREET", "0001_American_Beauty", "1010_TITANIC"])
    row = st.tuples(movie, TIMES, TIMES, CAPTION.filter(lambda t: "\t" not in t and "\r" not in t))
    return st.lists(row, min_size=1, max_size=10, unique_by=lambda r: (r[0], r[1], r[2]))


def write_lsmdc(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "LSMDC16_annos_training.csv").write_text(text, encoding="utf-8")


def read_lsmdc(annotations: Path, videos: Path):
    from vidcap.datasets.lsmdc import read_tables

    captions, videos_table, _ = read_tables(annotations, videos)
    return captions[["video_id", "caption"]].reset_index(drop=True), len(videos_table)


@GENERATED
@given(rows=lsmdc_rows())
def test_lsmdc_gives_one_row_per_sentence(work, rows):
    annotations, videos = work / "lsmdc_annos", work / "lsmdc_videos"
    clips = [f"{movie}_{a}-{b}" for movie, a, b, _ in rows]
    text = "".join(f"{clip}\t{a}\t{b}\t{a}\t{b}\t{caption}\n" for clip, (_, a, b, caption) in zip(clips, rows,
                                                                                                  strict=True))
    write_lsmdc(annotations, text)
    for clip, (movie, *_rest) in zip(clips, rows, strict=True):
        (videos / movie).mkdir(parents=True, exist_ok=True)
        (videos / movie / f"{clip}.avi").touch()
    kept = [(clip, " ".join(r[3].split())) for clip, r in zip(clips, rows, strict=True) if r[3].split()]
    result = parsed_or_refused(read_lsmdc, annotations, videos)
    if not kept:
        assert result is None  # no captioned clip: refused, not an empty table
        return
    table, _ = result
    assert sorted(table.itertuples(index=False, name=None)) == sorted(kept)
    encodings_agree(annotations, "LSMDC16_annos_training.csv", text, lambda path: read_lsmdc(path.parent, videos))


@FUZZ
@given(data=st.binary(max_size=600), edits=EDITS)
def test_lsmdc_hostile_bytes(work, data, edits):
    annotations, videos = work / "lsmdc_hostile", work / "lsmdc_hostile_videos"
    videos.mkdir(parents=True, exist_ok=True)
    good = b"3001_21_JUMP_STREET_00.02.55.644-00.02.56.718\t00.02.55.644\t00.02.56.718\t00.02.55.644\t00.02.56.718\tHe runs.\n"
    annotations.mkdir(parents=True, exist_ok=True)
    (annotations / "LSMDC16_annos_training.csv").write_bytes(mutated(good + data, edits))
    parsed_or_refused(read_lsmdc, annotations, videos)


# --------------------------------------------------------------------------------------------------------------------
# MSR-VTT and VATEX: JSON


def load_dataset(module: ModuleType, annotations: list[Path], videos: list[Path]):
    """module.load with the annotation files and video folders as its keyword arguments."""
    return module.load(Path("unused-out"), annotations=[str(p) for p in annotations], videos=[str(v) for v in videos])


def msrvtt_json(clips: list[tuple[str, str, list[str]]]) -> str:
    return json.dumps({
        "videos": [{"video_id": vid, "split": split} for vid, split, _ in clips],
        "sentences": [{"video_id": vid, "caption": c, "sen_id": i} for vid, _, caps in clips for i, c in enumerate(caps)],
    }, ensure_ascii=False)


def vatex_json(clips: list[tuple[str, str, list[str]]]) -> str:
    return json.dumps([{"videoID": vid, "enCap": caps} for vid, _, caps in clips], ensure_ascii=False)


def json_clips():
    clip = st.tuples(ID.map(lambda s: "video" + s), st.sampled_from(["train", "validate", "test"]),
                     st.lists(CAPTION.filter(lambda t: t.split()), min_size=1, max_size=4))
    return st.lists(clip, min_size=1, max_size=6, unique_by=lambda c: c[0])


@GENERATED
@given(clips=json_clips())
def test_msrvtt_and_vatex_give_one_row_per_caption(work, clips):
    from vidcap.datasets import msrvtt, vatex

    videos = work / "json_videos"
    videos.mkdir(exist_ok=True)
    for vid, _, _ in clips:
        (videos / f"{vid}.mp4").touch()
    for module, name, text in ((msrvtt, "train_val_videodatainfo.json", msrvtt_json(clips)),
                               (vatex, "vatex_training_v1.0.json", vatex_json(clips))):
        path = work / name
        path.write_text(text, encoding="utf-8")

        def parse(p, module=module):
            captions, table, _ = load_dataset(module, [p], [videos])
            return captions[["video_id", "caption"]].sort_values(["video_id", "caption"]).reset_index(drop=True)

        table = parse(path)
        assert len(table) == sum(len(caps) for _, _, caps in clips)
        assert sorted(table.itertuples(index=False, name=None)) == sorted(
            (vid, " ".join(c.split())) for vid, _, caps in clips for c in caps)
        # json decodes UTF-16 with or without a byte-order mark itself: all four give the same table.
        for encoded in (codecs.BOM_UTF8 + text.encode(), text.encode("utf-16"), text.encode("utf-16-le")):
            path.write_bytes(encoded)
            assert parse(path).equals(table)


@FUZZ
@given(data=st.binary(max_size=400) | json_clips().map(lambda c: msrvtt_json(c).encode()), edits=EDITS)
def test_msrvtt_and_vatex_hostile_bytes(work, data, edits):
    from vidcap.datasets import msrvtt, vatex

    videos = work / "json_hostile_videos"
    videos.mkdir(exist_ok=True)
    (videos / "video1.mp4").touch()
    for module, name in ((msrvtt, "train_val_videodatainfo.json"), (vatex, "vatex_training_v1.0.json")):
        path = work / "hostile" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(mutated(data, edits))
        parsed_or_refused(load_dataset, module, [path], [videos])


@FUZZ
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                              st.sampled_from(["videos", "sentences", "video_id", "split", "caption", "videoID",
                                               "enCap", "x"]), inner, max_size=4), max_leaves=20))
def test_msrvtt_and_vatex_any_json_value(work, value):
    """Well-formed JSON of any shape: records of the wrong types are skipped and counted, or the file is refused."""
    from vidcap.datasets import msrvtt, vatex

    videos = work / "json_any_videos"
    videos.mkdir(exist_ok=True)
    for module, name in ((msrvtt, "train_val_videodatainfo.json"), (vatex, "vatex_training_v1.0.json")):
        path = work / "any" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(value))
        parsed_or_refused(load_dataset, module, [path], [videos])


# --------------------------------------------------------------------------------------------------------------------
# The authors' pickles (youtube2text-arctic), read by a restricted unpickler


@FUZZ
@given(data=st.binary(max_size=300) | st.recursive(
    st.none() | st.integers() | st.text(max_size=6) | st.binary(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10).map(lambda v: pickle.dumps(v, protocol=2)), edits=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 255)), max_size=6))
def test_pickles_are_data_or_refused(work, data, edits):
    from vidcap.datasets.safe_pickle import load_pickle

    path = work / "CAP.pkl"
    path.write_bytes(mutated(data, edits))
    parsed_or_refused(load_pickle, path)


def test_pickle_that_would_run_code_is_refused(work):
    from vidcap.datasets.safe_pickle import load_pickle

    path = work / "evil.pkl"
    path.write_bytes(pickle.dumps(Counter(a=1)))  # a class: the restricted unpickler refuses to build it
    with pytest.raises(VidcapError):
        load_pickle(path)


# --------------------------------------------------------------------------------------------------------------------
# `vidcap score` inputs


@GENERATED
@given(references=st.dictionaries(ID, st.lists(CAPTION, min_size=1, max_size=3), min_size=1, max_size=5))
def test_score_inputs_round_trip_in_every_encoding(work, references):
    from vidcap.cli.score import load_inputs

    predictions = {vid: refs[0] for vid, refs in references.items()}
    refs, preds = work / "refs.json", work / "preds.json"
    preds.write_text(json.dumps(predictions, ensure_ascii=False), encoding="utf-8")
    text = json.dumps(references, ensure_ascii=False)
    for encoded in (text.encode(), codecs.BOM_UTF8 + text.encode(), text.encode("utf-16"), text.encode("utf-16-le")):
        refs.write_bytes(encoded)
        assert load_inputs(refs, preds) == (references, predictions)


@FUZZ
@given(data=st.binary(max_size=300) | st.recursive(
    st.none() | st.integers() | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=3), inner, max_size=3), max_leaves=12).map(lambda v: json.dumps(v).encode()), edits=st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 255)), max_size=4))
def test_score_inputs_hostile(work, data, edits):
    from vidcap.cli.score import load_inputs

    refs, preds = work / "h_refs.json", work / "h_preds.json"
    refs.write_bytes(mutated(data, edits))
    preds.write_text('{"a": "x"}')
    parsed_or_refused(load_inputs, refs, preds)


def test_score_input_nested_too_deeply_is_one_line(work):
    from vidcap.cli.score import load_inputs

    refs = work / "deep.json"
    refs.write_text("[" * 100_000)
    with pytest.raises(VidcapError, match="deep.json"):
        load_inputs(refs, refs)


# --------------------------------------------------------------------------------------------------------------------
# A prepared folder's videos.csv and captions.csv


def tables(rows) -> tuple[str, str]:
    captions, videos = io.StringIO(), io.StringIO()
    csv.writer(captions, lineterminator="\n").writerows(
        [["video_id", "split", "caption", "tokens"], *[(v, s, c, " ".join(c.split()) or "x") for v, s, c in rows]])
    csv.writer(videos, lineterminator="\n").writerows(
        [["video_id", "split", "path"], *sorted({(v, s, f"videos/{v}.mp4") for v, s, _ in rows})])
    return captions.getvalue(), videos.getvalue()


def prepared_rows():
    return st.lists(st.tuples(ID, st.sampled_from(["train", "val", "test"]), CAPTION), min_size=1, max_size=10,
                    unique_by=lambda r: r[0])


@GENERATED
@given(rows=prepared_rows())
def test_prepared_tables_read_every_row(work, rows):
    from vidcap.datasets import read_captions, read_videos

    folder = work / "prepared"
    folder.mkdir(exist_ok=True)
    captions_text, videos_text = tables(rows)
    (folder / "videos.csv").write_text(videos_text, encoding="utf-8")
    (folder / "captions.csv").write_text(captions_text, encoding="utf-8")
    table = read_captions(folder)
    assert list(zip(table["video_id"], table["split"], table["caption"], strict=True)) == list(rows)
    assert len(read_videos(folder)) == len(rows)
    encodings_agree(folder, "captions.csv", captions_text, lambda p: read_captions(p.parent))
    (folder / "captions.csv").write_text(captions_text, encoding="utf-8")
    encodings_agree(folder, "videos.csv", videos_text, lambda p: read_videos(p.parent))


@FUZZ
@given(data=st.binary(max_size=400) | prepared_rows().map(lambda r: tables(r)[0].encode()), edits=EDITS)
def test_prepared_tables_hostile_bytes(work, data, edits):
    from vidcap.datasets import read_captions, read_videos

    folder = work / "prepared_hostile"
    folder.mkdir(exist_ok=True)
    (folder / "captions.csv").write_bytes(mutated(data, edits))
    (folder / "videos.csv").write_bytes(mutated(data, edits[::-1]))
    parsed_or_refused(read_captions, folder)
    parsed_or_refused(read_videos, folder)


# --------------------------------------------------------------------------------------------------------------------
# meta.json of a feature store

GOOD_META = {"format": 1, "num_frames": 26, "dtype": "float16", "sampling": {"rule": "r", "num_frames": 26},
             "global": {"name": "efficientnet_lite0", "dim": 1280}, "local": None, "versions": {}}


@FUZZ
@given(data=st.binary(max_size=300) | st.just(json.dumps(GOOD_META).encode()), edits=EDITS,
       replaced=st.dictionaries(st.sampled_from(sorted(GOOD_META)), st.none() | st.integers() | st.text(max_size=4)
                                | st.lists(st.integers(), max_size=2) | st.dictionaries(
                                    st.sampled_from(["dim", "name"]), st.integers() | st.text(max_size=3)),
                                max_size=3))
def test_meta_json_is_a_usable_store_description_or_refused(work, data, edits, replaced):
    from vidcap.features.integrity import expected_arrays
    from vidcap.features.store import read_meta

    store = work / "store"
    store.mkdir(exist_ok=True)
    for content in (mutated(data, edits), json.dumps({**GOOD_META, **replaced}).encode()):
        (store / "meta.json").write_bytes(content)
        meta = parsed_or_refused(read_meta, store)
        if meta is not None:  # what the readers take from it works
            assert int(meta["num_frames"]) > 0
            expected_arrays(meta)
            for kind in ("global", "local"):
                assert meta.get(kind) is None or int(meta[kind]["dim"]) > 0


def test_meta_json_encodings(work):
    from vidcap.features.store import read_meta

    store = work / "store_encodings"
    store.mkdir(exist_ok=True)
    text = json.dumps(GOOD_META)
    for encoded in (codecs.BOM_UTF8 + text.encode(), text.encode("utf-16"), text.encode("utf-16-le")):
        (store / "meta.json").write_bytes(encoded)
        assert read_meta(store) == GOOD_META
