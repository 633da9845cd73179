"""Federation on loopback: real servers, real POV-Ray, real signatures."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time

import httpx
import pytest

from conftest import POV_ANIM, SCENES, accept, assert_frames_match, last_line, povray_reference, status, wait_for
from distren.identity import Identity
from mallory import Mallory

pytestmark = pytest.mark.e2e
FZ = POV_ANIM / "fractalzoom"




def events(server, job_id: int) -> list[dict]:
    return httpx.get(f"{server.http}/api/jobs/{job_id}/events",
                     headers={"Authorization": f"Bearer {server.token}"}).json()


@pytest.fixture
def trio(start_server):
    # One admin's farm: a accepts b and c by name; they were told where a is.
    a = start_server("a", "--slots", "0", "--lease-timeout", "2", "--allow", "b", "--allow", "c")
    b = start_server("b", "--slots", "1", "--peer", a.http)
    c = start_server("c", "--slots", "1", "--peer", a.http)
    return a, b, c


def test_origin_that_renders_nothing_gets_frames_from_two_renderers(trio, tmp_path):
    a, b, c = trio
    url = last_line(a.cli("submit", str(SCENES / "textured"), "--width", "64", "--height", "48", "--wait"))
    st = status(a, url)
    assert {f["server"] for f in st["frames"]} == {"distren://b/", "distren://c/"}
    a.cli("download", url, "-o", str(tmp_path / "got"))
    ref = povray_reference(SCENES / "textured", "textured.ini", tmp_path / "ref", 64, 48)
    assert_frames_match(tmp_path / "got", ref, [f"textured{i}.png" for i in range(1, 7)])
    # The frames' logs came back to the origin with them.
    assert "log from b" in a.cli("log", f"{url}/frame/1").stdout + a.cli("log", f"{url}/frame/2").stdout
    rows = json.loads(a.cli("servers", "--json").stdout)
    assert {r["name"] for r in rows} == {"a", "b", "c"}
    assert all(r["slots"] == 1 for r in rows if r["name"] in "bc")


def test_renderer_killed_while_holding_a_frame(trio, tmp_path):
    a, b, c = trio
    url = last_line(a.cli("submit", str(FZ / "fractalzoom.ini"), "--width", "64", "--height", "48", "--frames", "1-6"))
    held = wait_for(lambda: next((f for f in status(a, url)["frames"]
                                  if f["state"] == "rendering" and f["server"] == "distren://b/"), None),
                    what="b to hold a frame")
    b.kill()
    a.cli("wait", url, "--timeout", "120")
    st = status(a, url)
    frame = next(f for f in st["frames"] if f["id"] == held["id"])
    if frame["server"] == "distren://c/":  # unless b had uploaded it in the instant before dying
        reasons = [e["reason"] for e in events(a, st["id"]) if e["frame_id"] == held["id"]]
        assert any("lease of distren://b/ ran out" in r for r in reasons), reasons
    a.cli("download", url, "-o", str(tmp_path / "got"))
    ref = povray_reference(FZ, "fractalzoom.ini", tmp_path / "ref", 64, 48, 1, 6)
    assert_frames_match(tmp_path / "got", ref, [f"fractalzoom{i:02d}.png" for i in range(1, 7)])


def test_origin_killed_mid_job_and_restarted(trio, tmp_path):
    a, b, c = trio
    url = last_line(a.cli("submit", str(FZ / "fractalzoom.ini"), "--width", "64", "--height", "48", "--frames", "1-10"))
    wait_for(lambda: status(a, url)["counts"]["done"] >= 2, what="two frames done")
    a.kill()
    time.sleep(1.5)  # an outage of a set length, the point of the test; nothing is waited for
    a.start()
    a.cli("wait", url, "--timeout", "120")
    st = status(a, url)
    assert {f["server"] for f in st["frames"]} <= {"distren://b/", "distren://c/"}
    a.cli("download", url, "-o", str(tmp_path / "got"))
    ref = povray_reference(FZ, "fractalzoom.ini", tmp_path / "ref", 64, 48, 1, 10)
    assert_frames_match(tmp_path / "got", ref, [f"fractalzoom{i:02d}.png" for i in range(1, 11)])


def test_server_started_after_the_announcement_learns_of_it_through_a_relay(start_server, tmp_path):
    a = start_server("a", "--slots", "0", "--allow", "b")
    b = start_server("b", "--slots", "1", "--peer", a.http)
    url = last_line(a.cli("submit", str(FZ / "fractalzoom.ini"), "--width", "64", "--height", "48", "--frames", "1-12"))
    wait_for(lambda: status(a, url)["counts"]["rendering"], what="b to start")
    start_server("late", "--slots", "1", "--peer", b.http)  # never peered with a directly
    # Strangers to b and a: each admin accepts late (b when it asks to peer, a when it asks for work).
    accept(b, "late")
    accept(a, "late")
    a.cli("wait", url, "--timeout", "120")
    servers = {f["server"] for f in status(a, url)["frames"]}
    assert "distren://late/" in servers, servers
    # a learned of late when late came to ask for frames.
    assert "late" in {r["name"] for r in json.loads(a.cli("servers", "--json").stdout)}


def _signed(ident: Identity, method: str, base: str, path: str, body: bytes = b"", extra=None) -> httpx.Response:
    headers = ident.sign_request(method, path, hashlib.sha256(body).hexdigest(), to="a")
    headers.update(extra or {})
    return httpx.request(method, base + path, content=body, headers=headers)


def test_unknown_forged_replayed_and_unleased_requests_are_refused(start_server):
    a = start_server("a", "--slots", "0")
    url = last_line(a.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24", "--frames", "1-2"))
    job_id = url.rsplit("/", 1)[1]

    r = httpx.post(f"{a.http}/fed/jobs/{job_id}/lease")
    assert r.status_code == 401 and "unsigned" in r.json()["error"]
    stranger = Identity("mallory", Identity.load_or_create("x", a.data.parent / "m.key").key)
    r = _signed(stranger, "POST", a.http, f"/fed/jobs/{job_id}/lease")
    assert r.status_code == 401 and "unknown server 'mallory'" in r.json()["error"]

    m = Mallory("tester", a.data.parent / "t.key")  # a real server at a real address
    try:
        r = m.introduce(a)
        assert r.status_code == 200 and r.json()["name"] == "a" and r.json()["peering"] == "pending", r.text
    finally:
        m.close()
    tester = m.id
    r = _signed(tester, "POST", a.http, f"/fed/jobs/{job_id}/lease")
    assert r.status_code == 403 and "awaiting approval by the admin of a" in r.json()["error"]
    accept(a, "tester")
    # The same name with another key: refused loudly.
    impostor_m = Mallory("tester", a.data.parent / "i.key")
    try:
        r = impostor_m.introduce(a)
    finally:
        impostor_m.close()
    assert r.status_code == 409 and "different key" in r.json()["error"]
    impostor = impostor_m.id
    # A forged signature: tester's name, impostor's key.
    r = _signed(impostor, "POST", a.http, f"/fed/jobs/{job_id}/lease")
    assert r.status_code == 401 and "bad signature" in r.json()["error"]
    # A request signed for another path cannot be reused here.
    headers = tester.sign_request("POST", f"/fed/jobs/{job_id}/frames/1/renew", to="a")
    r = httpx.post(f"{a.http}/fed/jobs/{job_id}/lease", headers=headers)
    assert r.status_code == 401
    # Nor can a request meant for another server be replayed here.
    headers = tester.sign_request("POST", f"/fed/jobs/{job_id}/lease", to="b")
    r = httpx.post(f"{a.http}/fed/jobs/{job_id}/lease", headers=headers)
    assert r.status_code == 401 and "bad signature" in r.json()["error"]

    # A genuine lease, then the same request replayed.
    headers = tester.sign_request("POST", f"/fed/jobs/{job_id}/lease", to="a")
    r = httpx.post(f"{a.http}/fed/jobs/{job_id}/lease", headers=headers)
    assert r.status_code == 200 and b'server="distren://tester/"' in r.content
    leased = int(r.content.split(b'/frame/')[1].split(b'"')[0])
    r = httpx.post(f"{a.http}/fed/jobs/{job_id}/lease", headers=headers)
    assert r.status_code == 401 and "replayed" in r.json()["error"]

    # An upload for the frame that is not leased to tester.
    other = 2 if leased == 1 else 1
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo(f"textured{other}.png")
        data = b"not really a png"
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    sha = {"X-Content-SHA256": hashlib.sha256(buf.getvalue()).hexdigest()}
    r = _signed(tester, "PUT", a.http, f"/fed/jobs/{job_id}/frames/{other}/result", buf.getvalue(), sha)
    assert r.status_code == 409 and "not leased to tester" in r.json()["error"]
    # And for the leased frame, a tarball that is not the frame's image is refused too.
    r = _signed(tester, "PUT", a.http, f"/fed/jobs/{job_id}/frames/{leased}/result", buf.getvalue(), sha)
    assert r.status_code == 400 and "is not a file this frame makes" in r.text, r.text
    st = status(a, url)
    assert st["counts"]["done"] == 0


def test_peering_at_runtime_both_ways(start_server):
    a = start_server("a", "--slots", "0")
    b = start_server("b", "--slots", "1")
    assert [r["name"] for r in json.loads(a.cli("servers", "--json").stdout)] == ["a"]
    res = b.cli("peers", "add", a.http)
    assert "peered with distren://a/" in res.stderr
    assert "awaiting approval" in res.stderr  # a's admin has not said yes yet
    assert [r["name"] for r in json.loads(a.cli("servers", "--json").stdout)] == ["a"]
    accept(a, "b")
    # Both learned and pinned each other on that first contact.
    assert {r["name"] for r in json.loads(b.cli("servers", "--json").stdout)} == {"a", "b"}
    assert {r["name"] for r in json.loads(a.cli("servers", "--json").stdout)} == {"a", "b"}
    url = last_line(a.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24", "--frames", "1-2",
                          "--wait"))
    assert {f["server"] for f in status(a, url)["frames"]} == {"distren://b/"}
    # A peer that is not a distren server, or not there, is a clear error.
    res = b.cli("peers", "add", "http://127.0.0.1:9", check=False)
    assert res.returncode == 1 and "cannot reach http://127.0.0.1:9" in res.stderr
    res = b.cli("peers", "add", "ftp://example", check=False)
    assert res.returncode == 1 and "http://HOST:PORT" in res.stderr


def test_a_renderer_keeps_rendering_its_own_jobs_while_helping_others(start_server):
    """Fairness: b (one slot) helps a's long job, yet b's own job, submitted later, does not wait
    for a's to finish; and every state change says why it happened."""
    a = start_server("a", "--slots", "0", "--allow", "b")
    b = start_server("b", "--slots", "1", "--peer", a.http)
    theirs = last_line(a.cli("submit", str(FZ / "fractalzoom.ini"), "--width", "64", "--height", "48",
                             "--frames", "1-14"))
    wait_for(lambda: status(a, theirs)["counts"]["rendering"], what="b to help a")
    mine = last_line(b.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24", "--frames", "1-3"))
    b.cli("wait", mine, "--timeout", "60")
    assert status(a, theirs)["state"] != "done", "b's own job waited for a's whole job"
    a.cli("wait", theirs, "--timeout", "120")
    history = a.cli("events", theirs).stdout
    assert "queued -> rendering" in history and "rendering on distren://b/" in history
    assert "all frames rendered and rebundled" in history
