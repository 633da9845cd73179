"""Users against each other, against real server processes: user B can neither see nor touch
user A's jobs (each refusal is the very answer a job that does not exist gets, and A's job is
unchanged), admins can, revoked and malformed tokens are refused, hostile user names are
refused at `user add`."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import sqlite3
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import SCENES, ServerProc, free_port, last_line

pytestmark = pytest.mark.e2e

NO_SUCH_JOB = 987654


def call(server: ServerProc, method: str, path: str, token: str | None, **kw) -> httpx.Response:
    headers = kw.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, server.http + path, headers=headers, timeout=30, **kw)


def raw_get(server: ServerProc, path: str, authorization: bytes) -> tuple[int, dict]:
    """A GET with exactly this Authorization header (httpx refuses to send some of them)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
                  + b"Authorization: " + authorization + b"\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def add_user(server: ServerProc, name: str, *extra: str) -> str:
    return server.cli("user", "add", name, *extra).stdout.strip().splitlines()[-1]


def wait_state(server: ServerProc, url: str, want: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = json.loads(server.cli("status", url, "--json").stdout)
        if st["state"] in want:
            return st
        assert time.monotonic() < deadline, f"{url} still {st['state']}, wanted {want}"
        time.sleep(0.2)


def submit(server: ServerProc, token: str, source: Path, *args: str) -> str:
    return last_line(server.cli("submit", str(source), "--width", "32", "--height", "24", *args, token=token))


def job_id(url: str) -> int:
    return int(url.rsplit("/", 1)[1])


@dataclass
class Site:
    render: ServerProc   # renders: jobs end done or failed
    queue: ServerProc    # --slots 0: jobs stay queued
    alice: str
    bob: str
    done: str            # alice's finished job on render
    failed: str          # alice's failed job on render
    queued: str          # alice's queued job on queue
    bob_job: str         # bob's finished job on render
    qalice: str          # their tokens on queue
    qbob: str


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("users")
    render = ServerProc("render", base / "render-data", free_port()).start()
    queue = ServerProc("queue", base / "queue-data", free_port(), ["--slots", "0"]).start()
    try:
        alice, bob = add_user(render, "alice"), add_user(render, "bob")
        # The same names on the other server, with that server's tokens.
        qalice, qbob = add_user(queue, "alice"), add_user(queue, "bob")
        done = submit(render, alice, SCENES / "textured", "--frames", "1")
        failed = submit(render, alice, SCENES / "broken" / "parse_error" / "scene.ini", "--frames", "1")
        bob_job = submit(render, bob, SCENES / "textured", "--frames", "2")
        queued = submit(queue, qalice, SCENES / "textured", "--frames", "1")
        for url in (done, bob_job):
            wait_state(render, url, {"done"})
        wait_state(render, failed, {"failed"})
        yield Site(render, queue, alice, bob, done, failed, queued, bob_job, qalice, qbob)
    finally:
        render.stop()
        queue.stop()


def snapshot(server: ServerProc, url: str) -> tuple:
    """Everything an admin sees of a job: status, events, result (if any)."""
    jid, tok = job_id(url), server.token
    st = call(server, "GET", f"/api/jobs/{jid}", tok)
    ev = call(server, "GET", f"/api/jobs/{jid}/events", tok)
    res = call(server, "GET", f"/api/jobs/{jid}/result", tok)
    return st.status_code, st.text, ev.text, res.status_code, hashlib.sha256(res.content).hexdigest()


# --- listing ---------------------------------------------------------------------------------


def test_each_user_lists_only_their_own_jobs_and_the_admin_all(site):
    def listed(token):
        r = call(site.render, "GET", "/api/jobs", token)
        assert r.status_code == 200
        return {j["url"] for j in r.json()}

    assert listed(site.alice) == {site.done, site.failed}
    assert listed(site.bob) == {site.bob_job}
    assert {site.done, site.failed, site.bob_job} <= listed(site.render.token)
    table = site.render.cli("jobs", token=site.bob).stdout
    assert site.bob_job in table and site.done not in table and site.failed not in table


# --- user B against user A's jobs: every route is a 404 like a missing job, nothing changes ---

ROUTES = {
    # route: (method, path, which of alice's jobs would change or leak if it were allowed)
    "status": ("GET", "/api/jobs/{job}", "done"),
    "events": ("GET", "/api/jobs/{job}/events", "done"),
    "log": ("GET", "/api/jobs/{job}/frames/1/log", "failed"),
    "result": ("GET", "/api/jobs/{job}/result", "done"),
    "cancel": ("POST", "/api/jobs/{job}/cancel", "queued"),
    "delete": ("DELETE", "/api/jobs/{job}", "done"),
    "retry": ("POST", "/api/jobs/{job}/frames/1/retry", "failed"),
    "requeue": ("POST", "/api/jobs/{job}/retry", "failed"),
    "pause": ("POST", "/api/jobs/{job}/pause", "queued"),
    "resume": ("POST", "/api/jobs/{job}/resume", "queued"),
    "priority": ("POST", "/api/jobs/{job}/priority", "queued"),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_another_user_gets_exactly_the_missing_job_answer_and_changes_nothing(site, route):
    method, path, which = ROUTES[route]
    url = getattr(site, which)
    server = site.queue if which == "queued" else site.render
    bob = site.qbob if which == "queued" else site.bob
    jid = job_id(url)
    before = snapshot(server, url)
    theirs = call(server, method, path.format(job=jid), bob)
    missing = call(server, method, path.format(job=NO_SUCH_JOB), bob)
    assert theirs.status_code == missing.status_code == 404, (theirs.text, missing.text)
    # Same words, same headers: nothing tells "not yours" from "not there".
    assert theirs.json()["error"] == missing.json()["error"].replace(str(NO_SUCH_JOB), str(jid))
    assert theirs.json()["error"] == f"no job {jid} on this server; `distren jobs` lists the jobs it has"
    assert theirs.headers.keys() == missing.headers.keys()
    assert snapshot(server, url) == before
    # The owner still can (the read-only routes; the rest would change the job).
    if method == "GET" and route != "result":
        assert call(server, method, path.format(job=jid), site.alice).status_code == 200


def test_the_cli_tells_another_user_the_job_does_not_exist(site, tmp_path):
    for cmd in (["status", site.done], ["events", site.done], ["log", f"{site.failed}/frame/1"],
                ["download", site.done, "-o", str(tmp_path / "got")], ["retry", f"{site.failed}/frame/1"],
                ["delete", site.done], ["cancel", site.done], ["retry", site.failed], ["pause", site.done],
                ["resume", site.done], ["priority", site.done, "5"]):
        before = snapshot(site.render, site.done)
        res = site.render.cli(*cmd, token=site.bob, check=False)
        assert res.returncode == 1 and f"no job {job_id(cmd[1].split('/frame/')[0])} on this server" in res.stderr, (cmd, res.stderr)
        assert snapshot(site.render, site.done) == before


def test_huge_and_negative_job_ids_are_missing_jobs_not_errors(site):
    for jid in (2**63, 2**63 - 1, 10**30, -1):
        r = call(site.render, "GET", f"/api/jobs/{jid}", site.bob)
        assert r.status_code == 404 and f"no job {jid} on this server" in r.json()["error"], (jid, r.text)


def test_a_dependency_on_another_users_frame_is_refused_like_a_missing_one(site, tmp_path):
    """A dependency's files land in the dependent frame's folder: it would read alice's frame."""
    tar = tmp_path / "dep.tar"
    site.render.cli("pack", str(SCENES / "textured"), "-o", str(tar), "--width", "32", "--height", "24",
                    "--frames", "1")

    def with_dep(target: str) -> Path:
        out = tmp_path / f"dep-{hashlib.sha1(target.encode()).hexdigest()[:8]}.tar"
        with tarfile.open(tar) as src, tarfile.open(out, "w") as dst:
            for m in src:
                data = src.extractfile(m).read() if m.isfile() else None
                if m.name == "distrenjob.xml":
                    data = data.replace(b'<frame name="frame/1" />',
                                        f'<frame name="frame/1"><dep name="{target}"/></frame>'.encode())
                    m.size = len(data)
                dst.addfile(m, io.BytesIO(data) if data is not None else None)
        return out

    jobs_before = call(site.render, "GET", "/api/jobs", site.render.token).json()
    for target, jid in ((f"{site.done}/frame/1", job_id(site.done)),
                        (f"distren://render/job/{NO_SUCH_JOB}/frame/1", NO_SUCH_JOB)):
        res = site.render.cli("submit", str(with_dep(target)), token=site.bob, check=False)
        assert res.returncode == 1, res.stdout
        assert f"depends on distren://render/job/{jid}/frame/1, which does not exist on this server" in \
            res.stderr.replace("\n", " ")
    assert call(site.render, "GET", "/api/jobs", site.render.token).json() == jobs_before
    # Her own frame she may depend on.
    url = last_line(site.render.cli("submit", str(with_dep(f"{site.done}/frame/1")), token=site.alice))
    assert wait_state(site.render, url, {"done", "failed"})["state"] == "done"


# --- tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [
    "", "Bearer", "Bearer ", "bearer    ", "Basic YWxpY2U6c2VjcmV0", "Token abc", "Bearer wrong",
    "Bearer " + "x" * 8000, "Bearer \u00e9t\u00e9",
])
def test_bad_authorization_headers_are_refused(site, header):
    code, body = raw_get(site.render, "/api/jobs", header.encode("latin-1"))
    assert code == 401, body
    err = body["error"]
    assert "token" in err and ("Bearer TOKEN" in err or "not valid" in err or "no token" in err), err
    assert call(site.render, "GET", "/api/jobs", site.alice).status_code == 200


