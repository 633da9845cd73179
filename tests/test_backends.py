"""Backends as plug-ins: the registry, what servers say they can render, and that a server never
leases a frame of a backend it does not have (a made-up backend, tests/plugins/fakeray.py,
loaded on some servers only)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import REPO, last_line, status, wait_for
from distren import backends
from distren.errors import JobFileError

PLUGINS = REPO / "tests" / "plugins"
W, H = 8, 6


def test_builtin_registry():
    assert {"povray", "stitch", "movie"} <= set(backends.available())
    assert backends.available()["povray"].startswith("3.7")
    assert backends.for_job("povray").scene
    with pytest.raises(JobFileError, match="type for single frames"):
        backends.for_job("movie")
    with pytest.raises(JobFileError, match="'nosuch' is not a backend this server knows"):
        backends.get("nosuch")


def fake_bundle(path: Path, frames: int) -> Path:
    xml = (f'<distren version="1"><job type="fakeray"><resolution width="{W}" height="{H}"/><fakeray/><frames>'
           + "".join(f'<frame name="frame/{i}"/>' for i in range(1, frames + 1)) + "</frames></job></distren>")
    png = io.BytesIO()
    Image.new("RGB", (W, H), (200, 30, 60)).save(png, format="PNG")
    with tarfile.open(path, "w") as tar:
        for name, data in (("distrenjob.xml", xml.encode()), ("scene/frame.png", png.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_only_servers_with_the_backend_lease_its_frames(start_server, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(PLUGINS))
    a = start_server("a", "--slots", "0", "--plugin", "fakeray", "--allow", "b", "--allow", "c")
    start_server("b", "--slots", "2", "--peer", a.http)  # povray, stitch, movie only
    start_server("c", "--slots", "1", "--peer", a.http, "--plugin", "fakeray")
    token = {"Authorization": f"Bearer {a.token}"}

    fake = httpx.post(f"{a.http}/api/jobs", content=fake_bundle(tmp_path / "fake.tar", 6).read_bytes(),
                      headers=token).json()["url"]
    pov = last_line(a.cli("submit", str(REPO / "tests" / "scenes" / "textured"), "--width", "32", "--height", "24",
                          "--frames", "1-4"))
    a.cli("wait", fake, "--timeout", "120")
    a.cli("wait", pov, "--timeout", "120")
    fake_frames = status(a, fake)["frames"]
    assert {f["server"] for f in fake_frames} == {"distren://c/"}
    assert [f["files"] for f in fake_frames] == [[f"fake{i}.png"] for i in range(1, 7)]
    # b was there and leasing all along: it rendered POV-Ray frames, never a fakeray one.
    events = httpx.get(f"{a.http}/api/jobs/{fake.rsplit('/', 1)[1]}/events", headers=token).json()
    assert not [e for e in events if "distren://b/" in e["reason"]], events
    assert "distren://b/" in {f["server"] for f in status(a, pov)["frames"]}


def test_state_and_announcements_name_backends(start_server, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(PLUGINS))
    a = start_server("a", "--slots", "0", "--plugin", "fakeray", "--allow", "b")
    b = start_server("b", "--slots", "0", "--peer", a.http)
    token = {"Authorization": f"Bearer {a.token}"}
    httpx.post(f"{a.http}/api/jobs", content=fake_bundle(tmp_path / "fake.tar", 2).read_bytes(), headers=token)
    from distren.identity import Identity
    from distren.transfer import Transport

    # Read b's copy of the announcement the way a peer does: a signed GET /fed/state.
    t = Transport(Identity.load_or_create("b", b.data / "server.key"))
    try:
        state = wait_for(lambda: (s := t.call("GET", a.http, "/fed/state", to="a").json())["announcements"] and s,
                         "a's announcement")
    finally:
        t.close()
    assert state["backends"]["fakeray"] == "1.0" and "povray" in state["backends"]
    assert state["announcements"][0]["backends"] == ["fakeray"]
    # A peer that says it cannot render fakeray gets nothing, even when it asks outright.
    t = Transport(Identity.load_or_create("b", b.data / "server.key"))
    try:
        resp = t.call("POST", a.http, "/fed/jobs/1/lease?can=povray,stitch,movie", to="a", retries=0)
        assert resp.status_code == 204
        resp = t.call("POST", a.http, "/fed/jobs/1/lease?can=fakeray", to="a", retries=0)
        assert resp.status_code == 200 and b"frame/1" in resp.content
    finally:
        t.close()
