"""The HTTP API: thin handlers over :class:`distren.service.Server`.

Every error the service raises on purpose is a :class:`DistrenError`; it reaches the client as
``{"error": message}`` with the error's HTTP status. Anything else is a bug: it is logged and
answered with 500, and the server keeps serving.
"""

from __future__ import annotations

import logging
import secrets

from fastapi import Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from . import __version__, bundle
from .errors import BundleError, DistrenError
from .service import Server

log = logging.getLogger("distren.api")


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="distren", version=__version__)
    app.state.server = server

    @app.exception_handler(DistrenError)
    async def distren_error(request: Request, exc: DistrenError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"internal server error ({type(exc).__name__}); see the server's log"},
                            status_code=500)

    def user(authorization: str | None = Header(default=None)) -> tuple[str, bool]:
        token = authorization.removeprefix("Bearer ").strip() if authorization else None
        return server.authenticate(token)

    def admin(u: tuple[str, bool] = Depends(user)) -> tuple[str, bool]:
        if not u[1]:
            from .errors import Unauthorized

            raise Unauthorized(f"user {u[0]!r} is not an admin; ask the server's admin to do this")
        return u

    @app.get("/api/server")
    def info():
        return {"name": server.url.name, "url": str(server.url), "slots": server.settings.slots,
                "version": __version__}

    @app.post("/api/jobs", status_code=201)
    async def submit(request: Request, u=Depends(user), idempotency_key: str | None = Header(default=None)):
        staging = server.store.staging_dir()
        path = staging / f"upload-{secrets.token_hex(8)}.tar"
        size = 0
        try:
            with open(path, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > bundle.MAX_TOTAL_BYTES:
                        raise BundleError(f"the upload is larger than {bundle.MAX_TOTAL_BYTES} bytes; refused")
                    f.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        job_id = await run_in_threadpool(server.submit, path, u[0], idempotency_key)
        return {"url": str(server.job_url(job_id)), "id": job_id}

    @app.get("/api/jobs")
    def jobs(u=Depends(user)):
        return server.jobs()

    @app.get("/api/jobs/{job_id}")
    def status(job_id: int, u=Depends(user)):
        return server.status(job_id)

    @app.get("/api/jobs/{job_id}/events")
    def events(job_id: int, after: int = 0, u=Depends(user)):
        server.store.get_job(job_id)
        return [e.__dict__ for e in server.store.events(job_id, after)]

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: int, u=Depends(user)):
        server.cancel(job_id, u[0])
        return server.status(job_id)

    @app.delete("/api/jobs/{job_id}")
    def delete(job_id: int, u=Depends(user)):
        server.delete(job_id, u[0])
        return {"deleted": str(server.job_url(job_id))}

    @app.post("/api/jobs/{job_id}/frames/{frame_id}/retry")
    def retry(job_id: int, frame_id: int, u=Depends(user)):
        server.retry(job_id, frame_id, u[0])
        return server.status(job_id)

    @app.get("/api/jobs/{job_id}/frames/{frame_id}/log", response_class=PlainTextResponse)
    def frame_log(job_id: int, frame_id: int, u=Depends(user)):
        return server.frame_log(job_id, frame_id)

    @app.get("/api/jobs/{job_id}/result")
    def result(job_id: int, u=Depends(user)):
        return FileResponse(server.result(job_id), media_type="application/x-tar",
                            filename=f"{server.url.name}-job-{job_id}.tar")

    @app.post("/api/users", status_code=201)
    def add_user(body: dict, u=Depends(admin)):
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str):
            from .errors import DistrenError as E

            raise E('send {"name": "USER"}')
        token = server.add_user(name)
        return {"user": str(server.url.user(name)), "token": token}

    return app
