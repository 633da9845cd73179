"""Verified results against real servers: Mallory, a renderer speaking the protocol, returns wrong
pixels (a black image of the right size, or another frame's image) for a real POV-Ray job. The
origin's check catches it, stops trusting her, takes back every frame she rendered (one she
rendered right included) and refuses her further leases; an honest server renders them again,
and the final images are POV-Ray's own, pixel for pixel."""

from __future__ import annotations

import io
import json
import secrets
import tarfile

import pytest
from PIL import Image

from conftest import SCENES, assert_frames_match, last_line, povray_reference, status
from mallory import Mallory

pytestmark = pytest.mark.e2e

W, H = 64, 48
FRAMES = [f"textured{i}.png" for i in range(1, 7)]


def tar_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def honest_image(frame: int, tmp_path) -> bytes:
    """What an honest renderer sends for ``frame``: POV-Ray's own image of it."""
    work = povray_reference(SCENES / "textured", "textured.ini", tmp_path / f"pov-{frame}-{secrets.token_hex(4)}",
                            W, H, frame, frame)
    return (work / f"textured{frame}.png").read_bytes()


def black_image() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (W, H)).save(buf, format="PNG")
    return buf.getvalue()


def events(server, url: str) -> list[dict]:
    return json.loads(server.cli("events", url, "--json").stdout)


def trust_of(server, name: str) -> str:
    return next(r["trust"] for r in json.loads(server.cli("servers", "--json").stdout) if r["name"] == name)


def lease(m: Mallory, a, job: int) -> int:
    r = m.lease(a, job)
    assert r.status_code == 200, r.text
    return Mallory.leased_frame(r)


def test_black_and_foreign_pixels_are_caught_and_their_frames_rendered_again(start_server, tmp_path):
    a = start_server("a", "--slots", "0", "--allow", "b")  # renders nothing itself: every frame comes from a renderer
    url = last_line(a.cli("submit", str(SCENES / "textured"), "--width", str(W), "--height", str(H)))
    job = status(a, url)["id"]
    m, eve = Mallory("mallory", tmp_path / "m.key"), Mallory("eve", tmp_path / "eve.key")
    try:
        assert m.join(a).status_code == 200 and eve.join(a).status_code == 200
        assert trust_of(a, "mallory").startswith("new: 0 of its first 3")
        # Mallory's first frame is right (checked, as all of a new renderer's first frames are): taken.
        good = lease(m, a, job)
        r = m.upload(a, job, good, tar_of(f"textured{good}.png", honest_image(good, tmp_path)))
        assert r.status_code == 200 and r.json() == {"result": "accepted"}, r.text
        assert trust_of(a, "mallory").startswith("new: 1 of its first 3")
        assert "checked block" in a.cli("log", f"{url}/frame/{good}").stdout
        # Her second is black, of the right size: caught.
        held, bad = lease(m, a, job), lease(m, a, job)
        r = m.upload(a, job, bad, tar_of(f"textured{bad}.png", black_image()))
        assert r.status_code == 403, r.text
        assert "wrong pixels" in r.json()["error"] and "no longer trusts mallory" in r.json()["error"]
        trust = trust_of(a, "mallory")
        assert trust.startswith(f"untrusted: returned wrong pixels in frame {bad} of distren://a/job/{job}"), trust
        assert "untrusted" in a.cli("servers").stdout
        # Every frame she rendered or held is back in the queue, saying why; she gets no more.
        st = status(a, url)
        assert {f["id"]: f["state"] for f in st["frames"] if f["id"] in (good, held, bad)} == \
            {good: "queued", held: "queued", bad: "queued"}
        why = f"re-rendered: mallory returned wrong pixels in frame {bad} of distren://a/job/{job}"
        requeued = {e["frame_id"] for e in events(a, url) if e["new"] == "queued" and e["reason"] == why}
        assert requeued == {good, held, bad, None}  # None: the job's own event (rendering -> queued)
        assert m.lease(a, job).status_code == 403
        r = m.upload(a, job, held, tar_of(f"textured{held}.png", honest_image(held, tmp_path)))
        assert r.status_code in (403, 409) and status(a, url)["counts"]["done"] == 0
        # Eve sends another frame's image, POV-Ray's own, under her frame's name: caught too.
        one, two = lease(eve, a, job), lease(eve, a, job)
        r = eve.upload(a, job, one, tar_of(f"textured{one}.png", honest_image(two, tmp_path)))
        assert r.status_code == 403 and "wrong pixels" in r.json()["error"], r.text
        assert trust_of(a, "eve").startswith(f"untrusted: returned wrong pixels in frame {one} ")
        assert status(a, url)["counts"]["queued"] == 6
        # An honest renderer joins: it renders every frame, and they are POV-Ray's own.
        start_server("b", "--slots", "2", "--peer", a.http)
        a.cli("wait", url, "--timeout", "120")
        assert {f["server"] for f in status(a, url)["frames"]} == {"distren://b/"}
        a.cli("download", url, "-o", str(tmp_path / "got"))
        ref = povray_reference(SCENES / "textured", "textured.ini", tmp_path / "ref", W, H)
        assert_frames_match(tmp_path / "got", ref, FRAMES)
        assert trust_of(a, "b").startswith("trusted: ") or trust_of(a, "b").startswith("new: 3 of")
        # The admin may trust Mallory again: she is then a new renderer, all of whose frames are checked.
        a.cli("peers", "trust", "mallory")
        assert trust_of(a, "mallory").startswith("new: 0 of its first 3")
        assert m.lease(a, job).status_code == 410  # the job is done; she is no longer refused for who she is
        assert trust_of(a, "eve").startswith("untrusted")
    finally:
        m.close()
        eve.close()


def test_without_checks_a_wrong_frame_is_taken(start_server, tmp_path):
    """--verify-first 0 --verify-share 0 turns checking off: what the checks above protect from."""
    a = start_server("a", "--slots", "0", "--verify-first", "0", "--verify-share", "0")
    url = last_line(a.cli("submit", str(SCENES / "textured"), "--width", str(W), "--height", str(H)))
    m = Mallory("mallory", tmp_path / "m.key")
    try:
        assert m.join(a).status_code == 200
        job = status(a, url)["id"]
        bad = lease(m, a, job)
        r = m.upload(a, job, bad, tar_of(f"textured{bad}.png", black_image()))
        assert r.status_code == 200, r.text
        assert trust_of(a, "mallory") == "trusted: 0 frames checked"
        assert status(a, url)["counts"]["done"] == 1
    finally:
        m.close()
