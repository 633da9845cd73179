"""Hostile and odd inputs against a real server: bundles (tar), distrenjob.xml, INI files and HTTP
requests. Each malformed one is refused with 400 (never 500) and a reason naming what is wrong,
without a server-side path; the server stays up, writes nothing outside its folders, and its job
list is unchanged. An ordinary input that used to be refused (a bundle made with
``tar -cf job.tar -C dir .``) renders. Plus a hypothesis fuzz of the HTTP API in-process."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from conftest import ServerProc, free_port
from mallory import as_peer
from distren.identity import Identity

pytestmark = pytest.mark.e2e

DATA_ENTRIES = {"state.sqlite", "state.sqlite-wal", "state.sqlite-shm", "admin.token", "server.key",
                "jobs", "work", "incoming", "outgoing"}
POV = "camera { location <0, 0, -4> look_at 0 }\nlight_source { <2, 4, -3> rgb 1 }\nsphere { 0, 1 pigment { rgb 1 } }\n"
ANIM_INI = "Input_File_Name=s.pov\nInitial_Frame=1\nFinal_Frame=3\n"


def job_xml(frames: str = '<frame name="frame/1"/>', ini: str = "s.ini", width: str = "32", height: str = "24") -> str:
    return (f'<distren version="1"><job type="povray"><resolution width="{width}" height="{height}"/>'
            f'<povray ini="{ini}"/><frames>{frames}</frames></job></distren>')


def tar_of(members: dict[str, bytes | str | tarfile.TarInfo] | list, mode: str = "w") -> bytes:
    buf = io.BytesIO()
    items = members.items() if isinstance(members, dict) else members
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as t:
        for name, data in items:
            if isinstance(data, tarfile.TarInfo):
                t.addfile(data)
                continue
            data = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def job(xml: str | None = None, ini: str = ANIM_INI, **more) -> dict:
    """A valid bundle's members (a 3-frame animation), with ``more`` added or replacing."""
    out = {"distrenjob.xml": job_xml() if xml is None else xml, "scene/s.ini": ini, "scene/s.pov": POV}
    out.update(more)
    return out


