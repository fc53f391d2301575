"""The authors' preprocessed Youtube2Text (`youtube2text_iccv15/`): their captions, tokens, vocabulary and features.

The folder the original code (yaoli/arctic-capgen-vid) trains on holds Python-2 pickles; this module reads these,
always through vidcap.datasets.safe_pickle (a pickle runs code when loaded; these only rebuild containers and arrays):

    train.pkl, valid.pkl, test.pkl        lists of "vid<N>_<capID>": the (video, caption) pairs of each split
    CAP.pkl                               {"vid<N>": [{"image_id", "cap_id", "caption", "tokenized"}, ...]}
    worddict.pkl                          {word: index}, indices from 2 (0 is <eos>, 1 is UNK)
    FEAT_key_vidID_value_features.pkl     {"vid<N>": float32 (n_frames, 1024)}: GoogLeNet features of every frame

Splits are fixed by number, as in the original: vid1-vid1200 train, vid1201-vid1300 val, vid1301-vid1970 test; the
three lists are checked against that rule and disagreements are reported, never followed. Train keeps the pairs
train.pkl lists (what the original trains on); val and test keep every caption of CAP.pkl (the original's
references). `caption` is the raw sentence (the metrics' reference), `tokens` the original `tokenized` text, so
prepare keeps the authors' tokenisation. Videos have no file (features only).

`build_vocab` keeps worddict.pkl's words in their index order: vidcap id = original index + 2 (the original's 0
`<eos>` and 1 `UNK` land on vidcap's EOS=2 and UNK=3; PAD=0 and BOS=1 come first). The original keeps indices below
`n_words` (config.py): `--max-vocab n_words+2` gives the same vocabulary. `--min-count` does not apply.

`write_features` fills a vidcap feature store: K frames per video chosen as the original does (numpy.array_split of
range(n_frames) into K chunks, the first of each), videos shorter than K zero-padded with mask False; `times` holds
frame indices (the features come without a frame rate; meta.json "times_unit": "frame"). Its meta.json has
"weights": "external" in the "global" description: no extractor exists for these features, so a model trained on
them cannot caption a video file (docs/formats.md, "Feature store").
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidcap.datasets import MSVD_SPLIT_SIZES, clean_caption
from vidcap.datasets.safe_pickle import load_pickle, py2_text
from vidcap.errors import UsageError
from vidcap.features import store
from vidcap.text.vocab import SPECIAL_TOKENS, Vocabulary
from vidcap.video.reader import SAMPLING_RULE, sample_frame_indices

log = logging.getLogger(__name__)

NAME = "youtube2text-arctic"
HELP = "the authors' preprocessed Youtube2Text (youtube2text_iccv15/*.pkl): captions, tokens, vocabulary, features"
EXAMPLE = """
  vidcap prepare youtube2text-arctic --pkl-dir youtube2text_iccv15 --out data/arctic --features feats/arctic
