"""The HTTP API: thin handlers over :class:`distren.service.Server`.

Every error the service raises on purpose is a :class:`DistrenError`; it reaches the client as
``{"error": message}`` with the error's HTTP status. Anything else is a bug: it is logged and
answered with 500, and the server keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from . import __version__, bundle, identity, urls
from .errors import BundleError, Conflict, DistrenError, Forbidden, TooLarge, Unauthorized
from .service import Server

log = logging.getLogger("distren.api")
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


def _bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header; the scheme is case-insensitive
    (RFC 9110, section 11.1)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("send the token as 'Authorization: Bearer TOKEN'")
    return token.strip() or None


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


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="distren", version=__version__)
    app.state.server = server
    app.add_middleware(BodyLimit)

    app.add_exception_handler(DistrenError, error_answer)
    app.add_exception_handler(RequestValidationError, invalid_request)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"internal server error ({type(exc).__name__}); see the server's log"},
                            status_code=500)

    # --- who may do what (README "Users and access"): every /api/jobs/{ID} route takes its job
    # through owned(), the one place that checks it --------------------------------------------

    def user(authorization: str | None = Header(default=None)) -> tuple[str, bool]:
        return server.authenticate(_bearer(authorization))

    def admin(u: tuple[str, bool] = Depends(user)) -> tuple[str, bool]:
        if not u[1]:
            raise Forbidden(f"user {u[0]!r} is not an admin")
        return u

    def owned(job_id: int, u: tuple[str, bool] = Depends(user)) -> int:
        return server.job_for(job_id, *u)

    @app.get("/api/server")
    async def info():  # no I/O: answered on the event loop, not queued behind the thread pool
        return {"name": server.url.name, "url": str(server.url), "slots": server.settings.slots,
                "version": __version__}

    async def receive_file(request: Request, prefix: str, limit: int, what: str) -> tuple[Path, str]:
        """Stream a request body into the staging folder, hashing it, durably (it may be
        renamed into place next); nothing is left behind if it fails or is too large."""
        path = server.store.staging_dir() / f"{prefix}-{secrets.token_hex(8)}.tar"
        h = hashlib.sha256()
        size = 0
        try:
            with open(path, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise BundleError(f"{what} is larger than {limit} bytes; refused")
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                await run_in_threadpool(os.fsync, f.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, h.hexdigest()

    @app.post("/api/jobs", status_code=201)
    async def submit(request: Request, u=Depends(user), idempotency_key: str | None = Header(default=None)):
        path, _ = await receive_file(request, "upload", bundle.MAX_TOTAL_BYTES, "the upload")
        job_id = await run_in_threadpool(server.submit, path, u[0], idempotency_key, u[1])
        return {"url": str(server.job_url(job_id)), "id": job_id}

    @app.get("/api/jobs")
    def jobs(u=Depends(user)):
        return server.jobs(*u)

    @app.get("/api/jobs/{job_id}")
    def status(job_id: int = Depends(owned)):
        return server.status(job_id)

    @app.get("/api/jobs/{job_id}/events")
    def events(after: After = 0, job_id: int = Depends(owned)):
        return [e.__dict__ for e in server.store.events(job_id, after)]

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: int = Depends(owned), u=Depends(user)):
        server.cancel(job_id, u[0])
        return server.status(job_id)

    @app.delete("/api/jobs/{job_id}")
    def delete(job_id: int = Depends(owned), u=Depends(user)):
        server.delete(job_id, u[0])
        return {"deleted": str(server.job_url(job_id))}

    @app.post("/api/jobs/{job_id}/frames/{frame_id}/retry")
    def retry(frame_id: Id, job_id: int = Depends(owned), u=Depends(user)):
        server.retry(job_id, frame_id, u[0])
        return server.status(job_id)

    @app.get("/api/jobs/{job_id}/frames/{frame_id}/log", response_class=PlainTextResponse)
    def frame_log(frame_id: Id, job_id: int = Depends(owned)):
        return server.frame_log(job_id, frame_id)

    @app.get("/api/jobs/{job_id}/result")
    def result(job_id: int = Depends(owned)):
        return FileResponse(server.result(job_id), media_type="application/x-tar",
                            filename=f"{server.url.name}-job-{job_id}.tar")

    @app.get("/api/servers")
    def servers(u=Depends(user)):
        return server.servers()

    @app.post("/api/peers", status_code=201)
    async def add_peer(body: dict, u=Depends(admin)):
        address = body.get("address") if isinstance(body, dict) else None
        if not isinstance(address, str) or not address.startswith(("http://", "https://")):
            raise DistrenError('send {"address": "http://HOST:PORT"}: the peer\'s HTTP address')
        name = await run_in_threadpool(server.add_peer, address)
        return {"peer": f"distren://{name}/", "address": address}

    @app.delete("/api/peers/{name}")
    def remove_peer(name: str, u=Depends(admin)):
        server.remove_peer(name)
        return {"removed": f"distren://{name}/"}

    # --- federation: signed server-to-server calls (docs/protocol.md) ----------------------

    fed = server.federation

    def path_of(request: Request) -> str:
        q = request.url.query
        return request.url.path + (f"?{q}" if q else "")

    def verify(request: Request, digest: str, seen_nonce=server.store.seen_nonce) -> str:
        return identity.verify_request(request.headers, request.method, path_of(request), digest,
                                       server.store.peer_key, seen_nonce, me=server.url.name)

    async def signed(request: Request) -> tuple[str, bytes]:
        """The verified sender's name, and the (small) body it signed."""
        if content_length(request) > MAX_SIGNED_BODY:
            raise DistrenError(f"request body larger than {MAX_SIGNED_BODY} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_SIGNED_BODY:
                raise DistrenError(f"request body larger than {MAX_SIGNED_BODY} bytes")
        return await run_in_threadpool(verify, request, hashlib.sha256(body).hexdigest()), body

    def json_body(body: bytes) -> dict:
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise DistrenError("the request body is not JSON") from None
        if not isinstance(data, dict):
            raise DistrenError("the request body must be a JSON object")
        return data

    @app.post("/fed/hello")
    async def hello(body: dict):
        return await run_in_threadpool(fed.accept_hello, body)

    @app.post("/fed/announce")
    async def announce(request: Request):
        sender, body = await signed(request)
        news = await run_in_threadpool(fed.receive, sender, json_body(body))
        return {"news": news}

    @app.get("/fed/state")
    async def fed_state(request: Request):
        sender, _ = await signed(request)

        def heard():
            server.store.peer_heard(sender)
            return fed.state()
        return await run_in_threadpool(heard)

    def grant(request: Request):
        job_id = int(request.path_params["job_id"])
        if not 0 <= job_id <= urls.MAX_ID:
            raise DistrenError(f"malformed request: job id {str(job_id)[:30]} is not an id (0 to {urls.MAX_ID})")
        if content_length(request):
            raise DistrenError("a lease request has no body")
        nonces: list[tuple[str, float]] = []  # recorded with the claim, in one transaction
        sender = verify(request, identity.EMPTY_SHA256, lambda n, exp: nonces.append((n, exp)))
        can = request.query_params.get("can")
        return fed.grant_lease(sender, job_id, nonces[0], None if can is None else set(can.split(",")))

    async def lease(request: Request):
        # The busiest call a server answers (every idle slot of every peer asks), so it is a
        # plain Starlette route: no FastAPI parameter machinery between the socket and the work.
        try:
            granted = await run_in_threadpool(grant, request)
        except DistrenError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        if granted is None:
            return Response(status_code=204)
        xml, sha, expires = granted
        return Response(xml, media_type="application/xml",
                        headers={"X-Distren-Bundle-SHA256": sha, "X-Distren-Lease-Expires": f"{expires:.3f}",
                                 "X-Distren-Now": f"{time.time():.3f}"})

    app.router.add_route("/fed/jobs/{job_id:int}/lease", lease, methods=["POST"])

    @app.get("/fed/jobs/{job_id}/bundle")
    async def job_bundle(job_id: Id, request: Request):
        await signed(request)

        def bundle_of():
            fed._own_job(job_id)
            return FileResponse(server.store.seed_path(job_id), media_type="application/x-tar",
                                headers={"X-Content-SHA256": server.bundle_sha256(job_id)})
        return await run_in_threadpool(bundle_of)

    @app.get("/fed/jobs/{job_id}/frames/{frame_id}")
    async def fed_frame(job_id: Id, frame_id: Id, request: Request):
        await signed(request)
        return await run_in_threadpool(fed.frame_state, job_id, frame_id)

    @app.get("/fed/jobs/{job_id}/frames/{frame_id}/files")
    async def fed_frame_files(job_id: Id, frame_id: Id, request: Request):
        await signed(request)

        def files_of():
            if server.store.frame(job_id, frame_id).state != "done":
                raise Conflict(f"frame {frame_id} of job {job_id} is not done")
            return FileResponse(server.store.frame_tar(job_id, frame_id), media_type="application/x-tar")
        return await run_in_threadpool(files_of)

    @app.post("/fed/jobs/{job_id}/frames/{frame_id}/renew")
    async def renew(job_id: Id, frame_id: Id, request: Request):
        sender, _ = await signed(request)
        expires = await run_in_threadpool(fed.renew, sender, job_id, frame_id)
        return JSONResponse({"expires": expires}, headers={"X-Distren-Now": f"{time.time():.3f}"})

    @app.post("/fed/jobs/{job_id}/frames/{frame_id}/log")
    async def remote_log(job_id: Id, frame_id: Id, request: Request):
        sender, body = await signed(request)
        await run_in_threadpool(fed.accept_log, sender, job_id, frame_id, str(json_body(body).get("log", "")))
        return {"ok": True}

    @app.post("/fed/jobs/{job_id}/frames/{frame_id}/failed")
    async def remote_failed(job_id: Id, frame_id: Id, request: Request):
        sender, body = await signed(request)
        data = json_body(body)
        await run_in_threadpool(fed.accept_failure, sender, job_id, frame_id, str(data.get("reason", "")),
                                str(data.get("log", "")))
        return {"ok": True}

    @app.put("/fed/jobs/{job_id}/frames/{frame_id}/result")
    async def remote_result(job_id: Id, frame_id: Id, request: Request):
        # The signature covers the digest the sender claims: check it before taking any bytes,
        # then stream to disk while hashing and compare.
        claimed = request.headers.get("X-Content-SHA256", "")
        sender = await run_in_threadpool(verify, request, claimed)
        await run_in_threadpool(fed.leased_to_or_done, sender, job_id, frame_id)
        path, digest = await receive_file(request, "result", server.settings.max_result_bytes,
                                          "the frame tarball")
        try:
            if digest != claimed:
                raise BundleError("the upload's content does not match its X-Content-SHA256; send it again")
            outcome = await run_in_threadpool(fed.accept_result, sender, job_id, frame_id, path)
        finally:
            path.unlink(missing_ok=True)
        return {"result": outcome}

    @app.post("/api/users", status_code=201)
    def add_user(body: dict, u=Depends(admin)):
        name = body.get("name") if isinstance(body, dict) else None
        make_admin = body.get("admin", False) if isinstance(body, dict) else False
        if not isinstance(name, str) or not isinstance(make_admin, bool):
            raise DistrenError('send {"name": "USER"} and optionally "admin": true')
        token = server.add_user(name, make_admin)
        return {"user": str(server.url.user(name)), "token": token, "admin": make_admin}

    @app.get("/api/users")
    def users(u=Depends(admin)):
        return server.users()

    @app.post("/api/users/{name}/revoke")
    def revoke_user(name: str, u=Depends(admin)):
        newly = server.revoke_user(name)
        return {"revoked": str(server.url.user(name)), "already": not newly}

    return app