def special(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


class Site:
    def __init__(self, server: ServerProc, base: Path):
        self.server, self.base = server, base

    def api(self, method: str, path: str, token: str | None = None, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.server.token if token is None else token}", **kw.pop("headers", {})}
        return httpx.request(method, self.server.http + path, headers=headers, timeout=60, **kw)

    def jobs(self) -> list:
        return self.api("GET", "/api/jobs").json()

    def alive(self) -> None:
        assert self.server.proc.poll() is None, "the server died"
        assert self.api("GET", "/api/server").status_code == 200
        assert set(p.name for p in self.server.data.iterdir()) <= DATA_ENTRIES
        incoming = self.server.data / "incoming"
        assert not incoming.exists() or list(incoming.iterdir()) == [], "a refused request left files behind"
        assert sorted(p.name for p in self.base.iterdir()) == self.outside, "written beside the server's data"

    def refused(self, response_of, *fragments: str, status: int = 400) -> str:
        before = self.jobs()
        r = response_of()
        assert r.status_code == status, (r.status_code, r.text)
        msg = r.json()["error"]
        for frag in fragments:
            assert frag in msg, f"{frag!r} not in {msg!r}"
        assert str(self.server.data) not in msg and "/incoming/" not in msg and "/tmp/" not in msg
        assert "\n" not in msg, "a refusal is one line"
        assert self.jobs() == before, "a refused request changed the job list"
        self.alive()
        return msg

    def submit_refused(self, data: bytes, *fragments: str) -> str:
        return self.refused(lambda: self.api("POST", "/api/jobs", content=data), *fragments)

    def wait(self, job_id: int, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while (st := self.api("GET", f"/api/jobs/{job_id}").json())["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline, st
            time.sleep(0.2)
        return st


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile-inputs")
    server = ServerProc("hi", base / "data", free_port(), ["--slots", "1"]).start()
    s = Site(server, base)
    s.outside = sorted(p.name for p in base.iterdir())
    yield s
    server.stop()


# --- bundles: made with `tar -C dir .`, and malformed ones ------------------------------------------


def test_a_bundle_made_with_tar_dash_C_dot_renders(site, tmp_path):
    src = tmp_path / "job"
    (src / "scene").mkdir(parents=True)
    (src / "distrenjob.xml").write_text(job_xml('<frame name="frame/1"/><frame name="frame/2"/>'))
    (src / "scene" / "s.ini").write_text(ANIM_INI)
    (src / "scene" / "s.pov").write_text(POV)
    tar = tmp_path / "job.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(src), "."], check=True)
    names = subprocess.run(["tar", "-tf", str(tar)], capture_output=True, text=True, check=True).stdout.split()
    assert names[0] == "./" and "./distrenjob.xml" in names and "./scene/s.ini" in names
    r = site.api("POST", "/api/jobs", content=tar.read_bytes())
    assert r.status_code == 201, r.text
    st = site.wait(r.json()["id"])
    assert st["state"] == "done", st
    assert [f["files"] for f in st["frames"]] == [["s1.png"], ["s2.png"]]
    res = site.api("GET", f"/api/jobs/{r.json()['id']}/result")
    with tarfile.open(fileobj=io.BytesIO(res.content)) as t:
        assert sorted(m.name for m in t) == ["distrenjob.xml", "s1.png", "s2.png"]
        with Image.open(t.extractfile("s2.png")) as im:
            assert im.size == (32, 24)


def test_a_local_frame_keeps_only_the_image_it_makes(site):
    """A scene that writes other files (here 50 by #write) keeps only its image."""
    pov = POV + ('#declare I = 0;\n#while (I < 50)\n  #fopen F concat("junk", str(I, 0, 0), ".txt") write\n'
                 '  #write (F, "x")\n  #fclose F\n  #declare I = I + 1;\n#end\n')
    r = site.api("POST", "/api/jobs", content=tar_of(job(**{"scene/s.pov": pov})))
    assert r.status_code == 201, r.text
    st = site.wait(r.json()["id"])
    assert st["state"] == "done" and st["frames"][0]["files"] == ["s1.png"], st
    tar = site.server.data / "jobs" / str(r.json()["id"]) / "frames"
    kept = [m for p in tar.rglob("*.tar") for m in tarfile.open(p).getnames()]
    assert kept == ["s1.png"], kept


BUNDLE_CASES = [
    ("long-component", lambda: tar_of(job(**{"scene/" + "a" * 300: "x"})), ["longer than 255 bytes"]),
    ("deep-path", lambda: tar_of(job(**{"scene/" + "a/" * 4000 + "x": "x"})), ["longer than 1024 bytes"]),
    ("nul-in-pax-path", lambda: tar_of(job(**{"scene/\u00e9\x00.pov": "x"})), ["control character"]),
    ("newline-in-name", lambda: tar_of(job(**{"scene/a\nb.pov": "x"})), ["control character"]),
    ("symlink", lambda: tar_of(job(**{"scene/x": special("scene/x", tarfile.SYMTYPE, "/etc/passwd")})),
     ["is a link"]),
    ("hardlink", lambda: tar_of(job(**{"scene/x": special("scene/x", tarfile.LNKTYPE, "scene/s.pov")})),
     ["is a link"]),
    ("device", lambda: tar_of(job(**{"scene/x": special("scene/x", tarfile.CHRTYPE)})), ["special file"]),
    ("climbs-out", lambda: tar_of(job(**{"scene/../../x.pov": "x"})), ["climbs out"]),
    ("absolute", lambda: tar_of(job(**{"/var/x.pov": "x"})), ["absolute path"]),
    ("twice", lambda: tar_of(list(job().items()) + [("./scene/s.pov", "x")]), ["appears twice"]),
    ("not-a-tarball", lambda: b"hello" * 300, ["bundle: not a readable tarball"]),
    ("truncated-gzip", lambda: (lambda d: d[: len(d) // 2])(tar_of(job(**{"scene/pad": "x" * 50000}), "w:gz")),
     ["bundle: "]),
    ("trailing-garbage", lambda: tar_of(job()) + b"junk" * 300, ["after the end"]),
    ("no-jobfile", lambda: tar_of({"scene/s.ini": ANIM_INI, "scene/s.pov": POV}), ["no distrenjob.xml"]),
    ("no-scene", lambda: tar_of({"distrenjob.xml": job_xml()}), ["no scene/ folder"]),
]


@pytest.mark.parametrize("make,fragments", [c[1:] for c in BUNDLE_CASES], ids=[c[0] for c in BUNDLE_CASES])
def test_a_malformed_bundle_is_refused(site, make, fragments):
    msg = site.submit_refused(make(), *fragments)
    assert msg.startswith("bundle: ") or "the bundle has" in msg


# --- distrenjob.xml and INI -------------------------------------------------------------------------

LAUGHS = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
          '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]><distren version="1">&c;</distren>')
XXE = '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><distren version="1">&x;</distren>'

JOB_CASES = [
    ("billion-laughs", lambda: job(LAUGHS), ["distrenjob.xml"]),
    ("external-entity", lambda: job(XXE), ["distrenjob.xml"]),
    ("not-xml", lambda: job("<distren"), ["distrenjob.xml"]),
    ("width-too-large", lambda: job(job_xml(width="100000")), ["width", "16384"]),
    ("frame-after-the-animation", lambda: job(job_xml('<frame name="frame/1"/><frame name="frame/7"/>')),
     ["frame/7", "outside the animation of scene/s.ini", "frames 1-3"]),
    ("frame-before-the-animation", lambda: job(job_xml('<frame name="frame/0"/>')),
     ["frame/0", "frames 1-3"]),
    ("many-frames-outside", lambda: job(job_xml("".join(f'<frame name="frame/{i}"/>' for i in range(2, 9)))),
     ["frame/4 (and 4 more)", "frames 1-3"]),
    ("ini-includes-itself", lambda: job(ini=ANIM_INI + "Include_INI=s.ini\n"),
     ["scene/s.ini", "cycle (s.ini -> s.ini)"]),
    ("ini-cycle", lambda: job(ini=ANIM_INI + "Include_INI=b.ini\n", **{"scene/b.ini": "c.ini\n", "scene/c.ini": "b.ini\n"}),
     ["cycle (b.ini -> c.ini -> b.ini)"]),
    ("output-to-stdout", lambda: job(ini=ANIM_INI + "Output_File_Name=-\n"), ["Output_File_Name='-'", "standard output"]),
    ("output-switch-to-stdout", lambda: job(ini=ANIM_INI + "+O-\n"), ["Output_File_Name='-'"]),
    ("output-outside", lambda: job(ini=ANIM_INI + "Output_File_Name=../out.png\n"), ["Output_File_Name='../out.png'"]),
    ("output-absolute", lambda: job(ini=ANIM_INI + "Output_File_Name=/var/out.png\n"), ["Output_File_Name='/var/out.png'"]),
    ("bad-frame-number", lambda: job(ini="Input_File_Name=s.pov\nInitial_Frame=1\nFinal_Frame=many\n"),
     ["Final_Frame='many'"]),
    ("no-ini", lambda: job(job_xml(ini="missing.ini")), ["missing.ini"]),
]


@pytest.mark.parametrize("make,fragments", [c[1:] for c in JOB_CASES], ids=[c[0] for c in JOB_CASES])
def test_a_bad_job_is_refused_naming_the_field(site, make, fragments):
    site.submit_refused(tar_of(make()), *fragments)


def test_pack_refuses_an_absurd_frame_count_with_a_message(tmp_path):
    (tmp_path / "s.pov").write_text(POV)
    (tmp_path / "s.ini").write_text("Input_File_Name=s.pov\nInitial_Frame=1\nFinal_Frame=1000000000\n")
    r = subprocess.run([sys.executable, "-m", "distren", "pack", str(tmp_path / "s.ini"), "-o", str(tmp_path / "j.tar")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    err = " ".join(r.stderr.split())
    assert "1000000000 frames" in err and "at most 100000" in err and "--frames" in err, r.stderr
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    assert not (tmp_path / "j.tar").exists()
    # A part of it packs.
    r = subprocess.run([sys.executable, "-m", "distren", "pack", str(tmp_path / "s.ini"), "-o", str(tmp_path / "j.tar"),
                        "--frames", "999999998-1000000000"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with tarfile.open(tmp_path / "j.tar") as t:
        assert b'name="frame/1000000000"' in t.extractfile("distrenjob.xml").read()


# --- HTTP -----------------------------------------------------------------------------------------


def peer(site, name: str) -> Identity:
    return as_peer(site.server, name, site.base.parent / f"{name}.key")


HUGE = str(2**63)
HTTP_CASES = [
    ("events-after-huge", "GET", "/api/jobs/1/events?after=" + "9" * 30, ["after"]),
    ("events-after-negative", "GET", "/api/jobs/1/events?after=-1", ["after"]),
    ("events-after-garbage", "GET", "/api/jobs/1/events?after=%00x", ["after"]),
    ("frame-log-huge", "GET", f"/api/jobs/1/frames/{HUGE}/log", ["frame_id"]),
    ("frame-retry-huge", "POST", f"/api/jobs/1/frames/{HUGE}/retry", ["frame_id"]),
    ("job-not-a-number", "GET", "/api/jobs/12abc", ["job_id"]),
    ("fed-frame-huge", "GET", f"/fed/jobs/{HUGE}/frames/{HUGE}", ["job_id"]),
    ("fed-bundle-negative", "GET", "/fed/jobs/-1/bundle", ["job_id"]),
    ("add-user-not-json", "POST", "/api/users", ["body"]),
]


@pytest.mark.parametrize("method,path,fragments", [c[1:] for c in HTTP_CASES], ids=[c[0] for c in HTTP_CASES])
def test_a_malformed_request_is_a_400(site, method, path, fragments):
    kw = {"content": b"{not json", "headers": {"Content-Type": "application/json"}} if method == "POST" else {}
    site.refused(lambda: site.api(method, path, **kw), "malformed request", *fragments)


def test_ids_beyond_sqlite_are_missing_jobs(site):
    for jid in (HUGE, "9" * 40):
        site.refused(lambda: site.api("GET", f"/api/jobs/{jid}"), "no job", status=404)


def test_signed_lease_requests_with_junk_are_refused(site):
    tester = peer(site, "tester")
    path = f"/fed/jobs/{HUGE}/lease"
    site.refused(lambda: httpx.post(site.server.http + path, headers=tester.sign_request("POST", path, to="hi")),
                 "job id", "is not an id")
    path = "/fed/jobs/1/lease"
    headers = tester.sign_request("POST", path, to="hi") | {"X-Distren-Time": "1e999"}
    site.refused(lambda: httpx.post(site.server.http + path, headers=headers), "X-Distren-Time", status=401)
    headers = tester.sign_request("POST", path, to="hi") | {"X-Distren-Nonce": "z" * 4000}
    assert site.refused(lambda: httpx.post(site.server.http + path, headers=headers), status=401)
    headers = tester.sign_request("POST", path, to="hi")
    site.refused(lambda: httpx.post(site.server.http + path, headers=headers, content=b"junk"),
                 "a lease request has no body")


def test_a_junk_content_length_is_refused_by_the_http_layer(site):
    with socket.create_connection(("127.0.0.1", site.server.port), timeout=10) as s:
        s.sendall(b"POST /fed/jobs/1/lease HTTP/1.1\r\nHost: x\r\nContent-Length: junk\r\n\r\n")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    site.alive()


# --- the HTTP API fuzzed, in-process ------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from distren.api import create_app
    from distren.service import Server, Settings

    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Settings(name="fuzz", data=Path(tmp), slots=0))
        server.start()
        try:
            c = TestClient(create_app(server), raise_server_exceptions=False)
            token = (Path(tmp) / "admin.token").read_text().strip()
            r = c.post("/api/jobs", content=tar_of(job()), headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 201, r.text
            yield c, token
        finally:
            server.stop()


segment = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.sampled_from(["1", "0", "-0", "1e3", "0x10", "%00", "%2e%2e", "..", ".", "", "a" * 300, "\u00e9", "1.5"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#"), max_size=20),
)
ROUTES = ["/api/jobs/{}", "/api/jobs/{}/events", "/api/jobs/{}/cancel", "/api/jobs/{}/result",
          "/api/jobs/{}/frames/{}/log", "/api/jobs/{}/frames/{}/retry", "/api/peers/{}", "/api/users/{}/revoke",
          "/fed/jobs/{}/lease", "/fed/jobs/{}/bundle", "/fed/jobs/{}/frames/{}", "/fed/jobs/{}/frames/{}/files",
          "/fed/jobs/{}/frames/{}/renew", "/fed/jobs/{}/frames/{}/log", "/fed/jobs/{}/frames/{}/failed",
          "/fed/jobs/{}/frames/{}/result", "/fed/hello", "/fed/announce", "/fed/state", "/api/users", "/api/peers",
          "/api/jobs", "/api/jobs/{}/pause", "/api/jobs/{}/resume", "/api/jobs/{}/priority", "/api/jobs/{}/retry"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), a=segment, b=segment,
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
       query=st.one_of(st.none(), st.dictionaries(st.sampled_from(["after", "x", "job_id", "priority"]), segment,
                                                 max_size=2)),
       body=st.one_of(st.none(), st.binary(max_size=200), st.sampled_from([b"{}", b"[]", b'{"name": 1}', b"null",
                                                                           b'{"address": "file:///etc"}',
                                                                           b'{"priority": 1e400}', b'{"frames": [true]}',
                                                                           b'{"frames": [-1, 99999999999999999999]}'])),
       auth=st.sampled_from(["good", "none", "junk", "lower"]),
       signed=st.dictionaries(st.sampled_from(["X-Distren-Server", "X-Distren-Time", "X-Distren-Nonce",
                                               "X-Distren-Signature", "X-Content-SHA256"]),
                              st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
                              max_size=5))
def test_fuzzed_requests_never_get_a_5xx(client, route, a, b, method, query, body, auth, signed):
    c, token = client
    from urllib.parse import quote

    path = route.format(quote(a, safe=""), quote(b, safe=""))
    headers = dict(signed)
    if auth == "good":
        headers["Authorization"] = f"Bearer {token}"
    elif auth == "lower":
        headers["Authorization"] = f"bearer {token}"
    elif auth == "junk":
        headers["Authorization"] = "Basic Zm9vOmJhcg=="
    r = c.request(method, path, params=query, content=body, headers=headers)
    assert r.status_code < 500, (method, path, query, r.status_code, r.text)
    if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
        assert "error" in r.json() or r.status_code in (404, 405), r.text
    assert c.get("/api/server").status_code == 200