"""
PAPER_DATASET = "msvd"

SPLIT_FILES = {"train": "train.pkl", "val": "valid.pkl", "test": "test.pkl"}
CAPTIONS_FILE = "CAP.pkl"
WORDS_FILE = "worddict.pkl"
FEATURES_FILE = "FEAT_key_vidID_value_features.pkl"
NEEDED_FILES = (*SPLIT_FILES.values(), CAPTIONS_FILE, WORDS_FILE, FEATURES_FILE)
DEFAULT_NUM_FRAMES = 26  # the original's K (config.py)
FEATURE_NAME = "googlenet_arctic"
FEATURE_SOURCE = "youtube2text_iccv15 (the authors' GoogLeNet features)"
# The fixed split: vid numbers 1-1200 train, 1201-1300 val, 1301-1970 test.
_FIRST_OF = {"train": 1, "val": 1 + MSVD_SPLIT_SIZES["train"],
             "test": 1 + MSVD_SPLIT_SIZES["train"] + MSVD_SPLIT_SIZES["val"]}
NUM_VIDEOS = sum(MSVD_SPLIT_SIZES.values())
VIDEO_ID = re.compile(r"vid([1-9][0-9]*)")
PAIR_ID = re.compile(r"(vid[1-9][0-9]*)_(.+)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pkl-dir", required=True, type=Path, metavar="DIR",
                        help=f"the youtube2text_iccv15 folder ({', '.join(NEEDED_FILES)})")
    parser.add_argument("--features", required=True, type=Path, metavar="FEATS",
                        help="feature store to write the authors' features to (resumes one written before)")
    parser.add_argument("--num-frames", type=int, default=DEFAULT_NUM_FRAMES, metavar="K",
                        help=f"frames sampled per video, as the original's K (default {DEFAULT_NUM_FRAMES})")


def fixed_split(video_id: str) -> str | None:
    """"vid<N>" -> its split by the fixed rule; None for an id outside vid1-vid1970."""
    match = VIDEO_ID.fullmatch(video_id)
    number = int(match.group(1)) if match else 0
    if not 1 <= number <= NUM_VIDEOS:
        return None
    return "test" if number >= _FIRST_OF["test"] else "val" if number >= _FIRST_OF["val"] else "train"


def _needed(pkl_dir: Path, name: str) -> Path:
    path = pkl_dir / name
    if not path.is_file():
        raise UsageError(f"{path}: needed file not found "
                         f"(the youtube2text_iccv15 folder holds {', '.join(NEEDED_FILES)})")
    return path


def _check_options(pkl_dir: Path, num_frames: int) -> None:
    if num_frames < 1:
        raise UsageError(f"--num-frames must be at least 1, got {num_frames}")
    if not pkl_dir.is_dir():
        raise UsageError(f"{pkl_dir}: --pkl-dir is not a folder")
    for name in NEEDED_FILES:
        _needed(pkl_dir, name)


def _mapping(path: Path) -> dict:
    content = load_pickle(path)
    if not isinstance(content, dict):
        raise UsageError(f"{path}: expected a dict, found {type(content).__name__}")
    return content


def _split_pairs(path: Path, split: str, captions: dict[str, dict[str, dict]]) -> tuple[set[tuple[str, str]], dict]:
    """The (vid, cap_id) pairs of one split file and how they disagree with the fixed split and CAP.pkl."""
    listed = load_pickle(path)
    if not isinstance(listed, (list, tuple)):
        raise UsageError(f"{path}: expected a list of 'vid<N>_<capID>' strings, found {type(listed).__name__}")
    counts: Counter[str] = Counter()
    pairs = set()
    for entry in listed:
        match = PAIR_ID.fullmatch(py2_text(entry)) if isinstance(entry, str) else None
        if match is None:
            counts["malformed"] += 1
            continue
        video, cap = match.groups()
        if fixed_split(video) != split:
            counts["outside_split"] += 1
        elif cap not in captions.get(video, {}):
            counts["not_in_cap"] += 1
        else:
            pairs.add((video, cap))
    listed_videos = {video for video, _ in pairs}
    counts["videos_of_split_not_listed"] = sum(
        1 for video in captions if fixed_split(video) == split and video not in listed_videos)
    if any(counts.values()):
        log.warning("%s disagrees with the fixed split or %s: %s", path, CAPTIONS_FILE,
                    ", ".join(f"{n} {key.replace('_', ' ')}" for key, n in counts.items() if n))
    return pairs, {"entries": len(listed), "pairs_kept": len(pairs), "videos": len(listed_videos), **counts}


def _read_captions(path: Path) -> tuple[dict[str, dict[str, dict]], Counter]:
    """CAP.pkl -> {"vid<N>": {cap_id: {"caption", "tokens"}}} (file order kept) for vid1-vid1970, plus counts of
    what was left out."""
    skipped: Counter[str] = Counter()
    out: dict[str, dict[str, dict]] = {}
    for key, entries in _mapping(path).items():
        video = py2_text(key) if isinstance(key, str) else None
        if video is None or fixed_split(video) is None:
            skipped["videos_outside_vid1_vid1970"] += 1
            continue
        if not isinstance(entries, (list, tuple)):
            raise UsageError(f"{path}: {video!r} holds a {type(entries).__name__}, expected a list of caption dicts")
        kept = out.setdefault(video, {})
        for entry in entries:
            try:
                cap_id, caption, tokens = (entry[k] for k in ("cap_id", "caption", "tokenized"))
            except (KeyError, TypeError, IndexError):
                skipped["malformed_captions"] += 1
                continue
            if not isinstance(caption, str) or not isinstance(tokens, str):
                skipped["malformed_captions"] += 1
                continue
            cap_id = py2_text(cap_id) if isinstance(cap_id, str) else str(cap_id)
            if cap_id in kept:
                skipped["duplicate_cap_ids"] += 1
                continue
            kept[cap_id] = {"caption": clean_caption(py2_text(caption)), "tokens": " ".join(py2_text(tokens).split())}
    return out, skipped


def load(out: Path, *, pkl_dir: str | Path, features: str | Path, num_frames: int = DEFAULT_NUM_FRAMES
         ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The dataset protocol (vidcap.datasets.catalog): captions [video_id, split, caption, tokens, cap_id], videos
    [video_id, split, path=""], report. See the module docstring."""
    pkl_dir = Path(pkl_dir)
    _check_options(pkl_dir, num_frames)  # every needed file, before minutes of loading
    cap_path = pkl_dir / CAPTIONS_FILE
    captions, skipped = _read_captions(cap_path)
    pairs, lists = {}, {}
    for split, name in SPLIT_FILES.items():
        pairs[split], lists[name] = _split_pairs(pkl_dir / name, split, captions)
    rows = []
    for video in sorted(captions, key=lambda v: int(v[3:])):
        split = fixed_split(video)
        for cap_id, cap in captions[video].items():
            # Train: the pairs train.pkl lists; val and test: all of CAP.pkl, the references the original scores on.
            if split != "train" or (video, cap_id) in pairs["train"]:
                rows.append({"video_id": video, "split": split, **cap, "cap_id": cap_id})
    table = pd.DataFrame(rows, columns=["video_id", "split", "caption", "tokens", "cap_id"])
    if table.empty:
        raise UsageError(f"{cap_path}: no caption of vid1-vid{NUM_VIDEOS} left to prepare")
    videos = table.drop_duplicates("video_id")[["video_id", "split"]].assign(path="").reset_index(drop=True)
    train_in_cap = sum(len(caps) for video, caps in captions.items() if fixed_split(video) == "train")
    kept = set(videos["video_id"])
    report = {
        "pkl_dir": str(pkl_dir.resolve()),
        "split_rule": f"fixed: vid1-vid{_FIRST_OF['val'] - 1} train, vid{_FIRST_OF['val']}-vid{_FIRST_OF['test'] - 1}"
                      f" val, vid{_FIRST_OF['test']}-vid{NUM_VIDEOS} test",
        "split_lists": lists,
        "cap_pkl": dict(skipped),
        "train_captions_not_in_train_pkl": train_in_cap - int((table["split"] == "train").sum()),
        "videos_without_captions": {split: sum(f"vid{n}" not in kept for n in range(_FIRST_OF[split],
                                                                                   _FIRST_OF[split] + size))
                                    for split, size in MSVD_SPLIT_SIZES.items()},
    }
    log.info("%s: %d captions of %d videos", NAME, len(table), len(videos))
    return table, videos, report


