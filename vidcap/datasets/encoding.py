"""The text encodings annotation files and prepared tables may come in: UTF-8 with or without a byte-order mark,
UTF-16 and UTF-32 with one (what Windows tools write as "Unicode"); UTF-16 without a byte-order mark is refused with
a line saying so, never read as garbage."""

from __future__ import annotations

import codecs
import os

from vidcap.errors import UsageError

# Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32", "utf-32"),
    (codecs.BOM_UTF32_BE, "UTF-32", "utf-32"),
    (codecs.BOM_UTF8, "UTF-8", "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "UTF-16", "utf-16"),
    (codecs.BOM_UTF16_BE, "UTF-16", "utf-16"),
)


def _looks_like_utf16(data: bytes) -> bool:
    """Text of mostly ASCII characters in UTF-16 has a NUL in every other byte."""
    head = data[:400]
    if len(head) < 4:
        return False
    even, odd = head[0::2], head[1::2]
    return max(even.count(0) / len(even), odd.count(0) / len(odd)) > 0.6


def decode_text(path: str | os.PathLike, data: bytes, errors: str = "strict") -> tuple[str, str]:
    """(text, the encoding found) of a file's bytes. UTF-8 (a BOM dropped), or UTF-16/32 with a BOM. UsageError
    naming the encoding for UTF-16 without a BOM, or for a UTF-16/32 file that does not decode; UnicodeDecodeError
    for other bytes that are not UTF-8 when errors="strict" (callers choose to replace or refuse)."""
    for bom, name, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec), name
            except UnicodeDecodeError as error:
                if name == "UTF-8" and errors != "strict":
                    return data.decode(codec, errors=errors), name
                if name == "UTF-8":
                    raise
                raise UsageError(f"{path}: starts with a {name} byte-order mark but is not valid {name} "
                                 f"({error.reason} at byte {error.start}); save it as UTF-8") from None
    if _looks_like_utf16(data):
        raise UsageError(f"{path}: looks like UTF-16 text without a byte-order mark; save it as UTF-8 (or UTF-16 "
                         "with a byte-order mark)")
    return data.decode("utf-8", errors=errors), "UTF-8"
