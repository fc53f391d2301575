"""The HTTP API of `vidcap app`, for programs: FastAPI routes over a CaptionService.

    POST /api/caption   multipart: video=@FILE [beam_size, n_best, max_len]  -> the `vidcap caption --json` object
    GET  /api/health    {"status": "ok", "searches", "videos", "largest_batch"}: the batched searches run so far
    GET  /api/info      the checkpoint's description (vidcap.app.service.describe)

Errors are JSON, {"error": "one line"}: 413 for an upload over the size limit (refused from its Content-Length
before it is read, or as soon as the body passes the limit), 422 for a file that is not a readable video (the
reason `vidcap caption` gives), a video over the duration limit or bad decoding options, 401 without the
credentials of `--auth` (HTTP Basic). The upload is written to a private temporary file, read (frames and
features, on the service's few reading threads) and deleted, then waits for its batched search;
the client's file name is only ever a label (its last path component), never a path on the server.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from vidcap.app.service import CaptionService, RequestError
from vidcap.errors import UsageError, VidcapError

CAPTION_PATH = "/api/caption"
# Room for the multipart framing and the option fields around the video itself.
FORM_OVERHEAD = 64 * 1024
OPTION_FIELDS = ("beam_size", "n_best", "max_len")
_BASIC = HTTPBasic(auto_error=False)


def client_name(filename: str | None) -> str:
    """A client's file name as a label: its last path component (either slash), control characters dropped, at
    most 200 characters; "video" when nothing is left."""
    name = re.split(r"[/\\]", filename or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()[:200]
    return name if name not in ("", ".", "..") else "video"


def _suffix(name: str) -> str:
    # A plain extension helps FFmpeg guess the container; anything else is dropped (the content is probed anyway).
    suffix = Path(name).suffix
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class UploadTooLarge(Exception):
    """The request body passed the limit while it was being read."""


class BodyLimit:
    """ASGI middleware: a body on `path` larger than `limit` bytes stops being read (UploadTooLarge, which the
    route turns into 413); a Content-Length over the limit is refused before any of it is read."""

    def __init__(self, app, limit: int, path: str = CAPTION_PATH):
        self.app, self.limit, self.path = app, limit, path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            response = error(413, f"upload over this server's limit of {self.limit // (1 << 20)} MiB "
                                  "(--max-upload-mb)")
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise UploadTooLarge
            return message

        return await self.app(scope, limited, send)


def _options(service: CaptionService, form) -> dict[str, int]:
    given = {}
    for key in OPTION_FIELDS:
        value = form.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or not re.fullmatch(r"\s*\d{1,4}\s*", value):
            raise RequestError(f"{key} must be a positive integer, got {str(value)[:40]!r}")
        given[key] = int(value)
    try:
        return service.options(**given)
    except UsageError as problem:
        raise RequestError(str(problem)) from None


def _basic_auth(credentials: tuple[str, str] | None):
    """A dependency that checks HTTP Basic credentials (in constant time); none when `credentials` is None."""

    def check(given: Annotated[HTTPBasicCredentials | None, Depends(_BASIC)]) -> None:
        if credentials is None:
            return
        user, password = credentials
        if given is not None and (secrets.compare_digest(given.username.encode(), user.encode())
                                  & secrets.compare_digest(given.password.encode(), password.encode())):
            return
        raise _Unauthorized

    return check


class _Unauthorized(Exception):
    pass


def add_api(app: FastAPI, service: CaptionService, upload_dir: str | os.PathLike,
            auth: tuple[str, str] | None = None) -> FastAPI:
    """Add the routes to `app` (before the Gradio page is mounted on it, so that they come first)."""
    limit = service.limits.max_upload_bytes
    app.add_middleware(BodyLimit, limit=limit + FORM_OVERHEAD)
    guard = [Depends(_basic_auth(auth))]

    @app.exception_handler(_Unauthorized)
    async def unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
        return JSONResponse({"error": "authentication required (HTTP Basic, the --auth credentials)"},
                            status_code=401, headers={"WWW-Authenticate": 'Basic realm="vidcap"'})

    @app.get("/api/health")
    async def health() -> dict:
        return {"status": "ok", "searches": service.searches, "videos": service.videos,
                "largest_batch": service.largest_batch}

    @app.get("/api/info", dependencies=guard)
    async def info() -> dict:
        return service.info

    @app.post(CAPTION_PATH, dependencies=guard)
    async def caption(request: Request) -> JSONResponse:
        try:
            form = await request.form(max_files=1, max_fields=len(OPTION_FIELDS))
        except UploadTooLarge:
            return error(413, f"upload over this server's limit of {limit // (1 << 20)} MiB (--max-upload-mb)")
        except MultiPartException as problem:
            return error(400, f"not a multipart form: {problem.message}")
        try:
            video = form.get("video")
            if not isinstance(video, UploadFile):
                return error(422, "send the video as a multipart file field named 'video'")
            name = client_name(video.filename)
            if video.size is not None and video.size > limit:
                return error(413, f"{name}: over this server's limit of {limit // (1 << 20)} MiB (--max-upload-mb)")
            try:
                options = _options(service, form)
                loop = asyncio.get_running_loop()
                inputs = await loop.run_in_executor(service.pool, _read_upload, service, video, name, upload_dir)
                # Waiting for the batched search holds no thread: the reading threads go on with other uploads.
                result = await asyncio.wrap_future(service.submit(inputs, options))
            except RequestError as problem:
                return error(problem.status, str(problem))
            except VidcapError as problem:
                return error(422, str(problem))
            return JSONResponse(result.to_json())
        finally:
            await form.close()

    return app


def _read_upload(service: CaptionService, video: UploadFile, name: str, upload_dir):
    """Copy the upload into a private temporary file, read its frames and features, delete it."""
    handle, path = tempfile.mkstemp(dir=upload_dir, prefix="upload-", suffix=_suffix(name))
    try:
        with os.fdopen(handle, "wb") as out:
            video.file.seek(0)
            shutil.copyfileobj(video.file, out, 1 << 20)
        return service.read(path, name)
    finally:
        os.unlink(path)