def test_a_token_without_a_scheme_is_not_taken_as_one(site):
    r = httpx.get(f"{site.render.http}/api/jobs", headers={"Authorization": site.alice}, timeout=10)
    assert r.status_code == 401 and "Authorization: Bearer TOKEN" in r.json()["error"]


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr", "Bearer  "])
def test_the_bearer_scheme_is_case_insensitive(site, scheme):
    r = httpx.get(f"{site.render.http}/api/jobs", headers={"Authorization": f"{scheme} {site.alice}"}, timeout=10)
    assert r.status_code == 200 and {j["url"] for j in r.json()} >= {site.done}


def test_only_admins_manage_users(site):
    for method, path, body in (("GET", "/api/users", None), ("POST", "/api/users", {"name": "eve"}),
                               ("POST", "/api/users/alice/revoke", None)):
        r = call(site.render, method, path, site.bob, json=body)
        assert r.status_code == 403 and "'bob' is not an admin" in r.json()["error"], r.text
    names = {u["name"] for u in call(site.render, "GET", "/api/users", site.render.token).json()}
    assert "eve" not in names and call(site.render, "GET", "/api/jobs", site.alice).status_code == 200


HOSTILE_NAMES = {
    "dotdot": "../../etc/passwd",
    "slash": "a/b",
    "dot first": ".hidden",
    "space": "two words",
    "newline": "alice\nadmin",
    "nul": "al\x00ice",
    "escape": "\x1b[31mred",
    "empty": "",
    "65 chars": "a" * 65,
    "1 MB": "b" * 1_000_000,
    "non-ascii": "\u00e9mile",
    "url": "distren://render/user/x",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_NAMES))
