"""``/``: the dashboard, for people with a browser. Server-rendered pages (Jinja2, every value
escaped: job names, reasons and logs are hostile text), a little JavaScript for live updates
(server-sent events, :mod:`~distren.api.live`), no asset from elsewhere.

Sign-in takes a user's token and keeps a session (:mod:`~distren.api.sessions`); every page then
follows the API's access rules: a user sees their own jobs, an admin every job
(:meth:`distren.users.Users.job_for`, as ``owned()`` in :mod:`~distren.api.clients`). Handlers
that read SQLite or files are plain ``def``: FastAPI runs them in worker threads, off the event
loop."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.background import BackgroundTask

from .. import __version__, states
from ..errors import Busy, DistrenError, Forbidden, NotFound, Unauthorized
from ..steering import MAX_PRIORITY, MIN_PRIORITY, check_priority
from ..previews import THUMB, VIEW
from .common import Id
from .live import Live
from .sessions import COOKIE, LIFETIME, Session, Sessions

if TYPE_CHECKING:
    from ..service import Server

PACKAGE = Path(__file__).resolve().parents[1]
STATIC = PACKAGE / "static"
LOG_SHOWN = 256 << 10  # characters of a frame's log shown on its page (the whole log is a link away)

# No inline script or style, nothing from elsewhere: markup that slipped past escaping could
# still run nothing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; media-src 'self'; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
PAGE_PREFIXES = ("/jobs", "/servers", "/signin", "/signout", "/live", "/static")
ENV = Environment(loader=FileSystemLoader(PACKAGE / "templates"), autoescape=select_autoescape(default=True),
                  trim_blocks=True, lstrip_blocks=True)


def is_page(path: str) -> bool:
    """Whether a request is the dashboard's (its errors are answered as pages, not JSON)."""
    return path == "/" or path.startswith(PAGE_PREFIXES)


def render(request: Request, template: str, status: int = 200, **ctx) -> HTMLResponse:
    html = ENV.get_template(template).render(server=request.app.state.server.url.name, version=__version__, **ctx)
    return HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


async def error_page(request: Request, exc: DistrenError) -> HTMLResponse:
    return await run_in_threadpool(render, request, "error.html", exc.status, title="Error", error=str(exc))


class Person:
    def __init__(self, name: str, admin: bool, session: Session):
        self.name, self.admin, self.session = name, admin, session


class SignIn(Exception):
    """No valid session: a page sends the person to sign in, then back."""


