"""What both audiences' routers share: the one error shape, the body limit, streaming an
upload to disk, and ids as the store takes them."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import Path as PathParam, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .. import urls
from ..errors import BundleError, DistrenError, TooLarge

MAX_SIGNED_BODY = 1 << 20
# Ids live in SQLite INTEGER columns: a larger number is a malformed request, not a lookup.
Id = Annotated[int, PathParam(ge=0, le=urls.MAX_ID)]
After = Annotated[int, Query(ge=0, le=urls.MAX_ID)]


class BodyLimit:
    """Small bodies only, except on the two routes that stream uploads to disk. FastAPI reads
    a JSON body whole, before any check of who sent it: without this, one unauthenticated
    request could fill the server's memory."""

    def __init__(self, app, limit: int = MAX_SIGNED_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or _streams(scope["method"], scope["path"]):
            return await self.app(scope, receive, send)
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:  # the HTTP layer delivers no more than it says
            if length.isdigit() and int(length) <= self.limit:
                return await self.app(scope, receive, send)
            response = JSONResponse({"error": f"request body larger than {self.limit} bytes"}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise TooLarge(f"request body larger than {self.limit} bytes")
            return message

        return await self.app(scope, limited, send)


def _streams(method: str, path: str) -> bool:
    return (method == "POST" and path == "/api/jobs") or (method == "PUT" and path.endswith("/result"))


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A request the framework could not read into a handler's parameters: 400 like every other
    malformed request, in the one error shape, naming the part that is wrong."""
    problems = []
    for e in exc.errors()[:3]:
        where = " ".join(str(x) for x in e.get("loc", ()))
        got = repr(e.get("input"))[:60] if "input" in e and e.get("type") != "missing" else ""
        problems.append(f"{where}: {e.get('msg', 'invalid')}" + (f" (got {got})" if got else ""))
    return JSONResponse({"error": "malformed request: " + "; ".join(problems)}, status_code=400)


def content_length(request: Request) -> int:
    raw = request.headers.get("content-length") or "0"
    if not raw.isdigit():
        raise DistrenError("malformed request: Content-Length must be a number of bytes")
    return int(raw)


async def error_answer(request: Request, exc: DistrenError) -> JSONResponse:
    """The one way an error becomes an answer; :func:`distren.errors.from_status` reads it back."""
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


WRITE_BATCH = 1 << 20


async def receive_file(request: Request, staging: Path, prefix: str, limit: int, what: str) -> tuple[Path, str]:
    """Stream a request body into the ``staging`` folder, hashing it, durably (it may be
    renamed into place next); nothing is left behind if it fails or is too large."""
    path = staging / f"{prefix}-{secrets.token_hex(8)}.tar"
    h = hashlib.sha256()
    size = 0
    batch: list[bytes] = []
    pending = 0

    def put(chunks: list[bytes], f, last: bool = False) -> None:
        for chunk in chunks:
            h.update(chunk)
            f.write(chunk)
        if last:
            f.flush()
            os.fsync(f.fileno())
            f.close()

    # Every file operation happens in a worker thread, the writes a batch at a time: a write
    # (a flush, a file's creation) can block for long once the kernel throttles a fast writer's
    # dirty pages, and the event loop answers everyone else meanwhile.
    f = await run_in_threadpool(open, path, "wb")
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BundleError(f"{what} is larger than {limit} bytes; refused")
            batch.append(chunk)
            pending += len(chunk)
            if pending >= WRITE_BATCH:
                await run_in_threadpool(put, batch, f)
                batch, pending = [], 0
        await run_in_threadpool(put, batch, f, True)
    except BaseException:
        f.close()
        path.unlink(missing_ok=True)
        raise
    return path, h.hexdigest()
