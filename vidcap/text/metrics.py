"""Caption metrics exactly as coco-caption computes them, without its traps; and perplexity.

`score_captions` gives the numbers every video-captioning paper reports: pycocoevalcap's PTB tokenizer, then
BLEU-1..4 (corpus level), METEOR 1.5 (`-l en -norm`), ROUGE-L and CIDEr (coco's CIDEr is CIDEr-D). The scorer
classes are pycocoevalcap's own; only the two Java steps are driven from here, because the stock wrappers:

- write the tokenizer's temp file into the installed package folder (fails on a read-only install): here it goes
  to a temporary directory, with the same java command and the same post-processing;
- desynchronise on captions holding line breaks (the tokenizer splits `\\r`, `\\v`, `\\f`, U+2028... into extra
  lines and then pairs captions with the wrong video ids; METEOR's line protocol reads the wrong answer, raises
  ValueError and then deadlocks at exit on the lock it never released): captions are cleaned first
  (`line_safe_caption`);
- start METEOR's JVM in `Meteor.__init__` and stop it only in `__del__`: here one JVM is started per evaluation,
  fed, and always closed (stdin closed, waited for, killed on error or time-out);
- inherit the user's locale (decimal commas break METEOR's number parsing, Turkish `I` lower-cases to `ı`): Java
  runs with `-Duser.language=en -Duser.country=US`.

On clean input the numbers are identical to calling pycocoevalcap directly (tests/test_metrics.py checks this and
published reference values).
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import tempfile
import threading
import time
import unicodedata
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as _coco_meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer as _coco_ptb

from vidcap.errors import UsageError

log = logging.getLogger(__name__)

METRIC_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
# The one table of metric names: coco-caption's key (score_captions, metrics.json) -> the name training logs it under
# (val/<name>, test/<name>). The first four are computed from captions, perplexity from the references' likelihood.
LOGGED_NAMES = {"Bleu_4": "BLEU4", "METEOR": "METEOR", "ROUGE_L": "ROUGE_L", "CIDEr": "CIDEr", "perplexity": "ppl"}
CAPTION_METRICS = ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr")

TOKENIZER_JAR = Path(_coco_ptb.__file__).resolve().parent / _coco_ptb.STANFORD_CORENLP_3_4_1_JAR
METEOR_DIR = Path(_coco_meteor.__file__).resolve().parent
METEOR_JAR = METEOR_DIR / _coco_meteor.METEOR_JAR
# The tokens coco-caption drops after tokenising (its own list, so the numbers stay identical).
PUNCTUATIONS = frozenset(_coco_ptb.PUNCTUATIONS)

# English locale: METEOR prints and parses numbers with the JVM's locale, and PTBTokenizer's -lowerCase uses it.
JAVA_LOCALE = ("-Duser.language=en", "-Duser.country=US", "-Dfile.encoding=UTF-8")
METEOR_HEAP = "-Xmx2G"  # as coco-caption: the paraphrase table needs about 1 GB

_MAX_NAMED = 5  # ids listed in an error message


def line_safe_caption(text: str) -> str:
    """Make a caption safe for the line-based Java tools, changing nothing else.

    Control characters (newlines, tabs, `\\r`, `\\v`, `\\f`, NEL...), the Unicode line and paragraph separators and
    lone surrogates become a space: the PTB tokenizer would read a line break as a new caption (or fail to encode),
    METEOR as a new request. Whitespace is not tokenised, so clean captions score exactly as before.
    """
    if text.isprintable() and text.isascii():
        return text
    return "".join(" " if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") else ch for ch in text)


def find_java() -> str:
    """The `java` executable on PATH; UsageError saying how to install it when there is none."""
    java = shutil.which("java")
    if java is None:
        # The Makefile's `java` target says the same.
        raise UsageError(
            "Java not found. METEOR and the PTB tokenizer (coco-caption) run on Java. Debian/Ubuntu: sudo apt-get "
            "install -y default-jre-headless; macOS: brew install openjdk; conda: conda install -c conda-forge openjdk"
        )
    return java


def _stderr_tail(data: bytes, limit: int = 300) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:limit] if lines else "no message"


def _start(cmd: list[str], what: str, **kwargs) -> subprocess.Popen:
    try:
        return subprocess.Popen(cmd, **kwargs)
    except OSError as error:  # java vanished or is not executable
        raise UsageError(f"cannot start {what} ({cmd[0]}): {error.strerror or error}") from error


def _reap(proc: subprocess.Popen, graceful: bool = True) -> None:
    """Make sure `proc` is gone: close its stdin and give it a moment to exit (graceful), else kill it; always wait
    (no zombie left)."""
    if proc.poll() is None and not graceful:
        proc.kill()
    if proc.poll() is None:
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:  # broken pipe: it is exiting anyway
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None and not stream.closed:
            try:
                stream.close()
            except OSError:
                pass


def ptb_tokenize(
    captions: Mapping[Hashable, Sequence[str]], java: str | None = None, timeout: float = 600.0
) -> dict[Hashable, list[str]]:
    """pycocoevalcap's PTBTokenizer.tokenize on `{id: [caption, ...]}` -> `{id: [tokenized caption, ...]}`.

    The same java command and post-processing (lower-case, punctuation tokens dropped), but the temp file lives in a
    temporary directory, captions are cleaned first (`line_safe_caption`) and the line count is checked, so a caption
    can never shift its neighbours onto the wrong id.
    """
    return _ptb_tokenize_many([captions], java or find_java(), timeout)[0]


def _ptb_tokenize_many(
    groups: Sequence[Mapping[Hashable, Sequence[str]]], java: str, timeout: float
) -> list[dict[Hashable, list[str]]]:
    """Tokenise several caption dicts, one JVM each, all running at the same time (coco tokenises gts and res
    separately; doing the same keeps the numbers identical)."""
    with tempfile.TemporaryDirectory(prefix="vidcap-ptb-") as tmp:
        procs: list[subprocess.Popen | None] = []
        lines_per_group: list[list[str]] = []
        try:
            for index, group in enumerate(groups):
                lines = [line_safe_caption(caption) for captions in group.values() for caption in captions]
                lines_per_group.append(lines)
                if not lines:
                    procs.append(None)
                    continue
                path = Path(tmp) / f"captions{index}.txt"
                path.write_bytes("\n".join(lines).encode("utf-8"))
                cmd = [java, *JAVA_LOCALE, "-cp", str(TOKENIZER_JAR), "edu.stanford.nlp.process.PTBTokenizer",
                       "-preserveLines", "-lowerCase", str(path)]
                procs.append(_start(cmd, "the PTB tokenizer", cwd=tmp, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            deadline = time.monotonic() + timeout
            results = []
            for group, lines, proc in zip(groups, lines_per_group, procs, strict=True):
                out = b""
                if proc is not None:
                    try:
                        out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
                    except subprocess.TimeoutExpired:
                        raise RuntimeError(f"the PTB tokenizer (java) did not finish within {timeout:g} s") from None
                    if proc.returncode != 0:
                        raise UsageError(
                            f"the PTB tokenizer (java) failed with exit code {proc.returncode}: {_stderr_tail(err)}"
                        )
                    if err:
                        log.debug("PTBTokenizer: %s", _stderr_tail(err))
                results.append(_parse_tokenized(group, lines, out))
            return results
        finally:
            for proc in procs:
                if proc is not None:
                    _reap(proc, graceful=False)  # finished ones are just closed; the others are killed


def _parse_tokenized(group: Mapping, lines: list[str], out: bytes) -> dict[Hashable, list[str]]:
    if not lines:
        return {key: [] for key in group}
    token_lines = out.decode("utf-8", "replace").split("\n")
    # With -preserveLines the output keeps every line break of the input: one line per caption, always.
    if len(token_lines) != len(lines):
        raise RuntimeError(f"the PTB tokenizer returned {len(token_lines)} lines for {len(lines)} captions")
    tokenized: dict[Hashable, list[str]] = {key: [] for key in group}
    keys = (key for key, captions in group.items() for _ in captions)
    for key, line in zip(keys, token_lines, strict=True):
        caption = " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
        # PTB splits "|||" into "| | |"; a token that still holds it would split a METEOR request.
        tokenized[key].append(caption.replace("|||", "| | |"))
    return tokenized


class MeteorProcess:
    """One METEOR 1.5 JVM (`-stdio -l en -norm`, coco-caption's settings), always cleaned up.

    Use as a context manager. `start_scoring(gts, res)` runs coco's protocol (one `SCORE` line per video, then one
    `EVAL` line with all statistics) in a background thread so that the other metrics can be computed meanwhile;
    `result()` waits for it. Any error or time-out kills the JVM, which also unblocks the thread.
    """

    def __init__(self, java: str | None = None, timeout: float = 600.0):
        self.timeout = timeout
        self.cmd = [java or find_java(), METEOR_HEAP, *JAVA_LOCALE, "-jar", str(METEOR_JAR),
                    "-", "-", "-stdio", "-l", "en", "-norm"]
        # stderr goes to a file: a pipe nobody reads could fill up and block the JVM.
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = _start(self.cmd, "METEOR", cwd=METEOR_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=self._stderr)
        except BaseException:
            self._stderr.close()
            raise
        self._thread: threading.Thread | None = None
        self._score: float | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> MeteorProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the JVM and reap it: after a completed evaluation EOF on stdin ends METEOR's loop (killed if it
        lingers); otherwise (an error, an interrupt, still loading) it is killed at once."""
        _reap(self.proc, graceful=self._score is not None)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._stderr.close()

    def _java_error(self) -> str:
        self._stderr.seek(0)
        return _stderr_tail(self._stderr.read())

    def _readline(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise UsageError(f"METEOR (java) exited with code {self.proc.returncode}: {self._java_error()}")
        return line.decode("utf-8", "replace").strip()

    def _send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line.encode("utf-8") + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.proc.wait()
            raise UsageError(f"METEOR (java) exited with code {self.proc.returncode}: {self._java_error()}") from None

    def _protocol(self, gts: Mapping, res: Mapping) -> float:
        # Identical to pycocoevalcap.meteor.Meteor.compute_score / _stat.
        stats = []
        for key in gts:
            hypothesis = res[key][0].replace("|||", "").replace("  ", " ")
            self._send(" ||| ".join(("SCORE", " ||| ".join(gts[key]), hypothesis)))
            stat = self._readline()
            try:
                [float(x) for x in stat.split()]
            except ValueError:
                raise RuntimeError(f"METEOR answered {stat[:80]!r} to a SCORE request (protocol out of step)") from None
            stats.append(stat)
        self._send("EVAL" + "".join(f" ||| {stat}" for stat in stats))
        for _ in stats:  # one score per video, then the corpus score
            self._readline()
        answer = self._readline()
        try:
            return float(answer)
        except ValueError:
            raise RuntimeError(f"METEOR answered {answer[:80]!r} to EVAL (protocol out of step)") from None

    def start_scoring(self, gts: Mapping[Hashable, list[str]], res: Mapping[Hashable, list[str]]) -> None:
        """Begin scoring tokenised `gts` `{id: [ref, ...]}` against `res` `{id: [hyp]}` in the background."""

        def work():
            try:
                self._score = self._protocol(gts, res)
            except BaseException as error:  # handed to result() in the caller's thread
                self._error = error

        self._thread = threading.Thread(target=work, name="meteor", daemon=True)
        self._thread.start()

    def result(self) -> float:
        """The corpus METEOR score of `start_scoring`; kills the JVM on time-out and re-raises its errors."""
        assert self._thread is not None, "start_scoring first"
        self._thread.join(self.timeout)
        if self._thread.is_alive():
            self.proc.kill()
            self._thread.join(5)
            raise RuntimeError(f"METEOR did not answer within {self.timeout:g} s")
        if self._error is not None:
            raise self._error
        return self._score


def _describe(ids: list) -> str:
    shown = ", ".join(repr(i) for i in ids[:_MAX_NAMED])
    return shown + (f" and {len(ids) - _MAX_NAMED} more" if len(ids) > _MAX_NAMED else "")


class InputError(UsageError):
    """A UsageError of `check_inputs`; `side` is "references" or "predictions", the input at fault."""

    def __init__(self, side: str, message: str):
        super().__init__(message)
        self.side = side


def check_inputs(references: Mapping, predictions: Mapping) -> list:
    """Validate references `{id: [str, ...]}` and predictions `{id: str}`; the sorted ids. InputError (a UsageError)
    names the offending ids: missing on either side, no references, values that are not strings."""
    if not isinstance(references, Mapping):
        raise InputError("references", 'expected an object {"video_id": ["caption", ...]}, '
                                       f"got {type(references).__name__}")
    if not isinstance(predictions, Mapping):
        raise InputError("predictions", f'expected an object {{"video_id": "caption"}}, got {type(predictions).__name__}')
    bad = [i for i, refs in references.items()
           if isinstance(refs, str) or not isinstance(refs, Sequence) or not all(isinstance(r, str) for r in refs)]
    if bad:
        raise InputError("references", f"references must be lists of strings; not for ids {_describe(bad)}")
    empty = [i for i, refs in references.items() if len(refs) == 0]
    if empty:
        raise InputError("references", f"empty reference list for {len(empty)} video ids: {_describe(empty)}")
    bad = [i for i, caption in predictions.items() if not isinstance(caption, str)]
    if bad:
        raise InputError("predictions", f"predictions must be strings; not for ids {_describe(bad)}")
    missing = [i for i in references if i not in predictions]
    if missing:
        raise InputError("predictions",
                         f"no prediction for {len(missing)} video ids that have references: {_describe(missing)}")
    extra = [i for i in predictions if i not in references]
    if extra:
        raise InputError("predictions", f"no references for {len(extra)} predicted video ids: {_describe(extra)}")
    if not references:
        raise InputError("references", "nothing to score: no video ids")
    return sorted(references, key=str)


def score_captions(
    references: Mapping[str, Sequence[str]], predictions: Mapping[str, str], timeout: float = 600.0
) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of `predictions` against `references`, as coco-caption computes them.

    references: {video_id: [caption, ...]} (at least one each); predictions: {video_id: caption}, the same ids.
    Score a whole split at once: CIDEr's IDF and BLEU's corpus statistics come from all the videos given.
    Returns {"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr": float}. Starts one METEOR JVM and two tokenizer
    JVMs (`timeout` seconds each at most) and leaves none running. UsageError for mismatched ids or missing Java.
    """
    ids = check_inputs(references, predictions)
    java = find_java()
    started = time.perf_counter()
    n_refs = sum(len(references[i]) for i in ids)
    log.info("scoring %d videos against %d references (coco-caption metrics)", len(ids), n_refs)
    # METEOR's JVM spends seconds loading its paraphrase table: start it first so that the load overlaps
    # tokenisation and the Python metrics.
    with MeteorProcess(java, timeout) as meteor:
        gts, res = _ptb_tokenize_many(
            [{i: list(references[i]) for i in ids}, {i: [predictions[i]] for i in ids}], java, timeout
        )
        meteor.start_scoring(gts, res)
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
        meteor_score = meteor.result()
    scores = {f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
    scores.update(METEOR=float(meteor_score), ROUGE_L=float(rouge), CIDEr=float(cider))
    log.debug("scored in %.1f s: %s", time.perf_counter() - started, scores)
    return {key: scores[key] for key in METRIC_KEYS}


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(total_nll / n_tokens): `total_nll` the summed negative log-likelihood (natural log) of `n_tokens`
    reference tokens (EOS included). inf when the exponent overflows."""
    if isinstance(n_tokens, bool) or int(n_tokens) != n_tokens or n_tokens <= 0:
        raise ValueError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    total_nll = float(total_nll)
    if math.isnan(total_nll) or total_nll < 0:
        raise ValueError(f"total_nll must be a non-negative number, got {total_nll!r}")
    try:
        return math.exp(total_nll / n_tokens)
    except OverflowError:
        return math.inf
