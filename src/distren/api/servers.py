"""``/fed``: what servers ask of each other (docs/protocol.md). Every request but the hello is
signed with its sender's pinned key, and accepted only from a server the peering policy accepts; the signature covers the method, the path with its query,
a digest of the body, a time, a nonce and the name of the server it is meant for.

Handlers that touch SQLite or files run in the thread pool, never on the event loop."""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response

from .. import identity, longpoll, urls
from ..errors import BundleError, DistrenError
from .common import MAX_SIGNED_BODY, Id, content_length, receive_file

if TYPE_CHECKING:
    from ..service import Server


def router(server: Server) -> APIRouter:
    api = APIRouter()
    peering, gossip, origin = server.peering, server.gossip, server.origin
    waiters = origin.waiters

    def path_of(request: Request) -> str:
        q = request.url.query
        return request.url.path + (f"?{q}" if q else "")

    def verify(request: Request, digest: str, seen_nonce=server.store.seen_nonce) -> str:
        return identity.verify_request(request.headers, request.method, path_of(request), digest,
                                       peering.key_for_request, seen_nonce, me=server.url.name)

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

    @api.post("/fed/hello")
    async def hello(body: dict, request: Request):
        source = request.client.host if request.client else ""
        return await run_in_threadpool(peering.accept_hello, body, source)

    @api.get("/fed/hello")
    async def own_hello():  # how a stranger's claimed address is confirmed (no I/O: on the loop)
        return peering.hello()

    @api.get("/.well-known/distren")
    async def well_known():
        return peering.well_known()

    def hops(request: Request) -> int:
        try:
            return max(0, int(request.query_params.get("hops") or 0))
        except ValueError:
            raise DistrenError("malformed request: hops must be the relays since the origin (a number)") from None

    @api.post("/fed/announce")
    async def announce(request: Request):
        sender, body = await signed(request)
        news = await run_in_threadpool(gossip.receive, sender, json_body(body), hops(request))
        return {"news": news}

    def revalidated(request: Request, data: dict) -> Response:
        """A JSON answer with its ETag (a hash of the body); ``304`` and no body to a request that
        names it in If-None-Match. Private (signed requests), always revalidated."""
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if etag in (t.strip() for t in request.headers.get("if-none-match", "").split(",")):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)

    @api.get("/fed/state")
    async def fed_state(request: Request):
        sender, _ = await signed(request)
        return revalidated(request, await run_in_threadpool(gossip.state, sender, request.query_params.get("since")))

    def grant(request: Request):
        """The lease asked for, or None; and how to ask again without the (spent) nonce."""
        job_id = int(request.path_params["job_id"])
        if not 0 <= job_id <= urls.MAX_ID:
            raise DistrenError(f"malformed request: job id {str(job_id)[:30]} is not an id (0 to {urls.MAX_ID})")
        if content_length(request):
            raise DistrenError("a lease request has no body")
        nonces: list[tuple[str, float]] = []  # recorded with the claim, in one transaction
        sender = verify(request, identity.EMPTY_SHA256, lambda n, exp: nonces.append((n, exp)))
        q = request.query_params
        can = q.get("can")

        def ask(nonce):
            return origin.grant_lease(sender, job_id, nonce, None if can is None else set(can.split(",")),
                                      q.get("request"), q.get("slots"))

        # Asked again after a wait, the nonce is already recorded (with the first answer, none).
        return ask(nonces[0]), lambda: ask(None)

    def wait_of(request: Request) -> float:
        value = request.query_params.get("wait", "0")
        try:
            wait = float(value)
        except ValueError:
            raise DistrenError(f"malformed lease request: wait={value[:20]!r} is not a number of seconds") from None
        return min(longpoll.MAX_WAIT, wait) if wait > 0 else 0.0  # NaN and negatives: no wait

    async def lease(request: Request):
        # The busiest call a server answers (every idle slot of every peer asks), so it is a
        # plain Starlette route: no FastAPI parameter machinery between the socket and the work.
        # With ?wait=S and no frame ready, the request waits (on the loop, no thread held) for a
        # change that may make one ready, then asks once more (longpoll.py).
        woken = False
        try:
            wait = wait_of(request)
            generation = waiters.generation
            granted, again = await run_in_threadpool(grant, request)
            if granted is None and wait:
                woken = await waiters.wait(int(request.path_params["job_id"]), generation, wait)
                if woken:
                    granted = await run_in_threadpool(again)
        except DistrenError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        if granted is None:
            # Woken but nothing for us: the renderer asks the origin's other jobs again at once.
            return Response(status_code=204, headers={"X-Distren-Woken": "1"} if woken else None)
        xml, sha, expires = granted
        return Response(xml, media_type="application/xml",
                        headers={"X-Distren-Bundle-SHA256": sha, "X-Distren-Lease-Expires": f"{expires:.3f}",
                                 "X-Distren-Now": f"{time.time():.3f}"})

    api.add_route("/fed/jobs/{job_id:int}/lease", lease, methods=["POST"])

    def sending(path, sha: str, end, on_sent=None) -> Response:
        """A bundle, named by its hash (so it never changes: cacheable for good, by the asker);
        ``end()`` when the send is over, however; ``on_sent()`` once it all went out."""
        class Sent(FileResponse):
            async def __call__(self, scope, receive, send):
                done = False
                try:
                    await super().__call__(scope, receive, send)
                    done = True
                finally:
                    end()
                    if done and on_sent is not None:
                        on_sent()

        return Sent(path, media_type="application/x-tar",
                    headers={"X-Content-SHA256": sha, "ETag": f'"{sha}"', "Cache-Control": "private, immutable"})

    @api.get("/fed/jobs/{job_id}/bundle")
    async def job_bundle(job_id: Id, request: Request):
        sender, _ = await signed(request)
        path, sha = await run_in_threadpool(origin.bundle, sender, job_id)
        origin.sends.start(sha, "this bundle")  # Busy (503): its holders have it, or soon will
        return sending(path, sha, lambda: origin.sends.end(sha), lambda: origin.bundle_sent(sha, sender))

    @api.get("/fed/jobs/{job_id}/bundle/peers")
    async def job_bundle_peers(job_id: Id, request: Request):
        sender, _ = await signed(request)
        return await run_in_threadpool(origin.bundle_peers, sender, job_id)

    @api.get("/fed/bundles/{sha}")
    async def passed_on(sha: str, request: Request):
        # Another origin's bundle that this server holds, for a renderer its origin granted it to.
        sender, _ = await signed(request)
        scenes = server.renderer.scenes
        path = await run_in_threadpool(scenes.serve, sha, request.headers.get("X-Distren-Grant", ""), sender,
                                       server.store.peer_key)
        scenes.sends.start("all", "this server's bundles")
        return sending(path, sha, lambda: scenes.sends.end("all"))

    @api.get("/fed/jobs/{job_id}/frames/{frame_id}")
    async def fed_frame(job_id: Id, frame_id: Id, request: Request):
        await signed(request)
        return revalidated(request, await run_in_threadpool(origin.frame_state, job_id, frame_id))

    @api.get("/fed/jobs/{job_id}/frames/{frame_id}/files")
    async def fed_frame_files(job_id: Id, frame_id: Id, request: Request):
        sender, _ = await signed(request)
        q = request.query_params
        for_frame = None
        if "for_server" in q:  # the frame depending on this one that the sender renders
            for_frame = urls.FrameURL(urls.check_server_name(q["for_server"]), frame_param(q, "for_job"),
                                      frame_param(q, "for_frame"))
        path = await run_in_threadpool(origin.frame_files, sender, job_id, frame_id, for_frame)
        return FileResponse(path, media_type="application/x-tar")

    def frame_param(q, name: str) -> int:
        value = q.get(name, "")
        if not value.isdigit() or not 0 <= int(value) <= urls.MAX_ID:
            raise DistrenError(f"malformed request: {name}={value[:30]!r} is not an id (0 to {urls.MAX_ID})")
        return int(value)

    @api.get("/fed/jobs/{job_id}/frames/{frame_id}/vouch")
    async def fed_vouch(job_id: Id, frame_id: Id, request: Request):
        # The asker is the origin of the frame depended on; ``server`` asks it for that frame's files.
        sender, _ = await signed(request)
        q = request.query_params
        dep = urls.FrameURL(sender, frame_param(q, "job"), frame_param(q, "frame"))
        server_name = urls.check_server_name(q.get("server", ""))
        return await run_in_threadpool(origin.vouch, job_id, frame_id, server_name, dep)

    @api.post("/fed/jobs/{job_id}/frames/{frame_id}/renew")
    async def renew(job_id: Id, frame_id: Id, request: Request):
        sender, _ = await signed(request)
        expires = await run_in_threadpool(origin.renew, sender, job_id, frame_id)
        return JSONResponse({"expires": expires}, headers={"X-Distren-Now": f"{time.time():.3f}"})

    @api.post("/fed/jobs/{job_id}/frames/{frame_id}/log")
    async def remote_log(job_id: Id, frame_id: Id, request: Request):
        sender, body = await signed(request)
        await run_in_threadpool(origin.accept_log, sender, job_id, frame_id, str(json_body(body).get("log", "")))
        return {"ok": True}

    @api.post("/fed/jobs/{job_id}/frames/{frame_id}/failed")
    async def remote_failed(job_id: Id, frame_id: Id, request: Request):
        sender, body = await signed(request)
        data = json_body(body)
        await run_in_threadpool(origin.accept_failure, sender, job_id, frame_id, str(data.get("reason", "")),
                                str(data.get("log", "")))
        return {"ok": True}

    @api.put("/fed/jobs/{job_id}/frames/{frame_id}/result")
    async def remote_result(job_id: Id, frame_id: Id, request: Request):
        # The signature covers the digest the sender claims: check it before taking any bytes,
        # then stream to disk while hashing and compare.
        claimed = request.headers.get("X-Content-SHA256", "")
        sender = await run_in_threadpool(verify, request, claimed)
        await run_in_threadpool(origin.leased_to_or_done, sender, job_id, frame_id)
        path, digest = await receive_file(request, server.store.staging_dir(), "result",
                                          server.settings.max_result_bytes, "the frame tarball")

        def accept() -> str:
            try:
                if digest != claimed:
                    raise BundleError("the upload's content does not match its X-Content-SHA256; send it again")
                return origin.accept_result(sender, job_id, frame_id, path)
            finally:
                path.unlink(missing_ok=True)  # off the loop too: a busy disk can make it wait

        return {"result": await run_in_threadpool(accept)}

    return api
