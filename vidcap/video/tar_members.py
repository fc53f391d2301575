"""Files inside tar shards, read in place: `shard.tar::member` references, a scan of a shard's members, and a
per-process cache of open shards: a member is read with a seek and a read, or handed to a decoder as FFmpeg's
`subfile` URL of its byte range.

webdataset / video2dataset shards are plain POSIX tar files, each sample a run of members `<key>.mp4`, `<key>.txt`,
`<key>.json`. A video inside one is named `SHARD::MEMBER`, e.g. `data/00000.tar::000000012.mp4`, wherever vidcap takes
a video path (videos.csv, `vidcap caption`). Nothing is unpacked to disk: `scan_shard` reads the headers once
(no member data), `read_member` seeks to the member's data in a shard this process has already opened, and
`member_source` gives the decoders `subfile,,start,OFFSET,end,END,,:SHARD`, which FFmpeg (PyAV's and decord's)
reads in place as fast as a file: handing them the bytes instead made PyAV about 30% slower (Python I/O callbacks).

The standard library's tarfile does the header parsing (the webdataset library streams samples but does not give
member offsets, which random access by member needs). A shard that is not a tar, or is truncated, yields every
member that is complete before the damage and says why it stopped (`ShardScan.error`).
"""

from __future__ import annotations

import os
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from vidcap.errors import VideoError

SEPARATOR = "::"
# Shards a process keeps open at once (file handle + member index each); extraction reads shard after shard.
OPEN_SHARDS = 8


def member_ref(shard: str | os.PathLike, member: str) -> str:
    """`SHARD::MEMBER`, the name of a file inside a tar shard."""
    return f"{os.fspath(shard)}{SEPARATOR}{member}"


def split_ref(ref: str | os.PathLike) -> tuple[str, str] | None:
    """(shard, member) of a `SHARD::MEMBER` reference; None for a plain path. The shard part must end in .tar."""
    text = os.fspath(ref)
    shard, sep, member = text.rpartition(SEPARATOR)
    if not sep or not member or not shard.lower().endswith(".tar"):
        return None
    return shard, member