def build_vocab(captions: pd.DataFrame, *, max_vocab: int | None, pkl_dir: str | Path, features: str | Path,
                num_frames: int = DEFAULT_NUM_FRAMES) -> Vocabulary:
    """worddict.pkl as a Vocabulary: its words in index order, vidcap id = original index + 2 (module docstring);
    `max_vocab` caps V (special tokens included), `min_count` does not apply."""
    path = _needed(Path(pkl_dir), WORDS_FILE)
    by_index: dict[int, str] = {}
    for word, index in _mapping(path).items():
        if not isinstance(word, str) or isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise UsageError(f"{path}: expected {{word: index}}, found {word!r}: {index!r}")
        word, index = py2_text(word), int(index)
        if index < 2 or index in by_index:
            raise UsageError(f"{path}: word {word!r} has index {index}, "
                             + ("reserved for <eos> and UNK" if index < 2 else f"as {by_index[index]!r} has"))
        if not word or word != "".join(word.split()) or word in SPECIAL_TOKENS:
            raise UsageError(f"{path}: word {word!r} cannot be a vidcap token (empty, spaces, or a special token)")
        by_index[index] = word
    words = [by_index[index] for index in sorted(by_index)]
    if words and sorted(by_index)[-1] != len(words) + 1:
        log.warning("%s: indices are not 2..%d without gaps: vidcap keeps the words' order, not the indices",
                    path, len(words) + 1)
    if max_vocab is not None:
        words = words[: max_vocab - len(SPECIAL_TOKENS)]
    vocab = Vocabulary(words, min_count=1, max_size=max_vocab)
    train = captions.loc[captions["split"] == "train", "tokens"]
    unknown = sum(token not in vocab for tokens in train for token in str(tokens).split())
    log.info("%s: %d words kept from %s (--min-count does not apply); %d train tokens map to <unk>",
             NAME, len(words), path.name, unknown)
    return vocab


