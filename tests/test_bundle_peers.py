"""Bundles passed on between renderers: a renderer fetches a job's bundle from a server that
already holds it, with a grant from the job's origin (need to know), hash-checked; the origin
sends one bundle to at most two servers at once. Real servers on loopback; Mallory is hostile."""

from __future__ import annotations

import hashlib

import pytest

from conftest import wait_for
from distren import bundleshare
from distren.errors import Busy, Forbidden, SignatureError
from mallory import Mallory
from test_e2e_leases import SLOW_POV, job_status, knows_slots, submit

pytestmark = pytest.mark.e2e


def slow_scene(tmp_path, frames: int):
    scene = tmp_path / "slow"
    scene.mkdir()
    (scene / "slow.pov").write_text(SLOW_POV)
    (scene / "slow.ini").write_text(f"Input_File_Name=slow.pov\nInitial_Frame=1\nFinal_Frame={frames}\n")
    return scene


def log_of(server) -> str:
    return (server.data.parent / f"{server.name}-{server.port}.log").read_text(errors="replace")


def test_a_renderer_fetches_the_bundle_from_a_peer_that_holds_it(start_server, tmp_path):
    a = start_server("a", "--slots", "0", "--peering", "open")
    b = start_server("b", "--slots", "1", "--peer", a.http, "--peering", "open")
    job = submit(a, slow_scene(tmp_path, 4))
    wait_for(lambda: any(f["state"] == "done" for f in job_status(a, job)["frames"]), "b to render a frame", 90)
    c = start_server("c", "--slots", "1", "--peer", a.http, "--peering", "open")
    wait_for(lambda: "fetched from b" in log_of(c), "c to fetch the bundle from b", 90)
    wait_for(lambda: job_status(a, job)["state"] == "done", "the job to finish", 120)
    assert {f["server"] for f in job_status(a, job)["frames"]} == {"distren://b/", "distren://c/"}


def test_a_holder_serves_a_bundle_only_with_the_origins_grant_for_the_asker(start_server, tmp_path):
    a = start_server("a", "--slots", "0", "--peering", "open")
    b = start_server("b", "--slots", "1", "--peer", a.http, "--peering", "open")
    job = submit(a, slow_scene(tmp_path, 3))
    wait_for(lambda: any(f["state"] == "done" for f in job_status(a, job)["frames"]), "b to render a frame", 90)
    mallory, eve = Mallory("mallory", tmp_path / "m.key"), Mallory("eve", tmp_path / "e.key")
    try:
        for m in (mallory, eve):
            assert m.join(a).status_code == 200 and m.join(b).status_code == 200
        # No lease, no grant, no list of holders.
        r = mallory.call(a, "GET", f"/fed/jobs/{job}/bundle/peers")
        assert r.status_code == 403 and "need to know" in r.json()["error"]
        wait_for(lambda: knows_slots(a, "mallory", 2), "a to learn mallory's slots")
        assert mallory.lease(a, job).status_code == 200
        info = mallory.call(a, "GET", f"/fed/jobs/{job}/bundle/peers").json()
        sha, grant = info["sha256"], info["grant"]
        assert [p["name"] for p in info["peers"]] == ["b"]
        path = f"/fed/bundles/{sha}"
        got = mallory.call(b, "GET", path, headers={"X-Distren-Grant": grant})
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == sha
        # Without a grant, another's grant, a grant for another bundle, one she signed herself.
        assert mallory.call(b, "GET", path).status_code == 400
        assert eve.call(b, "GET", path, headers={"X-Distren-Grant": grant}).status_code == 401
        assert mallory.call(b, "GET", "/fed/bundles/" + "0" * 64, headers={"X-Distren-Grant": grant}).status_code == 401
        origin, job_id, expires, _ = grant.split(";")
        forged = ";".join([origin, job_id, expires, mallory.id.sign(
            bundleshare.grant_text(origin, int(job_id), sha, "mallory", expires))])
        assert mallory.call(b, "GET", path, headers={"X-Distren-Grant": forged}).status_code == 401
        r = mallory.call(b, "GET", "/fed/bundles/../../etc/passwd", headers={"X-Distren-Grant": grant})
        assert r.status_code in (400, 401, 404) and "root:" not in r.text
    finally:
        mallory.close()
        eve.close()


def test_grants_expire_and_name_a_known_origin(tmp_path):
    from distren.identity import Identity
    from nacl.signing import SigningKey
    a = Identity("a", SigningKey.generate())
    grant = bundleshare.make_grant(a.sign, "a", 3, "f" * 64, "b")
    assert bundleshare.check_grant(grant, "f" * 64, "b", {"a": a.public}.get) == "a"
    with pytest.raises(Forbidden, match="not a server known here"):
        bundleshare.check_grant(grant, "f" * 64, "b", {}.get)
    with pytest.raises(SignatureError):
        bundleshare.check_grant(grant, "f" * 64, "c", {"a": a.public}.get)
    old = grant.split(";")
    old[2] = "1000.000"
    old[3] = a.sign(bundleshare.grant_text("a", 3, "f" * 64, "b", "1000.000"))
    with pytest.raises(Forbidden, match="expired"):
        bundleshare.check_grant(";".join(old), "f" * 64, "b", {"a": a.public}.get)
    sends = bundleshare.Sends(2)
    sends.start("x", "it")
    sends.start("x", "it")
    with pytest.raises(Busy):
        sends.start("x", "it")
    sends.end("x")
    sends.start("x", "it")