def router(server: Server) -> APIRouter:
    web = APIRouter(include_in_schema=False)
    sessions, live = Sessions(), Live(server.bus)
    board, users, previews, views = server.dashboard, server.users, server.previews, server.views

    def person(request: Request) -> Person:
        session = sessions.get(request.cookies.get(COOKIE))
        if session is None:
            raise SignIn()
        try:
            name, admin = users.authenticate(session.token)  # a revoked user is out at once
        except Unauthorized:
            sessions.drop(request.cookies.get(COOKIE))
            raise SignIn() from None
        return Person(name, admin, session)

    def signed_in(request: Request) -> Person:
        try:
            return person(request)
        except SignIn:
            raise Unauthorized("sign in first, at /signin") from None

    def page(request: Request, template: str, make) -> HTMLResponse | RedirectResponse:
        """``template`` with what ``make(person)`` answers, or the way to sign in."""
        try:
            who = person(request)
        except SignIn:
            back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/signin?" + urlencode({"next": back}), status_code=303)
        return render(request, template, me=who, **make(who))

    def owned(who: Person, job_id: int) -> int:
        return users.job_for(job_id, who.name, who.admin)

    def jobs_filter(request: Request) -> tuple[str | None, str | None]:
        state = request.query_params.get("state") or None
        owner = request.query_params.get("owner") or None
        if state is not None and state not in states.JOB_STATES:
            raise DistrenError(f"state: {state[:40]!r} is not a job state; pick one of {', '.join(states.JOB_STATES)}")
        return state, owner

    # --- pages ---

    @web.get("/", response_class=HTMLResponse)
    def jobs_page(request: Request):
        state, owner = jobs_filter(request)
        query = urlencode({k: v for k, v in (("state", state), ("owner", owner)) if v})
        return page(request, "jobs.html", lambda who: dict(
            title="Jobs", live="/live/jobs" + (f"?{query}" if query else ""), state=state, owner=owner,
            job_states=states.JOB_STATES, **board.jobs(who.name, who.admin, state, owner)))

    @web.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: Id):
        return page(request, "job.html", lambda who: dict(
            title=f"Job {job_id}", live=f"/live/jobs/{job_id}", job=board.job(owned(who, job_id))))

    @web.get("/jobs/{job_id}/frames/{frame_id}", response_class=HTMLResponse)
    def frame_page(request: Request, job_id: Id, frame_id: Id):
        def make(who: Person) -> dict:
            frame = board.frame(owned(who, job_id), frame_id)
            log = views.frame_log(job_id, frame_id)
            return dict(title=f"Job {job_id}, frame {frame_id}", frame=frame, log=log[-LOG_SHOWN:],
                        log_cut=len(log) > LOG_SHOWN)
        return page(request, "frame.html", make)

    @web.get("/servers", response_class=HTMLResponse)
    def servers_page(request: Request):
        return page(request, "servers.html", lambda who: dict(title="Servers", live="/live/servers",
                                                              servers=board.servers()))

    # --- files: a frame's log and images, a job's bundle and movie ---

    @web.get("/jobs/{job_id}/frames/{frame_id}/log")
    def frame_log(request: Request, job_id: Id, frame_id: Id):
        text = views.frame_log(owned(signed_in(request), job_id), frame_id)
        return PlainTextResponse(text or "(no log yet: the frame has not been rendered)",
                                 headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})

    @web.get("/jobs/{job_id}/frames/{frame_id}/thumb.png")
    def thumbnail(request: Request, job_id: Id, frame_id: Id):
        return image(request, job_id, frame_id, THUMB)

    @web.get("/jobs/{job_id}/frames/{frame_id}/image.png")
    def view_image(request: Request, job_id: Id, frame_id: Id):
        return image(request, job_id, frame_id, VIEW)

    def image(request: Request, job_id: int, frame_id: int, side: int) -> FileResponse:
        path = previews.path(owned(signed_in(request), job_id), frame_id, side)
        # The page names each image with its hash (?v=): a browser may keep it, a re-render is new.
        return FileResponse(path, media_type="image/png",
                            headers={**SECURITY_HEADERS, "Cache-Control": "private, max-age=86400"})

    @web.get("/jobs/{job_id}/result.tar")
    def result(request: Request, job_id: Id):
        owned(signed_in(request), job_id)
        name = f"{server.url.name}-job-{job_id}.tar"
        if server.store.get_job(job_id).state in (states.FAILED, states.CANCELLED):
            partial = server.jobs.partial_result(job_id)  # made for this request, removed once sent
            return FileResponse(partial, media_type="application/x-tar", filename=name, headers=SECURITY_HEADERS,
                                background=BackgroundTask(partial.unlink))
        return FileResponse(views.result(job_id), media_type="application/x-tar", filename=name,
                            headers=SECURITY_HEADERS)

    @web.get("/jobs/{job_id}/movie")
    def movie(request: Request, job_id: Id):
        path, media = previews.movie(owned(signed_in(request), job_id))
        return FileResponse(path, media_type=media, headers={**SECURITY_HEADERS, "Cache-Control": "private"})

    # --- live updates: the parts of each page that change ---

    @web.get("/live/jobs")
    async def live_jobs(request: Request):
        state, owner = jobs_filter(request)
        return await stream(request, lambda who: {"html": {"jobs": ENV.get_template("_jobs.html").render(
            me=who, **board.jobs(who.name, who.admin, state, owner))}})

    @web.get("/live/jobs/{job_id}")
    async def live_job(request: Request, job_id: Id):
        sent: dict[int, list] = {}  # this stream's frames as last sent: a job may have 100,000

        def snapshot(who: Person) -> dict:
            job = board.job(owned(who, job_id))
            changed = []
            for f in job["frames"]:
                row = [f["id"], f["state"], f["server"], f["image"]]
                if sent.get(f["id"]) != row:
                    sent[f["id"]] = row
                    changed.append(row)
            return {"html": {"job-head": ENV.get_template("_job_head.html").render(job=job, me=who),
                             "events": ENV.get_template("_events.html").render(job=job)},
                    "frames": changed}
        return await stream(request, snapshot)

    @web.get("/live/servers")
    async def live_servers(request: Request):
        return await stream(request, lambda who: {"html": {"servers": ENV.get_template("_servers.html").render(
            servers=board.servers())}})

    async def stream(request: Request, snapshot):
        if live.full():
            raise Busy("too many live views are open on this server; reload the page in a while")
        # The first snapshot here, so that a job one may not see is a 404 like its page; every
        # later one checks the session and the user again (signed out or revoked: the stream ends).
        first = await run_in_threadpool(lambda: snapshot(signed_in(request)))
        return live.stream(lambda: snapshot(signed_in(request)), first)

    # --- actions: forms that change a job, by the API's rules, with the session's CSRF token ---

    def retry(job_id: int, by: str, form: dict[str, str]) -> None:
        frame = form.get("frame", "")
        if not frame.isdigit() or len(frame) > 18:
            raise DistrenError("frame: the id of the frame to render again")
        server.jobs.retry(job_id, int(frame), by)

    def priority(job_id: int, by: str, form: dict[str, str]) -> None:
        value = form.get("priority", "").strip()
        if not re.fullmatch(r"-?[0-9]{1,5}", value):
            raise DistrenError(f"priority: a whole number from {MIN_PRIORITY} to {MAX_PRIORITY} (higher renders first)")
        check_priority(int(value))
        server.jobs.set_priority(job_id, int(value), by)

    actions = {"cancel": lambda job_id, by, form: server.jobs.cancel(job_id, by), "retry": retry,
               "pause": lambda job_id, by, form: server.jobs.pause(job_id, by),
               "resume": lambda job_id, by, form: server.jobs.resume(job_id, by),
               "requeue": lambda job_id, by, form: server.jobs.requeue(job_id, None, by),
               "priority": priority}

    @web.post("/jobs/{job_id}/{action}")
    async def job_action(request: Request, job_id: Id, action: str):
        same_origin(request)
        form = await posted(request)

        def act() -> None:
            who = signed_in(request)
            if not Sessions.csrf_ok(who.session, form.get("csrf")):
                raise Forbidden("the form is stale or from another site; reload the page and try again")
            if action not in actions:
                raise NotFound(f"no action {action[:40]!r}; there are {', '.join(sorted(actions))}")
            actions[action](owned(who, job_id), who.name, form)
        await run_in_threadpool(act)
        back = f"/jobs/{job_id}" + (f"/frames/{form['frame']}" if action == "retry" else "")
        return RedirectResponse(back, status_code=303)

    # --- signing in and out ---

    @web.get("/signin", response_class=HTMLResponse)
    def signin_page(request: Request):
        return render(request, "signin.html", title="Sign in", next=local(request.query_params.get("next")))

    @web.post("/signin")
    async def signin(request: Request):
        same_origin(request)
        form = await posted(request)
        token = form.get("token", "").strip()
        back = local(form.get("next"))
        try:
            await run_in_threadpool(users.authenticate, token or None)
        except Unauthorized as e:
            return await run_in_threadpool(render, request, "signin.html", 401, title="Sign in", next=back,
                                           error=str(e))
        response = RedirectResponse(back, status_code=303)
        response.set_cookie(COOKIE, sessions.create(token), max_age=int(LIFETIME), path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    @web.post("/signout")
    async def signout(request: Request):
        same_origin(request)
        form = await posted(request)
        session = sessions.get(request.cookies.get(COOKIE))
        if session is not None:
            if not Sessions.csrf_ok(session, form.get("csrf")):
                raise Forbidden("the form is stale or from another site; reload the page and try again")
            sessions.drop(request.cookies.get(COOKIE))
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return web


async def posted(request: Request) -> dict[str, str]:
    """A form's fields (the first of each; BodyLimit bounds the body)."""
    return {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}


def local(target: str | None) -> str:
    """Where to go after signing in: a path on this server only (never ``//elsewhere``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def same_origin(request: Request) -> None:
    """A form posted from another site is refused. With SameSite=Strict cookies and the CSRF
    token it is the third lock; on the sign-in form, which has no session yet, the one."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        raise Forbidden("a form from another site was refused; use this server's own pages")
