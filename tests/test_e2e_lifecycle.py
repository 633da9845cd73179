"""Issue 8's lease cases against a real origin process: two renderers (test identities that speak
the signed protocol) whose leases run out while the origin's reaper works on its own clock."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import httpx
import pytest

from conftest import SCENES, last_line, wait_for
from mallory import as_peer

pytestmark = pytest.mark.e2e


class Renderer:
    """A peer of the origin, reduced to its signed requests."""

    def __init__(self, name: str, origin, tmp_path):
        self.name, self.origin = name, origin
        self.ident = as_peer(origin, name, tmp_path / f"{name}.key")

    def call(self, method: str, path: str, body: bytes = b"", headers=None) -> httpx.Response:
        digest = (headers or {}).get("X-Content-SHA256") or hashlib.sha256(body).hexdigest()
        signed = self.ident.sign_request(method, path, digest, to=self.origin.name)
        signed.update(headers or {})
        return httpx.request(method, self.origin.http + path, content=body, headers=signed, timeout=30)

    def lease(self, job_id: int) -> int:
        r = self.call("POST", f"/fed/jobs/{job_id}/lease")
        assert r.status_code == 200, r.text
        assert f'server="distren://{self.name}/"'.encode() in r.content
        return int(r.content.split(b"/frame/")[1].split(b'"')[0])

    def failed(self, job_id: int, frame_id: int, reason: str) -> httpx.Response:
        body = json.dumps({"reason": reason, "log": "boom"}).encode()
        return self.call("POST", f"/fed/jobs/{job_id}/frames/{frame_id}/failed", body)

    def result(self, job_id: int, frame_id: int) -> httpx.Response:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            info = tarfile.TarInfo(f"textured{frame_id}.png")
            info.size = 4
            t.addfile(info, io.BytesIO(b"late"))
        data = buf.getvalue()
        return self.call("PUT", f"/fed/jobs/{job_id}/frames/{frame_id}/result", data,
                         {"X-Content-SHA256": hashlib.sha256(data).hexdigest()})


def frame(origin, url: str) -> dict:
    job_id = url.rsplit("/", 1)[1]
    r = httpx.get(f"{origin.http}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {origin.token}"})
    return r.json()["frames"][0]


def test_expired_leases_neither_fail_a_frame_nor_let_the_late_renderer_touch_it(start_server, tmp_path):
    a = start_server("a", "--slots", "0", "--lease-timeout", "1")
    url = last_line(a.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24", "--frames", "1"))
    job_id = int(url.rsplit("/", 1)[1])
    beta, gamma = Renderer("beta", a, tmp_path), Renderer("gamma", a, tmp_path)

    # Three leases that run out (the renderers went silent): no attempt is used up.
    for r in (beta, gamma, beta):
        assert r.lease(job_id) == 1
        wait_for(lambda: frame(a, url)["state"] == "queued", what="the origin to reap the lease")
        assert frame(a, url)["attempts"] == 0

    # beta's lease ran out; gamma holds the frame now. beta's late reports change nothing.
    assert gamma.lease(job_id) == 1
    r = beta.failed(job_id, 1, "out of memory")
    assert r.status_code == 409 and "not leased to beta" in r.json()["error"], r.text
    r = beta.result(job_id, 1)
    assert r.status_code == 409 and "not leased to beta" in r.json()["error"], r.text
    r = beta.call("POST", f"/fed/jobs/{job_id}/frames/1/renew")
    assert r.status_code == 409, r.text
    f = frame(a, url)
    assert (f["state"], f["server"], f["attempts"]) == ("rendering", "distren://gamma/", 0)

    # gamma's own failure report, the first failed render, is taken: the frame goes back, not failed.
    r = gamma.failed(job_id, 1, "out of memory")
    assert r.status_code == 200, r.text
    f = frame(a, url)
    assert (f["state"], f["attempts"]) == ("queued", 1), f
    assert "attempt 1 on distren://gamma/ failed: out of memory; retrying" == f["reason"]
