"""Atomic file writes, the one place vidcap builds (and parses) temporary file names.

Every output a run writes (feature files, meta.json, manifest.csv, the prepared tables, the vocabulary, metrics,
videos of the synthetic dataset) goes through `atomic_path`: the content is written to a hidden temporary name in the
same folder, flushed to disk (fsync), then renamed over the final name, which is atomic on POSIX. A reader sees the
old file or the new one, never half of one; a killed writer leaves only its temporary file, which `remove_stale`
deletes on a later run once that writer is gone.

Temporary names are `.<final name>.<host>.<pid>.tmp<suffix>`: hidden (listings skip dot files), never ending in the
final extension (loaders never pick one up), and tagged with the writer's host and process so that a temporary
file of a live writer, possibly on another machine sharing the folder, is told apart from a dead one's.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NamedTuple

# Another machine's temporary file this old belongs to a dead writer (its pid cannot be checked from here).
STALE_FOREIGN_S = 24 * 3600


def _host() -> str:
    return socket.gethostname().replace(".", "-") or "host"


class TempName(NamedTuple):
    """The parts of a temporary name made by `temp_path`."""

    final: str  # the file name it will be renamed to
    host: str
    pid: int


def temp_path(final: str | os.PathLike, suffix: str = "") -> Path:
    """The temporary name this process writes `final` under. `suffix` keeps an extension that a writer needs to pick
    the format (PyAV chooses the container from it), e.g. ".mp4"."""
    final = Path(final)
    return final.with_name(f".{final.name}.{_host()}.{os.getpid()}.tmp{suffix}")


def parse_temp_name(name: str) -> TempName | None:
    """`temp_path`'s name -> its parts; None for any other file name."""
    if not name.startswith(".") or ".tmp" not in name:
        return None
    stem = name[1:name.rindex(".tmp")]
    parts = stem.rsplit(".", 2)
    if len(parts) != 3 or not parts[0] or not parts[2].isdigit():
        return None
    return TempName(parts[0], parts[1], int(parts[2]))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to; on a clean exit it is fsynced and renamed over `path`,
    on an exception (or KeyboardInterrupt) it is deleted and `path` is left as it was.

        with atomic_path(out / "video.mp4", suffix=".mp4") as tmp:
            encode(tmp)
    """
    path = Path(path)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = str(path)  # a write through a handle names no file: name the one being written
        raise


def write_with(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Atomically write `path` by calling `write(binary_file)`."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write(handle)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_with(path, lambda handle: handle.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, content: Any, indent: int | None = 2) -> Path:
    """JSON (UTF-8, non-ASCII kept, a final newline); values JSON cannot hold are written with str()."""
    return write_text(path, json.dumps(content, indent=indent, ensure_ascii=False, default=str) + "\n")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale(folder: str | os.PathLike) -> int:
    """Delete the temporary files in `folder` whose writers are gone: this host's whose process no longer runs,
    other hosts' after STALE_FOREIGN_S. Returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    host, removed = _host(), 0
    for path in folder.iterdir():
        parsed = parse_temp_name(path.name)
        if parsed is None:
            continue
        if parsed.host == host:
            stale = not _pid_alive(parsed.pid)
        else:
            try:
                stale = time.time() - path.stat().st_mtime > STALE_FOREIGN_S
            except FileNotFoundError:
                continue
        if stale:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
