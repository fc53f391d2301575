"""Errors a user can cause. The CLI turns them into one line on stderr, never a traceback."""

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