# ---------------------------------------------------------------------------------------------------------------------
# The feature store


def store_meta(num_frames: int, dim: int) -> dict[str, Any]:
    """meta.json of a store of the authors' features: "weights": "external" means no extractor can recompute them."""
    return {
        "format": store.FORMAT,
        "num_frames": num_frames,
        "dtype": "float32",
        "sampling": {"rule": SAMPLING_RULE, "num_frames": num_frames},
        "times_unit": "frame",  # `times` are frame indices: the features come without a frame rate
        "global": {"name": FEATURE_NAME, "dim": dim, "weights": "external", "source": FEATURE_SOURCE,
                   "file": FEATURES_FILE},
        "local": None,
    }


def sample_features(frames: np.ndarray, num_frames: int) -> dict[str, np.ndarray]:
    """(n_frames, D) features -> the store's arrays: "global" (K, D) float32 (zero rows past a short video's end, as
    the original pads), "mask" (K,) bool, "times" (K,) float32 frame indices."""
    indices, mask = sample_frame_indices(len(frames), num_frames)
    chosen = np.asarray(frames, dtype=np.float32)[indices]
    chosen[~mask] = 0.0
    return {"global": chosen, "mask": mask, "times": indices.astype(np.float32)}


def _check_frames(frames: Any, dim: int) -> str | None:
    """Why one video's features cannot be used, or None."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 2 or not np.issubdtype(frames.dtype, np.floating):
        return f"not a (n_frames, {dim}) float array"
    if frames.shape[0] == 0 or frames.shape[1] != dim:
        return f"shape {frames.shape}, expected (n_frames >= 1, {dim})"
    if not np.isfinite(frames).all():
        return "holds NaN or infinite values"
    return None


def write_features(captions: pd.DataFrame, videos: pd.DataFrame, *, pkl_dir: str | Path, features: str | Path,
                   num_frames: int = DEFAULT_NUM_FRAMES) -> dict[str, Any]:
    """Write the store at `features` for every video of `videos` (the addendum hook prepare calls after the
    tables). Resumable: videos whose feature file exists are skipped, and FEAT_key_vidID_value_features.pkl (GBs)
    is not even read when none is left. A video without usable features is recorded in the store's failed/ folder.
    Returns counts for prepare.json."""
    from tqdm import tqdm

    feats_dir = Path(features)
    source = _needed(Path(pkl_dir), FEATURES_FILE)
    store.clean_temp_files(feats_dir)
    split_of = dict(zip(videos["video_id"], videos["split"], strict=True))
    for video in split_of:
        store.check_video_id(video)
    todo = [video for video in split_of if not store.feature_path(feats_dir, video).is_file()]
    features: dict = {}
    if todo or not (feats_dir / "meta.json").is_file():
        log.info("%s: reading %s (all frames of every video: this takes a while)", NAME, source)
        features = {py2_text(k) if isinstance(k, str) else k: v for k, v in _mapping(source).items()}
        first = next((v for v in features.values() if isinstance(v, np.ndarray) and v.ndim == 2), None)
        if first is None:
            raise UsageError(f"{source}: no (n_frames, D) feature array in it")
        dim = int(first.shape[1])
    else:
        dim = int(store.read_meta(feats_dir)["global"]["dim"])
    store.prepare_store(feats_dir, store_meta(num_frames, dim))  # refuses a store of other features or another K
    failed: Counter[str] = Counter()
    for video in tqdm(todo, desc="features", unit="video", disable=None):
        frames = features.get(video)
        reason = f"no features in {FEATURES_FILE}" if frames is None else _check_frames(frames, dim)
        if reason is not None:
            store.record_failure(feats_dir, video, str(source), reason)
            failed[split_of[video]] += 1
            continue
        store.save_features(feats_dir, video, sample_features(frames, num_frames), dtype="float32")
    ok, _ = store.write_manifest(feats_dir)
    if failed:
        log.warning("%s: %d video(s) without usable features (see %s)", feats_dir, sum(failed.values()),
                    feats_dir / "failed")
    return {
        "features": str(feats_dir.resolve()),
        "videos_with_features": ok,
        "features_written": len(todo) - sum(failed.values()),
        "features_already_there": len(split_of) - len(todo),
        "missing_features": dict(failed),
        "features_of_other_videos": len(set(features) - set(split_of)),
    }