class ShardError(VideoError):
    """A shard or member that cannot be read: "NAME: reason", with the reason alone in `reason`."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Member:
    """A regular file of a shard: its name, where its data starts (bytes from the start of the shard) and its size."""

    name: str
    offset: int
    size: int


@dataclass
class ShardScan:
    """The complete regular-file members of a shard in file order, and why the scan stopped early (None: the shard
    is whole)."""

    path: str
    members: list[Member] = field(default_factory=list)
    error: str | None = None


def scan_shard(path: str | os.PathLike) -> ShardScan:
    """Read a shard's headers (not its data): every member whose data is complete, in file order. A file that is not
    a tar gives no member and error "not a tar file"; a truncated one keeps the members before the damage."""
    path = os.fspath(path)
    scan = ShardScan(path)
    try:
        size = os.path.getsize(path)
        tar = tarfile.open(path, mode="r:")
    except FileNotFoundError:
        scan.error = "no such file"
        return scan
    except IsADirectoryError:
        scan.error = "is a folder, not a tar file"
        return scan
    except (tarfile.TarError, OSError, EOFError) as error:
        scan.error = "not a tar file" if isinstance(error, tarfile.ReadError) else f"cannot read it: {error}"
        return scan
    with tar:
        while True:
            try:
                info = tar.next()
            except (tarfile.TarError, EOFError, OSError) as error:
                scan.error = f"damaged after {len(scan.members)} members ({' '.join(str(error).split())})"
                break
            if info is None:
                # A whole tar ends with two zero blocks after its last member; tarfile stops quietly without them.
                if size - tar.offset < 2 * tarfile.BLOCKSIZE:
                    scan.error = f"truncated after {len(scan.members)} members (no end-of-archive blocks)"
                break
            if not info.isfile():
                continue
            if info.offset_data + info.size > size:
                scan.error = f"truncated inside member {info.name} ({len(scan.members)} complete members before it)"
                break
            scan.members.append(Member(info.name, info.offset_data, info.size))
    return scan


def iter_member_data(scan: ShardScan, names: set[str] | None = None):
    """(member, bytes) of the scanned members (only `names` when given), reading the shard once, in file order."""
    with open(scan.path, "rb") as file:
        for member in scan.members:
            if names is None or member.name in names:
                file.seek(member.offset)
                yield member, file.read(member.size)


class OpenShard:
    """One shard open for reading members by name (its headers scanned once, its file handle kept)."""

    def __init__(self, path: str):
        scan = scan_shard(path)
        if not scan.members and scan.error is not None:
            raise ShardError(path, scan.error)
        self.path = path
        self.error = scan.error
        self.members = {m.name: m for m in reversed(scan.members)}  # a repeated name: the first one wins
        self._file: BinaryIO = open(path, "rb")  # noqa: SIM115 (kept open until evicted)
        self._lock = threading.Lock()

    def member(self, name: str) -> Member:
        member = self.members.get(name)
        if member is None:
            raise ShardError(member_ref(self.path, name), "no such member in the shard")
        return member

    def read(self, name: str) -> bytes:
        member = self.member(name)
        with self._lock:
            self._file.seek(member.offset)
            data = self._file.read(member.size)
        if len(data) != member.size:
            raise ShardError(member_ref(self.path, name), "the shard ends inside it")
        return data

    def close(self) -> None:
        self._file.close()


_open: OrderedDict[tuple[str, int, int], OpenShard] = OrderedDict()
_open_lock = threading.Lock()


def open_shard(path: str | os.PathLike) -> OpenShard:
    """The shard, opened once per process and kept among the last OPEN_SHARDS used (reopened if the file changed)."""
    path = os.path.abspath(os.fspath(path))
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise ShardError(path, "no such shard") from None
    key = (path, stat.st_mtime_ns, stat.st_size)
    with _open_lock:
        shard = _open.get(key)
        if shard is not None:
            _open.move_to_end(key)
            return shard
    shard = OpenShard(path)
    with _open_lock:
        _open[key] = shard
        while len(_open) > OPEN_SHARDS:
            _, old = _open.popitem(last=False)
            old.close()
    return shard


def read_member(ref: str | os.PathLike) -> bytes:
    """The bytes of `SHARD::MEMBER`. Raises VideoError("REF: reason") for a missing shard or member, an empty member
    or a shard that is not a tar."""
    parts = split_ref(ref)
    if parts is None:
        raise VideoError(f"{ref}: not a SHARD.tar{SEPARATOR}MEMBER reference")
    shard, member = parts
    try:
        data = open_shard(shard).read(member)
    except ShardError as error:
        raise ShardError(os.fspath(ref), error.reason) from None
    if not data:
        raise VideoError(f"{ref}: empty member (0 bytes)")
    return data


def member_source(ref: str | os.PathLike) -> str | bytes:
    """What a decoder opens for `SHARD::MEMBER`: FFmpeg's `subfile` URL of the member's byte range, so that PyAV and
    decord read the member straight from the shard with FFmpeg's own file I/O (nothing copied, nothing unpacked); the
    member's bytes when the shard's path holds a ',' (which the URL cannot carry). Raises VideoError as read_member."""
    parts = split_ref(ref)
    if parts is None:
        raise VideoError(f"{ref}: not a SHARD.tar{SEPARATOR}MEMBER reference")
    try:
        shard = open_shard(parts[0])
        member = shard.member(parts[1])
    except ShardError as error:
        raise ShardError(os.fspath(ref), error.reason) from None
    if member.size == 0:
        raise VideoError(f"{ref}: empty member (0 bytes)")
    if "," in shard.path:
        return read_member(ref)
    return f"subfile,,start,{member.offset},end,{member.offset + member.size},,:{shard.path}"


def member_stem(ref: str | os.PathLike) -> str:
    """The file stem a video is known by: the member's for `SHARD::MEMBER` (`000000012`), else the file's."""
    parts = split_ref(ref)
    return Path(parts[1] if parts else os.fspath(ref)).stem


__all__ = ["SEPARATOR", "Member", "OpenShard", "ShardError", "ShardScan", "iter_member_data", "member_ref", "member_source", "member_stem", "open_shard", "read_member",
           "scan_shard", "split_ref"]
