"""Caption tokenisation and the word vocabulary.

`tokenize` reproduces, in pure Python, what coco-caption does to every caption before scoring: Stanford's
PTBTokenizer (CoreNLP 3.4.1, `-preserveLines -lowerCase`) followed by the removal of the punctuation tokens in
`PUNCTUATIONS`. Training on the same tokens the metrics see keeps the vocabulary, the perplexity and the scores
consistent. Quirks of that tokenizer are kept on purpose: brackets survive as `-lrb-`, `-rsb-`, ... (coco only
removes the upper-case forms, but the tokenizer lower-cases them first), contractions split (`don't` -> `do n't`,
`cannot` -> `can not`, `gonna` -> `gon na`), abbreviations keep their period (`mr.`, `u.s.`).

The scanner below emulates the JFlex lexer: at each position every rule is tried, the longest match wins
(trailing context counts towards the length, as in JFlex), ties go to the earlier rule.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from vidcap.errors import UsageError

log = logging.getLogger(__name__)

# coco-caption's list (pycocoevalcap/tokenizer/ptbtokenizer.py): tokens dropped after PTB tokenisation.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# --------------------------------------------------------------------------------------------------------------
# Character classes. JFlex's %caseless does not reach inside character classes, so classes stay case-sensitive
# here too and only literal words are wrapped in (?i:...).
# Python's \w also matches "other numbers" (superscripts, vulgar fractions, circled digits): not letters in Java.
_LETTER = (
    r"(?:[^\W\d_\u00B2\u00B3\u00B9\u00BC-\u00BE\u2070-\u209F\u2150-\u218F\u2460-\u24FF\u2776-\u2793]"
    r"|[\u00AD\u0300-\u036F])"
)
_DIGIT = r"\d"
_ALNUM = rf"(?:{_LETTER}|{_DIGIT})"
_SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
_NEWLINE = r"(?:\r\n|[\r\n\u2028\u2029\u000B\u000C\u0085])"
_SPACENL = rf"(?:{_SPACE}|{_NEWLINE})"
_APOS = r"(?:['\u0092\u2019]|&apos;)"
_APOSETC = r"(?:['\u0092\u2019`\u0091\u2018\u201B]|&apos;)"
_SGML_NAME = r"[A-Za-z][A-Za-z0-9_:.-]*"
_SGML_ATTR = rf"{_SGML_NAME}(?:[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\"|{_SGML_NAME}))?"
_SGML = rf"<(?:[!?][A-Za-z-][^>\r\n]*|{_SGML_NAME}(?:[ ]+{_SGML_ATTR})*[ ]*/?|/{_SGML_NAME})[ ]*>"
# What may follow a sentence-final abbreviation (end of the caption included).
_SENTEND = rf"{_SPACENL}(?:{_SPACENL}|[A-Z]|{_SGML})|{_SPACENL}?$"
# coco-caption puts every caption on its own line: the end of a caption reads like a newline.
_BREAK = rf"(?:{_SPACENL}|$)"

_WORD = rf"{_LETTER}{_ALNUM}*(?:[.!?]{_LETTER}{_ALNUM}*)*"
_REDAUX = rf"{_APOS}(?i:[msd]|re|ve|ll)"
_SWORD = r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"
_SREDAUX = rf"(?i:n){_APOSETC}(?i:t)"
_HYPHEN = r"[-_\u058A\u2010\u2011]"
_THING_PART = rf"(?:[dDoOlL]{_APOSETC}{_ALNUM})?{_ALNUM}+"
_THING = rf"{_THING_PART}(?:{_HYPHEN}{_THING_PART})*"
_NUM_A = rf"{_DIGIT}+"
_NUM_B = rf"{_DIGIT}*(?:[.:,\u00AD\u066B\u066C]{_DIGIT}+)+"
_ACRO = r"(?:[A-Za-z](?:\.[A-Za-z])+|(?i:(?:canada|sino|korean|eu|japan|non)-u\.s|u\.s\.-(?:u\.k|u\.s\.s\.r)))"
_HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:{_ACRO}\.|[A-Za-z0-9\u00AD]+))+"
_INSENTP = r"[,;:]"
_THINGA = r"[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+"

# Abbreviations (literal words, matched caselessly). ABBREV1 may end a sentence, ABBREV2 normally does not.
_ABMONTH = "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
_ABDAYS = "mon|tue|tues|wed|thu|thurs|fri"
_ABSTATE = (
    "ala|ariz|ark|calif|colo|conn|dak|del|fla|ga|ill|ind|kans?|ky|la|mass|md|mich|minn|miss|mo|mont|neb|nev|"
    "okla|ore|pa|penn|tenn|tex|va|vt|wash|wisc?|wyo"
)
_ABCOMP = "inc|cos?|corp|pp?tys?|ltd|plc|bancorp|dept|bhd|assn|univ|intl|sys"
_ABNUM = "nos?|prop|ph|tel|est|ext|sq|ft"
_ABPTIT = r"jr|sr|bros|(?:ed|ph)\.d|blvd|rd|esq"
_ABBREV1 = rf"(?i:{_ABMONTH}|{_ABDAYS}|{_ABSTATE}|{_ABCOMP}|{_ABNUM}|{_ABPTIT}|etc|al|seq)\."
_ABTITLE = (
    "mr|mrs|ms|miss|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|mt|capt|ste?|"
    "ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det"
)
_ABBREV4 = (r"[A-Za-z]", rf"(?i:{_ABTITLE}|vs|alex|wm|jos|cie|a\.k\.a|cf|treas|invt|elec|natl|m[ft]g)", _ACRO)
# An acronym before one of these (case-sensitive) words ends a sentence.
_SENT_STARTERS = (
    "About|According|Additionally|After|An|A|As|At|But|Earlier|He|Her|Here|However|If|In|It|Last|Many|More|"
    r"Mr\.|Ms\.|Now|Once|One|Other|Our|She|Since|So|Some|Such|That|The|Then|There|These|They|This|We|When|While|"
    "What|Yet|You"
)

_MISCSYMBOL = (
    "[\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0\u05C3\u05C6\u05F3"
    "\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D\u0703-\u070D\u07F6-\u07F8\u0964\u0965"
    "\u0E4F\u2020-\u2023\u2032-\u2038\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u22FF"
    "\u2300-\u23FF\u2600-\u26FF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]"
)


def _quotes(text: str, probably_left: bool) -> str:
    """PTB "latex" quotes: ASCII quotes by position, curly ones by shape."""
    if probably_left:
        text = re.sub(r"&apos;|'", "`", text)
        text = re.sub(r'"|&quot;', "``", text)
    else:
        text = re.sub(r"&apos;|'", "'", text)
        text = re.sub(r'"|&quot;', "''", text)
    text = re.sub("[\u0091\u2018\u201B\u2039]", "`", text)
    text = re.sub("[\u0092\u2019\u203A]", "'", text)
    text = re.sub("[\u0093\u201C\u00AB]", "``", text)
    return re.sub("[\u0094\u201D\u00BB]", "''", text)


_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3"}
_CURRENCY = {"\u00A2": "cents", "\u00A3": "#", "\u0080": "$", "\u00A4": "$", "\u20A0": "$", "\u20AC": "$"}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "{": "-LCB-", "}": "-RCB-", "[": "-LSB-", "]": "-RSB-"}


def _same(text: str) -> str:
    return text


def _brackets(text: str) -> str:
    # Round brackets inside a token (smileys, phone numbers) are escaped as well.
    return text.replace("(", "-LRB-").replace(")", "-RRB-")


def _nbsp(text: str) -> str:
    # Tokens that may contain a space (fractions, phone numbers) get a non-breaking one instead.
    return text.replace(" ", "\u00A0")


def _amp(text: str) -> str:
    return re.sub("(?i)&amp;", "&", text)


def _hyphens(text: str) -> str:
    return "--" if 3 <= len(text) <= 4 else text


def _entity(text: str) -> str:
    return {"&amp;": "&", "&lt;": "<", "&gt;": ">"}.get(text.lower(), text)


try:  # the regex parser, used only to find which rules can start with a given character
    import re._parser as _sre_parse
except ImportError:  # Python 3.10
    import sre_parse as _sre_parse  # type: ignore[no-redef]

_CATEGORY_TESTS = {
    "CATEGORY_DIGIT": re.compile(r"\d"),
    "CATEGORY_NOT_DIGIT": re.compile(r"\D"),
    "CATEGORY_WORD": re.compile(r"\w"),
    "CATEGORY_NOT_WORD": re.compile(r"\W"),
    "CATEGORY_SPACE": re.compile(r"\s"),
    "CATEGORY_NOT_SPACE": re.compile(r"\S"),
}


def _in_class(items: list, char: str, icase: bool) -> bool:
    negate = bool(items) and str(items[0][0]) == "NEGATE"
    if negate and icase:
        return True  # too subtle to decide: say the rule may apply
    candidates = {char, char.lower(), char.upper()} if icase else {char}
    found = False
    for op, arg in items[1:] if negate else items:
        kind = str(op)
        if kind == "LITERAL":
            found = chr(arg) in candidates
        elif kind == "RANGE":
            found = any(arg[0] <= ord(c) <= arg[1] for c in candidates)
        elif kind == "CATEGORY":
            found = any(_CATEGORY_TESTS[str(arg)].match(c) for c in candidates)
        else:
            return True
        if found:
            break
    return found != negate


def _may_start(items, char: str, icase: bool) -> tuple[bool, bool]:
    """(can the parsed pattern `items` match text starting with `char`, can it match the empty string)."""
    for op, arg in items:
        kind = str(op)
        nullable = False
        if kind == "LITERAL":
            ok = chr(arg) == char or (icase and chr(arg).lower() == char.lower())
        elif kind in ("NOT_LITERAL", "ANY"):
            ok = True
        elif kind == "IN":
            ok = _in_class(arg, char, icase)
        elif kind == "SUBPATTERN":
            _, add_flags, del_flags, sub = arg
            sub_icase = (icase or bool(add_flags & re.IGNORECASE)) and not del_flags & re.IGNORECASE
            ok, nullable = _may_start(sub, char, sub_icase)
        elif kind == "BRANCH":
            results = [_may_start(branch, char, icase) for branch in arg[1]]
            ok, nullable = any(r[0] for r in results), any(r[1] for r in results)
        elif kind in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            ok, nullable = _may_start(arg[2], char, icase)
            nullable = nullable or arg[0] == 0
        elif kind in ("AT", "ASSERT", "ASSERT_NOT"):
            ok, nullable = False, True  # zero width: look at what follows
        else:
            return True, False  # an unknown construct: the rule may apply
        if ok:
            return True, False
        if not nullable:
            return False, False
    return False, True


class _Rule:
    """One lexer rule: `pattern`, optional trailing context `ahead`, and how to turn the match into a token.

    `split` (optional, JFlex's yypushback) maps the matched text to (token text, number of characters consumed);
    by default the whole match is both.
    """

    __slots__ = ("regex", "emit", "split", "_tree")

    def __init__(
        self,
        pattern: str,
        emit: Callable[[str], str] = _same,
        ahead: str | None = None,
        split: Callable[[str], tuple[str, int]] | None = None,
    ) -> None:
        full = f"(?P<main>{pattern})" + (f"(?:{ahead})" if ahead is not None else "")
        self.regex = re.compile(full)
        self.emit = emit
        self.split = split
        self._tree = _sre_parse.parse(full)

    def may_start(self, char: str) -> bool:
        try:
            return _may_start(list(self._tree), char, False)[0]
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return True  # the private parse tree changed shape: just try the rule


def _prefix(n: int) -> Callable[[str], tuple[str, int]]:
    """Emit the first `n` characters (n < 0: all but the last -n) and read the rest again."""
    return lambda text: (text[:n], len(text[:n]))


def _reread_period(text: str) -> tuple[str, int]:
    # "etc." ending a sentence is "etc." and then the same period again as a full stop.
    return text, len(text) - 1


def _acronym(text: str) -> tuple[str, int]:
    # Before a sentence start, "A." is the letter and a full stop, "U.S." is "U.S." and a full stop.
    return (text[:1], 1) if len(text) == 2 else _reread_period(text)


def _alts(*patterns: str, **kwargs: Any) -> list[_Rule]:
    """Top-level alternatives as separate rules of equal priority, so the longest alternative wins."""
    return [_Rule(p, **kwargs) for p in patterns]


_RULES: list[_Rule] = [
    _Rule(r"(?i:cannot)", split=_prefix(3)),
    _Rule(r"(?i:gonna|gotta|wanna|lemme|gimme)", split=_prefix(-2)),
    _Rule(rf"{_APOS}(?i:tis)", split=_prefix(-2)),
    _Rule(rf"{_APOS}(?i:twas)", split=_prefix(-3)),
    _Rule(_SGML),
    _Rule(r"&(?i:md|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", emit=lambda t: "--"),
    _Rule(r"(?i:&amp;)", emit=lambda t: "&"),
    _Rule(r"&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);"),
    _Rule(_WORD, ahead=_REDAUX),
    _Rule(_SWORD, ahead=_SREDAUX),
    _Rule(_WORD),
    *_alts(
        rf"{_APOS}(?i:n){_APOS}?",
        rf"[lLdDjJ]{_APOS}",
        rf"(?i:dunkin|somethin|ol){_APOS}",
        rf"{_APOS}(?i:em)",
        rf"[A-HJ-XZn]{_APOSETC}{_LETTER}{{2,}}",
        rf"{_APOS}[2-9]0(?i:s)",
        rf"{_APOS}(?i:till?)",
        rf"{_LETTER}+[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_LETTER}*",
        rf"{_APOS}(?i:cause)",
        r"(?i:cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)",
    ),
    _Rule(rf"(?i:y){_APOS}", ahead=_LETTER),
    _Rule(r"(?i:https?)://[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},-]"),
    _Rule(
        r"(?:(?:(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})"
        r"|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+(?i:com|net|org|edu)))"
        r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"
    ),
    _Rule(
        r"(?:(?i:&lt;)|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|(){}\u00A0]*@(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*"
        r"[^ \t\n\f\r\"<>|(){}.\u00A0]+(?:(?i:&gt;)|>)?"
    ),
    _Rule(r"@[a-zA-Z_][a-zA-Z_0-9]*"),
    _Rule(rf"#{_LETTER}+"),
    _Rule(_REDAUX, ahead=r"[^A-Za-z]|$", emit=lambda t: _quotes(t, False)),
    _Rule(_SREDAUX, emit=lambda t: _quotes(t, False)),
    _Rule(rf"{_DIGIT}{{1,2}}[-/]{_DIGIT}{{1,2}}[-/]{_DIGIT}{{2,4}}"),
    *_alts(rf"[-+]?{_NUM_A}", rf"[-+]?{_NUM_B}"),
    _Rule(r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)"),
    _Rule(rf"(?:{_DIGIT}{{1,4}}[- \u00A0])?{_DIGIT}{{1,4}}(?:\\?/|\u2044){_DIGIT}{{1,4}}", emit=_nbsp),
    _Rule(r"[\u00BC\u00BD\u00BE\u2153-\u215E]", emit=lambda t: _FRACTIONS.get(t, t)),
    _Rule(
        rf"(?i:-(?:rrb|lrb|rcb|lcb|rsb|lsb)-|c\.d\.s|pro-|anti-|s(?:&|&amp;)p-500|s(?:&|&amp;)ls|cap{_APOS}n"
        rf"|c{_APOS}est)",
        emit=_amp,
    ),
    _Rule(r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"),
    _Rule(r"[A-Z]*\$|#"),
    _Rule(
        "[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]",
        emit=lambda t: _CURRENCY.get(t, t),
    ),
    *_alts(
        rf"{_ACRO}\.", r"[A-Za-z]\.", ahead=rf"{_SPACE}+(?:{_SENT_STARTERS}|{_SGML}){_BREAK}", split=_acronym
    ),
    _Rule(_ABBREV1, ahead=_SENTEND, split=_reread_period),
    _Rule(_ABBREV1),
    *_alts(*(rf"{a}\." for a in _ABBREV4)),
    *_alts(*_ABBREV4, ahead=_SPACE),
    _Rule(_ACRO, ahead=_BREAK),
    _Rule(rf"{_APOS}[0-9][0-9]", ahead=_BREAK),
    _Rule(rf"{_WORD}\.", ahead=_INSENTP),
    _Rule(r"(?:\([0-9]{3}\)[ \u00A0]?|[0-9]{3}[- \u00A0.])[0-9]{3}[- \u00A0.][0-9]{4}", emit=lambda t: _brackets(_nbsp(t))),
    _Rule(r'"|(?i:&quot;)', ahead=r"[A-Za-z0-9$]", emit=lambda t: _quotes(t, True)),
    _Rule(r'"|(?i:&quot;)', emit=lambda t: _quotes(t, False)),
    _Rule(
        r"[<>]?[:;=][-o*']?[()DPdpO\\{@|\[\]]",
        ahead=r"(?![A-Za-z0-9])",
        emit=_brackets,
    ),
    *_alts(
        r"[\^x=~<>]\.\[\^x=~<>]",
        r"[-^x=~<>']_[-^x=~<>']",
        r"\([-^x=~<>'][_.]?[-^x=~<>']\)",
        emit=_brackets,
    ),
    _Rule(r"[+%&\u2030\u2031~^|\\]"),
    _Rule(r"<<|>>"),
    _Rule(r"[<>]|(?i:&lt;|&gt;)", emit=_entity),
    _Rule(r"[{}()\[\]]", emit=lambda t: _BRACKETS[t]),
    _Rule(r"-+", emit=_hyphens),
    *_alts(r"\.{3,5}", r"(?:\.[ \u00A0]){2,4}\.", r"[\u0085\u2026]", emit=lambda t: "..."),
    _Rule(r"@+|#+|_+"),
    *_alts(r"\*+", r"(?:\\\*){1,3}"),
    _Rule(_INSENTP),
    _Rule(r"[?!]+"),
    _Rule("[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA]"),
    _Rule(r"="),
    _Rule(r"/"),
    _Rule(rf"{_HTHING}\.", ahead=_INSENTP),
    _Rule(_HTHING),
    _Rule(rf"{_THING}\.", ahead=_INSENTP, emit=lambda t: _quotes(t, False)),
    _Rule(_THING, emit=lambda t: _quotes(t, False)),
    _Rule(rf"{_THINGA}\.", ahead=_INSENTP, emit=_amp),
    _Rule(_THINGA, emit=_amp),
    _Rule(r"'", ahead=r"[A-Za-z][^ \t\n\r\u00A0]", emit=lambda t: _quotes(t, True)),
    _Rule(_REDAUX, emit=lambda t: _quotes(t, False)),
    *_alts(
        _APOS,
        "''",
        "[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}",
        emit=lambda t: _quotes(t, False),
    ),
    _Rule(_MISCSYMBOL),
]

_SKIP = re.compile(rf"(?:{_SPACENL}|[\u0000\u200B\u200E\u200F\uFEFF])+")
# Fast path: most caption words are ASCII letters, maybe with one punctuation mark, then a space or the end.
# No rule can do anything else with them, except abbreviations ("mr.", "etc.", "a.") handled by the full scan.
_PLAIN_WORD = re.compile(r"([A-Za-z]+)([.,;:!?]?)(?=[ \t]|$)")
# Words of ASCII letters each followed by a space: no rule spans them, so they are tokens as they are.
_PLAIN_RUN = re.compile(r"(?:[A-Za-z]+[ \t]+)+")
_SPLIT_PLAIN = {"cannot": 3, "gonna": 3, "gotta": 3, "wanna": 3, "lemme": 3, "gimme": 3}
# first character -> the rules that can match text starting with it (filled lazily)
_RULES_BY_CHAR: dict[str, tuple[_Rule, ...]] = {}
_ABBREVIATION = re.compile(rf"{_ABBREV1}|(?:{'|'.join(_ABBREV4)})\.")


def _scan(text: str, pos: int) -> tuple[str | None, int]:
    """The token starting at `pos` (None for a deleted character) and the number of characters it consumed."""
    plain = _PLAIN_WORD.match(text, pos)
    if plain:
        word, mark = plain.groups()
        cut = _SPLIT_PLAIN.get(word.lower())
        if cut is not None:
            return word[:cut], cut
        if mark != "." or (len(word) > 1 and not _ABBREVIATION.fullmatch(word + ".")):
            return word, len(word)
    rules = _RULES_BY_CHAR.get(text[pos])
    if rules is None:
        rules = _RULES_BY_CHAR[text[pos]] = tuple(rule for rule in _RULES if rule.may_start(text[pos]))
    best_len, best_rule, best_match = 0, None, None
    for rule in rules:
        match = rule.regex.match(text, pos)
        if match is not None and match.end() - pos > best_len:
            best_len, best_rule, best_match = match.end() - pos, rule, match
    if best_rule is None:
        return None, 1  # an untokenizable character (emoji, control): PTBTokenizer deletes it
    main = best_match.group("main")
    consumed = len(main)
    if best_rule.split is not None:
        main, consumed = best_rule.split(main)
    return best_rule.emit(main), consumed


def ptb_tokens(text: str) -> list[str]:
    """Stanford PTBTokenizer tokens of one line (no lower-casing, no punctuation removal)."""
    text = text.replace("\r\n", " ").replace("\n", " ")
    tokens: list[str] = []
    pos, end = 0, len(text)
    while pos < end:
        skip = _SKIP.match(text, pos)
        if skip:
            pos = skip.end()
            continue
        run = _PLAIN_RUN.match(text, pos)
        if run:
            for word in run.group().split():
                cut = _SPLIT_PLAIN.get(word.lower())
                tokens.extend((word,) if cut is None else (word[:cut], word[cut:]))
            pos = run.end()
            continue
        token, consumed = _scan(text, pos)
        if token is not None:
            tokens.append(token)
        pos += consumed
    return tokens


@functools.lru_cache(maxsize=1 << 16)
def _tokenize_cached(text: str) -> tuple[str, ...]:
    # coco-caption joins the tokens with spaces and splits the line on spaces again: a token that kept a space
    # (an SGML tag such as "<a href=x>") becomes several words there, so it does here too.
    words = " ".join(ptb_tokens(text)).lower().split(" ")
    return tuple(w for w in words if w and w not in PUNCTUATIONS)


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens of `text`, exactly as coco-caption scores them (PTB tokens minus punctuation).

    One known difference: coco tokenizes all captions as one file, so a caption ending in a single letter and a
    period ("... plan b.") loses that period there when the *next* caption starts with a word like "The".
    """
    return list(_tokenize_cached(text))


# --------------------------------------------------------------------------------------------------------------
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
VOCAB_FORMAT = 1


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
    def build(cls, captions: Iterable[str], min_count: int = 2, max_size: int | None = None) -> Vocabulary:
        """Vocabulary of the words seen at least `min_count` times in `captions` (train split only!).

        `max_size` caps V, the total size including the 4 special tokens. Ties in count are broken
        alphabetically so that the same captions always give the same ids.
        """
        if min_count < 1:
            raise UsageError(f"min_count must be at least 1, got {min_count}")
        if max_size is not None and max_size <= len(SPECIAL_TOKENS):
            raise UsageError(f"max_size must be more than {len(SPECIAL_TOKENS)} (the special tokens), got {max_size}")
        counts: Counter[str] = Counter()
        for caption in captions:
            counts.update(tokenize(caption))
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

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """Ids (L,) of `text`'s tokens followed by EOS, no BOS. `max_len` truncates to L <= max_len, EOS kept."""
        ids = [self.stoi.get(token, self.UNK) for token in tokenize(text)]
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
        """Write JSON to a temp file next to `path`, then rename it into place."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.to_dict(), handle, ensure_ascii=False, indent=1)
                handle.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

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