def test_hostile_user_names_are_refused_clearly(site, case):
    name = HOSTILE_NAMES[case]
    before = call(site.render, "GET", "/api/users", site.render.token).json()
    r = call(site.render, "POST", "/api/users", site.render.token, json={"name": name})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "user name" in err and "letters, digits" in err, err
    assert len(err) < 400  # a megabyte name is not echoed back
    assert call(site.render, "GET", "/api/users", site.render.token).json() == before


def test_hostile_user_names_at_the_command_line(site):
    for name in ("../x", "a" * 300, "tab\there"):
        for cmd in ("add", "revoke"):
            res = site.render.cli("user", cmd, name, check=False)
            assert res.returncode == 1 and "user name" in res.stderr and "Traceback" not in res.stderr, res.stderr
    for body in ({"name": 5}, {"name": "ok", "admin": "yes"}, {}):
        r = call(site.render, "POST", "/api/users", site.render.token, json=body)
        assert r.status_code == 400 and '"name": "USER"' in r.json()["error"], r.text
    assert "ok" not in {u["name"] for u in call(site.render, "GET", "/api/users", site.render.token).json()}


# --- user list, revoke, more admins ----------------------------------------------------------


def test_revoked_token_stops_at_once_and_its_jobs_go_on(site):
    q = site.queue
    dave = add_user(q, "dave")
    url = submit(q, dave, SCENES / "textured", "--frames", "1")
    assert call(q, "GET", f"/api/jobs/{job_id(url)}", dave).status_code == 200
    res = q.cli("user", "revoke", "dave")
    assert "revoked distren://queue/user/dave" in res.stderr
    r = call(q, "GET", f"/api/jobs/{job_id(url)}", dave)
    assert r.status_code == 401 and "revoked" in r.json()["error"]
    assert q.cli("jobs", token=dave, check=False).returncode == 1
    # The job is still there, still queued; the admin sees it and can cancel it.
    assert json.loads(q.cli("status", url, "--json").stdout)["state"] == "queued"
    users = {u["name"]: u for u in json.loads(q.cli("user", "list", "--json").stdout)}
    assert users["dave"]["revoked"] is True and users["dave"]["jobs"] == 1 and users["dave"]["admin"] is False
    assert users["alice"]["revoked"] is False and users["admin"]["admin"] is True
    table = q.cli("user", "list").stdout
    assert "dave" in table and "revoked" in table
    # Revoking again is harmless; the name stays taken (its jobs name it).
    assert "was revoked already" in q.cli("user", "revoke", "dave").stderr
    res = q.cli("user", "add", "dave", check=False)
    assert res.returncode == 1 and "already exists" in res.stderr
    res = q.cli("user", "revoke", "nobody", check=False)
    assert res.returncode == 1 and "no user 'nobody'" in res.stderr


