"""The word vocabulary: tokens <-> ids.

Captions are tokenised once, when a dataset is prepared, by coco-caption's own PTB tokenizer (lower case, its
punctuation tokens dropped; `vidcap.datasets.prepare`, docs/metrics.md), and the tokens are stored in captions.csv.
So training sees exactly the tokens the metrics see: the vocabulary, the perplexity and the scores stay consistent.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vidcap.atomic import write_json
from vidcap.errors import UsageError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
VOCAB_FORMAT = 1


def _token_list(tokens: Sequence[str]) -> Sequence[str]:
    # A str is a sequence too (of characters): refuse it rather than count letters.
    if isinstance(tokens, str):
        raise TypeError("expected a list of tokens, got a string (split it, or read the tokens column of captions.csv)")
    return tokens


class Vocabulary:
    """Word <-> id mapping. Ids 0-3 are `<pad> <bos> <eos> <unk>`; words follow by decreasing train count."""

    PAD, BOS, EOS, UNK = 0, 1, 2, 3

    def __init__(self, words: Iterable[str] = (), min_count: int = 1, max_size: int | None = None) -> None:
        self.itos: list[str] = list(SPECIAL_TOKENS)
        self.stoi: dict[str, int] = {token: i for i, token in enumerate(self.itos)}
        for word in words:
            if word not in self.stoi:
                self.stoi[word] = len(self.itos)
                self.itos.append(word)
        self.min_count = min_count
        self.max_size = max_size

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_count: int = 2, max_size: int | None = None) -> Vocabulary:
        """Vocabulary of the words seen at least `min_count` times in `captions`, token lists (train split only!).

        `max_size` caps V, the total size including the 4 special tokens. Ties in count are broken
        alphabetically so that the same captions always give the same ids.
        """
        if min_count < 1:
            raise UsageError(f"min_count must be at least 1, got {min_count}")
        if max_size is not None and max_size <= len(SPECIAL_TOKENS):
            raise UsageError(f"max_size must be more than {len(SPECIAL_TOKENS)} (the special tokens), got {max_size}")
        counts: Counter[str] = Counter()
        for tokens in captions:
            counts.update(_token_list(tokens))
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - len(SPECIAL_TOKENS)]
        log.info("vocabulary: %d words with count >= %d (of %d distinct)", len(words), min_count, len(counts))
        return cls(words, min_count=min_count, max_size=max_size)

    # -- mapping ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return (self.itos, self.min_count, self.max_size) == (other.itos, other.min_count, other.max_size)

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, min_count={self.min_count}, max_size={self.max_size})"

    def token_to_id(self, token: str) -> int:
        return self.stoi.get(token, self.UNK)

    def id_to_token(self, index: int) -> str:
        return self.itos[index]

    def encode(self, tokens: Sequence[str], max_len: int | None = None) -> list[int]:
        """Ids (L,) of `tokens` followed by EOS, no BOS. `max_len` truncates to L <= max_len, EOS kept."""
        ids = [self.stoi.get(token, self.UNK) for token in _token_list(tokens)]
        if max_len is not None:
            if max_len < 1:
                raise ValueError(f"max_len must be at least 1 (room for EOS), got {max_len}")
            ids = ids[: max_len - 1]
        ids.append(self.EOS)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Words of `ids` (L,) up to the first EOS, special tokens dropped, joined by spaces."""
        words = []
        for raw in ids:
            index = int(raw)
            if index == self.EOS:
                break
            if not 0 <= index < len(self.itos):
                raise ValueError(f"token id {index} is outside the vocabulary (size {len(self.itos)})")
            if index >= len(SPECIAL_TOKENS):
                words.append(self.itos[index])
        return " ".join(words)

    # -- serialisation ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain types only (it is stored inside checkpoints loaded with weights_only=True)."""
        return {"format": VOCAB_FORMAT, "min_count": self.min_count, "max_size": self.max_size, "tokens": list(self.itos)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocabulary:
        """Inverse of `to_dict`; raises UsageError naming what is wrong."""
        if not isinstance(data, Mapping):
            raise UsageError(f"vocabulary must be a JSON object, got {type(data).__name__}")
        if data.get("format") != VOCAB_FORMAT:
            raise UsageError(f"vocabulary format {data.get('format')!r} is not supported (expected {VOCAB_FORMAT})")
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise UsageError("vocabulary 'tokens' must be a list of strings")
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise UsageError(f"vocabulary must start with the special tokens {' '.join(SPECIAL_TOKENS)}")
        seen: set[str] = set()
        for token in tokens:
            if token in seen:
                raise UsageError(f"vocabulary token {token!r} appears twice")
            if not token or token != token.strip() or " " in token:
                raise UsageError(f"vocabulary token {token!r} is empty or contains a space")
            seen.add(token)
        min_count = data.get("min_count", 1)
        max_size = data.get("max_size")
        if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
            raise UsageError(f"vocabulary 'min_count' must be a positive integer, got {min_count!r}")
        if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool)):
            raise UsageError(f"vocabulary 'max_size' must be an integer or null, got {max_size!r}")
        return cls(tokens[len(SPECIAL_TOKENS):], min_count=min_count, max_size=max_size)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON of `to_dict` atomically (vidcap.atomic)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        path = Path(path)
        try:
            with path.open(encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise UsageError(f"{path}: vocabulary file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(f"{path}: cannot read vocabulary: {error}") from None
        try:
            return cls.from_dict(data)
        except UsageError as error:
            raise UsageError(f"{path}: {error}") from None
