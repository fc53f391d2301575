"""Errors a user can cause. The CLI turns them into one line on stderr, never a traceback."""

import errno
import os

# Errors a hostile or exotic file can raise from deep inside FFmpeg/decord/PIL bindings: `vidcap caption` and
# `vidcap app` report them as one line for that file and go on with the others.
DECODER_ERRORS = (OSError, RuntimeError, ValueError, IndexError, EOFError)


class VidcapError(Exception):
    """A problem with the user's input: the message names the file and the reason."""

    exit_code = 2


class UsageError(VidcapError):
    """Wrong arguments, a missing or malformed input file, an empty result (exit code 2)."""


class VideoError(VidcapError):
    """A video file that cannot be opened or decoded (missing, empty, truncated, not a video)."""


class CheckpointError(VidcapError):
    """A checkpoint that is corrupt, from another version, or not a vidcap checkpoint."""


class WorkerError(VidcapError):
    """A worker process hung or died part-way through a run: what finished before it is kept and a rerun resumes
    (exit code 1, like a batch where some items failed)."""

    exit_code = 1


class DiskError(VidcapError):
    """The file system refused a write: no space left, a quota, a read-only folder, no permission. The message names
    the path and the reason; files finished before it are complete (vidcap.atomic) and a rerun once the cause is
    fixed resumes. Exit code 2 when nothing was written, 1 when some items were (set by the command that knows)."""


# errno -> the reason a DiskError gives
DISK_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the file system",
}


def disk_error(error: BaseException, done: bool = False, hint: str = "") -> DiskError | None:
    """The DiskError of an OSError a write met (None for any other error). The path is the final name when the write
    went to a temporary one (vidcap.atomic); done: some items were written before it (exit code 1, else 2)."""
    if not isinstance(error, OSError) or error.errno not in DISK_REASONS:
        return None
    from vidcap.atomic import parse_temp_name

    path = error.filename if error.filename is not None else error.filename2
    if path is not None:
        path = os.fsdecode(path)
        parsed = parse_temp_name(os.path.basename(path))
        if parsed is not None:
            path = os.path.join(os.path.dirname(path), parsed.final)
    where = f"{path}: " if path else ""
    reason = DISK_REASONS[error.errno]
    fix = "free some space" if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "choose a writable folder"
    result = DiskError(f"{where}cannot write: {reason}; {hint or 'finished files are complete'}: {fix} and rerun")
    result.exit_code = 1 if done else 2
    return result
