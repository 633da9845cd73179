"""The API and the federation in one process: Starlette's TestClient for the HTTP side, and an
httpx.MockTransport that routes one server's calls to another's app. Faster and easier to
poke at than the real-process tests (test_e2e_*), which stay the proof; these sit beside them.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import SCENES, assert_frames_match, povray_reference, wait_for
from distren import bundle
from distren.api import create_app
from distren.pack import pack
from distren.service import Server, Settings


def in_process(name: str, data: Path, slots: int = 0, lease_timeout: float = 30.0,
               allow: tuple[str, ...] = ()) -> tuple[Server, TestClient]:
    server = Server(Settings(name=name, data=data, slots=slots, advertise=f"http://{name}.test:80",
                             lease_timeout=lease_timeout, allow=list(allow)))
    return server, TestClient(create_app(server), base_url=f"http://{name}.test")


def auth(server: Server) -> dict[str, str]:
    return {"Authorization": "Bearer " + (server.settings.data / "admin.token").read_text().strip()}


@pytest.fixture
def textured_bundle(tmp_path) -> Path:
    out = tmp_path / "job.tar"
    pack(SCENES / "textured" / "textured.ini", out, 32, 24, "1-2")
    return out


def test_api_in_process(tmp_path, textured_bundle):
    server, http = in_process("solo", tmp_path / "solo")
    server.start()
    try:
        admin = auth(server)
        r = http.post("/api/jobs", content=textured_bundle.read_bytes(), headers=admin)
        assert r.status_code == 201, r.text
        job = r.json()["id"]
        st = http.get(f"/api/jobs/{job}", headers=admin).json()
        assert st["state"] == "queued" and [f["id"] for f in st["frames"]] == [1, 2]  # no slots: nothing renders

        token = http.post("/api/users", json={"name": "bea"}, headers=admin).json()["token"]
        bea = {"Authorization": f"bearer {token}"}
        assert http.get(f"/api/jobs/{job}", headers=bea).status_code == 404   # not hers
        assert http.get("/api/jobs", headers=bea).json() == []
        assert http.post("/api/users", json={"name": "eve"}, headers=bea).status_code == 403

        assert http.get("/api/jobs/99", headers=admin).status_code == 404
        assert http.get("/api/jobs/1", headers={"Authorization": "Bearer nope"}).status_code == 401
        garbage = http.post("/api/jobs", content=b"not a tarball", headers=admin)
        assert garbage.status_code == 400 and "tar" in garbage.json()["error"]
        assert str(server.settings.data) not in garbage.text

        assert http.post(f"/api/jobs/{job}/cancel", headers=admin).status_code == 200
        events = http.get(f"/api/jobs/{job}/events", headers=admin).json()
        assert events[-1]["new"] == "cancelled"
    finally:
        server.stop()


def test_federation_in_process(tmp_path, textured_bundle):
    """Origin a renders nothing; b leases a's frames through the mock network and uploads them;
    the result a rebundles has POV-Ray's own pixels."""
    a, a_http = in_process("a", tmp_path / "a", slots=0, allow=("b",))
    b, b_http = in_process("b", tmp_path / "b", slots=1)
    apps = {"a.test": a_http, "b.test": b_http}
    calls: list[str] = []

    def network(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.host}{request.url.path}")
        target = apps[request.url.host]
        resp = target.request(request.method, request.url.raw_path.decode(), headers=request.headers,
                              content=request.read())
        return httpx.Response(resp.status_code, headers=resp.headers, content=resp.content)

    for server in (a, b):
        server.transport.http = httpx.Client(transport=httpx.MockTransport(network))
    a.start()
    b.start()
    try:
        assert b.gossip.add("http://a.test:80") == "a"
        r = a_http.post("/api/jobs", content=textured_bundle.read_bytes(), headers=auth(a))
        job = r.json()["id"]
        st = wait_for(lambda: (s := a_http.get(f"/api/jobs/{job}", headers=auth(a)).json())["state"] == "done"
                        and s, "the job to be done")
        assert {f["server"] for f in st["frames"]} == {"distren://b/"}
        assert any(c.startswith("PUT a.test/fed/jobs/") and c.endswith("/result") for c in calls)
        tar = tmp_path / "result.tar"
        tar.write_bytes(a_http.get(f"/api/jobs/{job}/result", headers=auth(a)).content)
        bundle.extract(tar, tmp_path / "got")
    finally:
        b.stop()
        a.stop()
    ref = povray_reference(SCENES / "textured", "textured.ini", tmp_path / "ref", 32, 24, 1, 2)
    assert_frames_match(tmp_path / "got", ref, ["textured1.png", "textured2.png"])