def test_last_admin_cannot_be_revoked_and_revoking_survives_sigkill(start_server):
    s = start_server("solo", "--slots", "0")
    res = s.cli("user", "revoke", "admin", check=False)
    assert res.returncode == 1 and "last admin" in res.stderr and "--admin" in res.stderr
    root = add_user(s, "root", "--admin")
    plain = add_user(s, "plain")
    assert call(s, "GET", "/api/users", root).status_code == 200
    # The new admin sees every job and may revoke the first admin; then it is the last one.
    url = submit(s, plain, SCENES / "textured", "--frames", "1")
    assert url in s.cli("jobs", token=root).stdout
    first = s.token
    s.cli("user", "revoke", "admin", token=root)
    assert call(s, "GET", "/api/jobs", first).status_code == 401
    res = s.cli("user", "revoke", "root", token=root, check=False)
    assert res.returncode == 1 and "last admin" in res.stderr
    s.kill()
    s.start()
    assert call(s, "GET", "/api/jobs", first).status_code == 401
    assert call(s, "GET", "/api/jobs", root).status_code == 200
    res = s.cli("user", "list", token=plain, check=False)
    assert res.returncode == 1 and "not an admin" in res.stderr


def test_an_older_database_gains_revocation_and_keeps_its_users(tmp_path):
    from distren import store

    db = sqlite3.connect(tmp_path / "state.sqlite", isolation_level=None)
    for sql in store.MIGRATIONS[:3]:
        for stmt in sql.split(";"):
            if stmt.strip():
                db.execute(stmt)
    db.execute("PRAGMA user_version = 3")
    db.execute("INSERT INTO users(name, token_sha256, admin, created) VALUES('old', ?, 1, 0)",
               (hashlib.sha256(b"tok").hexdigest(),))
    db.close()
    s = store.Store(tmp_path)
    assert s.user_for_token("tok") == ("old", True)
    assert s.users()[0]["revoked"] is None
    with pytest.raises(Exception, match="last admin"):
        s.revoke_user("old")
    s.add_user("other", admin=True)
    assert s.revoke_user("old") is True and s.user_for_token("tok") is None
    s.close()


# --- admins (their own jobs, last: they change alice's) --------------------------------------


def test_the_admin_reads_and_manages_every_users_jobs(site, tmp_path):
    r, admin = site.render, site.render.token
    jid = job_id(site.done)
    assert call(r, "GET", f"/api/jobs/{jid}", admin).json()["submitter"] == "distren://render/user/alice"
    assert call(r, "GET", f"/api/jobs/{jid}/events", admin).json()
    assert "Parse Error" in call(r, "GET", f"/api/jobs/{job_id(site.failed)}/frames/1/log", admin).text
    r.cli("download", site.done, "-o", str(tmp_path / "got"))
    assert (tmp_path / "got" / "textured1.png").is_file()
    retried = call(r, "POST", f"/api/jobs/{job_id(site.failed)}/frames/1/retry", admin)
    assert retried.status_code == 200
    assert "retried by admin" in [e["reason"] for e in call(r, "GET", f"/api/jobs/{job_id(site.failed)}/events", admin).json()]
    cancelled = call(site.queue, "POST", f"/api/jobs/{job_id(site.queued)}/cancel", site.queue.token)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert call(r, "DELETE", f"/api/jobs/{jid}", admin).status_code == 200
    assert call(r, "GET", f"/api/jobs/{jid}", site.alice).status_code == 404
