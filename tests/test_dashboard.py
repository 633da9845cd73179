"""The dashboard in one process (Starlette's TestClient): sign-in and sessions, who sees what,
escaping of hostile text, thumbnails, the live stream's bounds. The browser test
(test_dashboard_browser.py) drives the same pages in Chromium against a real server."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from conftest import SCENES, wait_for
from distren.api import create_app, live
from distren.pack import pack
from distren.service import Server, Settings

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>&amp;'


def in_process(tmp_path: Path, slots: int = 0) -> tuple[Server, TestClient]:
    server = Server(Settings(name="solo", data=tmp_path / "solo", slots=slots, advertise="http://solo.test:80"))
    server.start()
    return server, TestClient(create_app(server), base_url="http://solo.test")


def token_of(server: Server) -> str:
    return (server.settings.data / "admin.token").read_text().strip()


def submit(http: TestClient, token: str, bundle: Path) -> int:
    r = http.post("/api/jobs", content=bundle.read_bytes(), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def sign_in(http: TestClient, token: str) -> None:
    r = http.post("/signin", data={"token": token, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/", r.text


@pytest.fixture
def bundle(tmp_path) -> Path:
    out = tmp_path / "job.tar"
    pack(SCENES / "textured" / "textured.ini", out, 32, 24, "1-2")
    return out


@pytest.fixture
def solo(tmp_path):
    server, http = in_process(tmp_path)
    yield server, http
    server.stop()


def test_pages_need_a_session_and_sign_in_sets_a_strict_cookie(solo, bundle):
    server, http = solo
    job = submit(http, token_of(server), bundle)
    r = http.get(f"/jobs/{job}?x=1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/signin?next=%2Fjobs%2F1%3Fx%3D1"
    assert http.get(f"/jobs/{job}/frames/1/log").status_code == 401
    assert http.get(f"/jobs/{job}/frames/1/thumb.png").status_code == 401
    assert http.get("/live/jobs").status_code == 401

    bad = http.post("/signin", data={"token": "wrong", "next": "/"})
    assert bad.status_code == 401 and "not valid on this server" in bad.text and "Set-Cookie" not in bad.headers

    r = http.post("/signin", data={"token": token_of(server), "next": f"/jobs/{job}"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{job}"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    page = http.get(f"/jobs/{job}")
    assert page.status_code == 200 and "textured.ini" in page.text and 'id="f2"' in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self' covers it
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_sign_in_goes_only_to_this_servers_pages_and_refuses_other_sites(solo):
    server, http = solo
    for target in ("//evil.example/", "https://evil.example/", "\\\\evil", "javascript:alert(1)"):
        r = http.post("/signin", data={"token": token_of(server), "next": target}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/", target
    r = http.post("/signin", data={"token": token_of(server)}, headers={"Origin": "http://evil.example"},
                  follow_redirects=False)
    assert r.status_code == 403 and "another site" in r.text


def test_sign_out_needs_the_forms_csrf_token_then_ends_the_session(solo):
    server, http = solo
    sign_in(http, token_of(server))
    page = http.get("/").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert http.post("/signout", data={"csrf": "forged"}).status_code == 403
    assert http.get("/", follow_redirects=False).status_code == 200  # still signed in
    r = http.post("/signout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    assert http.get("/", follow_redirects=False).status_code == 303


def test_a_user_sees_only_their_jobs_and_an_admin_all(solo, bundle):
    server, http = solo
    admin = token_of(server)
    bea = http.post("/api/users", json={"name": "bea"}, headers={"Authorization": f"Bearer {admin}"}).json()["token"]
    theirs = submit(http, admin, bundle)
    hers = submit(http, bea, bundle)

    sign_in(http, bea)
    front = http.get("/").text
    assert f'href="/jobs/{hers}"' in front and f'href="/jobs/{theirs}"' not in front
    assert "distren://solo/user/admin" not in front and 'name="owner"' not in front  # no owner filter for her
    for path in (f"/jobs/{theirs}", f"/jobs/{theirs}/frames/1", f"/jobs/{theirs}/frames/1/log",
                 f"/jobs/{theirs}/frames/1/thumb.png", f"/jobs/{theirs}/result.tar", f"/live/jobs/{theirs}"):
        r = http.get(path, headers={"Accept": "text/html"})
        assert r.status_code == 404 and f"no job {theirs} on this server" in r.text, path
    assert http.get(f"/jobs/{hers}").status_code == 200

    # Revoking her ends her session at once.
    http.post("/api/users/bea/revoke", headers={"Authorization": f"Bearer {admin}"})
    assert http.get(f"/jobs/{hers}", follow_redirects=False).status_code == 303

    sign_in(http, admin)
    front = http.get("/").text
    assert f'href="/jobs/{hers}"' in front and f'href="/jobs/{theirs}"' in front
    only_bea = http.get("/", params={"owner": "distren://solo/user/bea"}).text
    assert f'href="/jobs/{hers}"' in only_bea and f'href="/jobs/{theirs}"' not in only_bea
    assert 'href="/jobs/' not in http.get("/", params={"state": "done"}).text
    bad = http.get("/", params={"state": "<b>nope</b>"}, headers={"Accept": "text/html"})
    assert bad.status_code == 400 and "state:" in bad.text and "<b>nope" not in bad.text


def test_hostile_reasons_are_escaped_on_every_page_and_in_live_updates(solo, bundle):
    server, http = solo
    job = submit(http, token_of(server), bundle)
    assert server.life.claim("distren://solo/", job)  # frame 1, as a slot would take it
    server.life.render_failed(job, 1, "distren://solo/", HOSTILE, max_attempts=1)
    sign_in(http, token_of(server))
    for path in ("/", f"/jobs/{job}", f"/jobs/{job}/frames/1"):
        page = http.get(path).text
        assert "<script>alert" not in page and "onerror=alert(1)>" not in page, path
    assert str(escape(HOSTILE)) in http.get(f"/jobs/{job}/frames/1").text

    with http.stream("GET", f"/live/jobs/{job}") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        data = next(line for line in r.iter_lines() if line.startswith("data: "))
    update = json.loads(data.removeprefix("data: "))
    assert [1, "failed", "solo", None] in update["frames"]
    assert "<script>alert" not in update["html"]["events"] and "&lt;script&gt;" in update["html"]["events"]


def test_admins_see_the_peers_jobs_this_server_helps_with_marked_and_escaped(solo):
    server, http = solo
    admin = token_of(server)
    bea = http.post("/api/users", json={"name": "bea"}, headers={"Authorization": f"Bearer {admin}"}).json()["token"]
    hostile = "distren://beta/job/1" + HOSTILE
    server.store.record_announcement(hostile, "beta", {"job": hostile, "origin": "beta", "backends": ["povray"],
                                                       "frames": 7, "address": "http://beta.test"}, True)
    server.store.record_announcement("distren://gamma/job/2", "gamma", {
        "job": "distren://gamma/job/2", "origin": "gamma", "backends": ["unheard-of"], "frames": 1}, True)
    sign_in(http, admin)
    front = http.get("/").text
    assert "peer's job" in front and str(escape(hostile)) in front and "<script>alert" not in front
    assert "distren://gamma/job/2" not in front  # this server cannot render it: no help from here
    sign_in(http, bea)
    assert "distren://beta/job/1" not in http.get("/").text


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_forms_act_by_the_apis_rules_and_only_with_the_sessions_csrf_token(solo, bundle):
    server, http = solo
    admin = token_of(server)
    bea = http.post("/api/users", json={"name": "bea"}, headers={"Authorization": f"Bearer {admin}"}).json()["token"]
    theirs, hers = submit(http, admin, bundle), submit(http, bea, bundle)
    sign_in(http, bea)
    csrf = csrf_of(http.get(f"/jobs/{hers}").text)
    html_ = {"Accept": "text/html"}
    assert http.post(f"/jobs/{hers}/cancel", data={"csrf": "forged"}, headers=html_).status_code == 403
    assert http.post(f"/jobs/{hers}/cancel", data={}, headers=html_).status_code == 403
    assert http.post(f"/jobs/{theirs}/cancel", data={"csrf": csrf}, headers=html_).status_code == 404
    assert http.post(f"/jobs/{hers}/explode", data={"csrf": csrf}, headers=html_).status_code == 404
    assert server.store.get_job(theirs).state == server.store.get_job(hers).state == "queued"
    r = http.post(f"/jobs/{hers}/cancel", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{hers}"
    assert server.store.get_job(hers).state == "cancelled"
    page = http.get(f"/jobs/{hers}").text
    assert "cancelled by bea" in page and "Cancel the job" not in page
    again = http.post(f"/jobs/{hers}/cancel", data={"csrf": csrf}, headers=html_)
    assert again.status_code == 409 and "already cancelled" in again.text and "<!doctype html>" in again.text

    sign_in(http, admin)
    assert server.life.claim("distren://solo/", theirs)
    server.life.render_failed(theirs, 1, "distren://solo/", "it broke", max_attempts=1)
    page = http.get(f"/jobs/{theirs}/frames/1").text
    assert "Render it again" in page
    bad = http.post(f"/jobs/{theirs}/retry", data={"csrf": csrf_of(page), "frame": "x"}, headers=html_)
    assert bad.status_code == 400 and "frame:" in bad.text
    r = http.post(f"/jobs/{theirs}/retry", data={"csrf": csrf_of(page), "frame": "1"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{theirs}/frames/1"
    assert server.store.frame(theirs, 1).state == "queued"


def test_steering_forms_pause_resume_prioritise_and_requeue(solo, bundle):
    server, http = solo
    job = submit(http, token_of(server), bundle)
    sign_in(http, token_of(server))
    csrf = csrf_of(http.get(f"/jobs/{job}").text)
    html_ = {"Accept": "text/html"}
    assert http.post(f"/jobs/{job}/pause", data={"csrf": csrf}).status_code == 200  # followed back to the page
    assert server.store.get_job(job).state == "paused" and "Resume" in http.get(f"/jobs/{job}").text
    assert http.post(f"/jobs/{job}/resume", data={"csrf": csrf}, headers=html_).status_code == 200
    assert server.store.get_job(job).state == "queued"
    for bad in ("high", "1001", "", "1e3", "-99999999"):
        r = http.post(f"/jobs/{job}/priority", data={"csrf": csrf, "priority": bad}, headers=html_)
        assert r.status_code == 400 and "priority:" in r.text, bad
    http.post(f"/jobs/{job}/priority", data={"csrf": csrf, "priority": "-3"})
    assert server.store.get_job(job).priority == -3
    http.post(f"/jobs/{job}/cancel", data={"csrf": csrf})
    assert server.store.get_job(job).state == "cancelled"
    assert "Render the unfinished frames again" in http.get(f"/jobs/{job}").text
    http.post(f"/jobs/{job}/requeue", data={"csrf": csrf})
    assert server.store.get_job(job).state == "queued"


def test_live_views_are_bounded(solo, monkeypatch):
    server, http = solo
    sign_in(http, token_of(server))
    monkeypatch.setattr(live, "MAX_CLIENTS", 1)
    with http.stream("GET", "/live/servers") as first:
        assert next(ln for ln in first.iter_lines() if ln.startswith("event: ")) == "event: update"
        second = http.get("/live/servers")
        assert second.status_code == 503 and "too many live views" in second.json()["error"]

    def opens() -> bool:
        with http.stream("GET", "/live/servers") as again:
            return again.status_code == 200
    wait_for(opens, "the closed stream's place to be given back", timeout=10)


def test_servers_page_and_no_assets_from_elsewhere(solo):
    server, http = solo
    sign_in(http, token_of(server))
    page = http.get("/servers").text
    assert "solo" in page and "this server" in page and "online" in page and "povray" in page
    for path in ("/", "/servers", "/signin"):
        text = http.get(path).text
        assert not re.search(r'(src|href)="(https?:)?//', text), path
    assert http.get("/docs").status_code == 404 and http.get("/openapi.json").status_code == 200
    assert http.get("/static/dashboard.js").status_code == 200


def test_thumbnails_of_rendered_frames_are_made_in_the_sandbox_and_cached(tmp_path, bundle):
    server, http = in_process(tmp_path, slots=1)
    try:
        job = submit(http, token_of(server), bundle)
        wait_for(lambda: server.store.get_job(job).state == "done", "the job to render", timeout=60)
        sign_in(http, token_of(server))
        page = http.get(f"/jobs/{job}").text
        assert page.count("/thumb.png?v=") == 2 and 'href="/jobs/1/result.tar"' in page
        r = http.get(f"/jobs/{job}/frames/2/thumb.png")
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG") and r.headers["content-type"] == "image/png"
        cached = sorted(p.name for p in (server.store.job_dir(job) / "previews").iterdir())
        assert len(cached) == 4  # both frames, both sizes, in one sandboxed run
        full = http.get(f"/jobs/{job}/frames/1/image.png")
        assert full.status_code == 200 and full.content.startswith(b"\x89PNG")
        assert http.get(f"/jobs/{job}/frames/9/thumb.png").status_code == 404
        assert http.get(f"/jobs/{job}/result.tar").content[257:262] == b"ustar"
    finally:
        server.stop()


def test_a_movie_jobs_page_offers_the_movie(tmp_path):
    out = tmp_path / "movie.tar"
    pack(SCENES / "textured" / "textured.ini", out, 32, 24, "1-3", movie=True)
    server, http = in_process(tmp_path, slots=2)
    try:
        job = submit(http, token_of(server), out)
        wait_for(lambda: server.store.get_job(job).state == "done", "the movie job to render", timeout=90)
        sign_in(http, token_of(server))
        page = http.get(f"/jobs/{job}").text
        assert f'<video class="movie" controls preload="none" src="/jobs/{job}/movie">' in page
        movie = http.get(f"/jobs/{job}/movie")
        assert movie.status_code == 200 and movie.headers["content-type"] == "video/mp4"
        assert movie.content[4:8] == b"ftyp"  # an MP4's first box
        assert page.count("/thumb.png?v=") == 3  # the frames; the movie frame has no image
    finally:
        server.stop()


def test_a_server_stops_promptly_with_a_live_view_open(start_server):
    server = start_server("alpha", "--slots", "0")
    with httpx.Client(base_url=server.http) as c:
        assert c.post("/signin", data={"token": server.token}).status_code == 303
        with c.stream("GET", "/live/jobs", timeout=30) as live:
            assert live.status_code == 200 and next(live.iter_lines()) == "event: update"
            started = time.monotonic()
            server.proc.terminate()
            server.proc.wait(timeout=20)
    assert time.monotonic() - started < 8, "an open live view held the server up"
