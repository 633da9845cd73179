"""``/api``: what clients (people, through the CLI) ask of a server. Every request carries a
user's token; every ``/api/jobs/{ID}`` route takes its job through :func:`owned`, the one place
that checks who may see and touch it (README "Users and access")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi import Query
from fastapi.responses import FileResponse, PlainTextResponse
from starlette.background import BackgroundTask

from .. import __version__, bundle, states, urls
from ..errors import DistrenError, Forbidden, Unauthorized
from ..steering import MAX_PRIORITY, MIN_PRIORITY, check_priority
from .common import After, Id, receive_file

Priority = Annotated[int, Query(ge=MIN_PRIORITY, le=MAX_PRIORITY)]

if TYPE_CHECKING:
    from ..service import Server


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header; the scheme is case-insensitive
    (RFC 9110, section 11.1)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("send the token as 'Authorization: Bearer TOKEN'")
    return token.strip() or None



def router(server: Server) -> APIRouter:
    api = APIRouter()
    users, jobs, views = server.users, server.jobs, server.views

    def user(authorization: str | None = Header(default=None)) -> tuple[str, bool]:
        return users.authenticate(bearer(authorization))

    def admin(u: tuple[str, bool] = Depends(user)) -> tuple[str, bool]:
        if not u[1]:
            raise Forbidden(f"user {u[0]!r} is not an admin")
        return u

    def owned(job_id: int, u: tuple[str, bool] = Depends(user)) -> int:
        return users.job_for(job_id, *u)

    @api.get("/api/server")
    async def info():  # no I/O: answered on the event loop, not queued behind the thread pool
        return {"name": server.url.name, "url": str(server.url), "slots": server.settings.slots,
                "version": __version__, "lease_requests_waiting": len(server.origin.waiters)}

    @api.post("/api/jobs", status_code=201)
    async def submit(request: Request, u=Depends(user), idempotency_key: str | None = Header(default=None),
                     priority: Priority = 0):
        path, _ = await receive_file(request, server.store.staging_dir(), "upload", bundle.MAX_TOTAL_BYTES,
                                     "the upload")
        job_id = await run_in_threadpool(jobs.submit, path, u[0], idempotency_key, u[1], priority)
        return {"url": str(server.url.job(job_id)), "id": job_id}

    @api.get("/api/jobs")
    def job_list(u=Depends(user)):
        return views.jobs(*u)

    @api.get("/api/jobs/{job_id}")
    def status(job_id: int = Depends(owned)):
        return views.status(job_id)

    @api.get("/api/jobs/{job_id}/events")
    def events(after: After = 0, job_id: int = Depends(owned)):
        return views.events(job_id, after)

    @api.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: int = Depends(owned), u=Depends(user)):
        jobs.cancel(job_id, u[0])
        return views.status(job_id)

    @api.delete("/api/jobs/{job_id}")
    def delete(job_id: int = Depends(owned), u=Depends(user)):
        jobs.delete(job_id, u[0])
        return {"deleted": str(server.url.job(job_id))}

    @api.post("/api/jobs/{job_id}/pause")
    def pause(job_id: int = Depends(owned), u=Depends(user)):
        jobs.pause(job_id, u[0])
        return views.status(job_id)

    @api.post("/api/jobs/{job_id}/resume")
    def resume(job_id: int = Depends(owned), u=Depends(user)):
        jobs.resume(job_id, u[0])
        return views.status(job_id)

    @api.post("/api/jobs/{job_id}/priority")
    def priority(body: dict, job_id: int = Depends(owned), u=Depends(user)):
        value = body.get("priority") if isinstance(body, dict) else None
        check_priority(value)
        jobs.set_priority(job_id, value, u[0])
        return views.status(job_id)

    @api.post("/api/jobs/{job_id}/retry")
    def requeue(body: dict | None = None, job_id: int = Depends(owned), u=Depends(user)):
        frames = body.get("frames") if isinstance(body, dict) else None
        if frames is not None and (not isinstance(frames, list) or not frames or len(frames) > urls.MAX_ID
                                   or not all(isinstance(f, int) and not isinstance(f, bool) and 0 <= f <= urls.MAX_ID
                                              for f in frames)):
            raise DistrenError('frames: a list of frame ids, e.g. {"frames": [3, 4]}; leave it out for every failed frame')
        jobs.requeue(job_id, frames, u[0])
        return views.status(job_id)

    @api.post("/api/jobs/{job_id}/frames/{frame_id}/retry")
    def retry(frame_id: Id, job_id: int = Depends(owned), u=Depends(user)):
        jobs.retry(job_id, frame_id, u[0])
        return views.status(job_id)

    @api.get("/api/jobs/{job_id}/frames/{frame_id}/log", response_class=PlainTextResponse)
    def frame_log(frame_id: Id, job_id: int = Depends(owned)):
        return views.frame_log(job_id, frame_id)

    @api.get("/api/jobs/{job_id}/result")
    def result(job_id: int = Depends(owned)):
        name = f"{server.url.name}-job-{job_id}.tar"
        if server.store.get_job(job_id).state in (states.FAILED, states.CANCELLED):
            partial = jobs.partial_result(job_id)  # made for this request, removed once sent
            return FileResponse(partial, media_type="application/x-tar", filename=name,
                                headers={"X-Distren-Partial": "1"}, background=BackgroundTask(partial.unlink))
        return FileResponse(views.result(job_id), media_type="application/x-tar", filename=name)

    @api.get("/api/servers")
    def servers(u=Depends(user)):
        return views.servers()

    @api.post("/api/peers", status_code=201)
    async def add_peer(body: dict, u=Depends(admin)):
        address = body.get("address") if isinstance(body, dict) else None
        if not isinstance(address, str) or not address.startswith(("http://", "https://")):
            raise DistrenError('send {"address": "http://HOST:PORT"}: the peer\'s HTTP address')
        name, theirs = await run_in_threadpool(server.peering.introduce_to, address)
        await run_in_threadpool(server.gossip.sync_once)  # learn the new peer's jobs at once
        return {"peer": f"distren://{name}/", "address": address, "there": theirs}

    @api.delete("/api/peers/{name}")
    def remove_peer(name: str, u=Depends(admin)):
        server.peering.remove(name)
        return {"removed": f"distren://{name}/"}

    @api.post("/api/peers/{name}/trust")
    def trust_peer(name: str, u=Depends(admin)):
        name = urls.check_server_name(name)
        return {"trusted": f"distren://{name}/", "again": server.verifier.trust_again(name)}

    @api.get("/api/peers/pending")
    def pending_peers(u=Depends(admin)):
        return server.peering.pending()

    @api.post("/api/peers/{name}/accept")
    def accept_peer(name: str, u=Depends(admin)):
        server.peering.accept(name)
        return {"accepted": f"distren://{name}/"}

    @api.post("/api/peers/{name}/reject")
    def reject_peer(name: str, u=Depends(admin)):
        server.peering.reject(name)
        return {"rejected": f"distren://{name}/"}

    @api.post("/api/users", status_code=201)
    def add_user(body: dict, u=Depends(admin)):
        name = body.get("name") if isinstance(body, dict) else None
        make_admin = body.get("admin", False) if isinstance(body, dict) else False
        if not isinstance(name, str) or not isinstance(make_admin, bool):
            raise DistrenError('send {"name": "USER"} and optionally "admin": true')
        token = users.add(name, make_admin)
        return {"user": str(server.url.user(name)), "token": token, "admin": make_admin}

    @api.get("/api/users")
    def user_list(u=Depends(admin)):
        return users.list()

    @api.post("/api/users/{name}/revoke")
    def revoke_user(name: str, u=Depends(admin)):
        newly = users.revoke(name)
        return {"revoked": str(server.url.user(name)), "already": not newly}

    return api
