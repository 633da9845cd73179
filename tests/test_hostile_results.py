"""Hostile frame uploads from a peer, against a real origin server: a renderer that leased a frame
sends tarballs that carry other frames' images, extra files, links, names that climb out, images
whose pixels do not decode, a gzip bomb. Each is refused with a reason naming what is wrong; the
frame stays leased and not done, the server is alive, nothing is written outside its folders and
nothing is left in its staging folder. Then genuine uploads (one of them naming its image
``./NAME``) finish the job, and result.tar holds exactly those images."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import SCENES, ServerProc, free_port
from distren import checkers, images, sandbox
from mallory import as_peer
from distren.uploads import largest_file

pytestmark = pytest.mark.e2e

W, H = 32, 24
NO_PIXEL_CHECKS = ["--verify-first", "0", "--verify-share", "0"]
DATA_ENTRIES = {"state.sqlite", "state.sqlite-wal", "state.sqlite-shm", "admin.token", "server.key",
                "jobs", "work", "incoming", "outgoing"}


def png(color=(200, 30, 30), size=(W, H)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_garbage_pixels() -> bytes:
    """A PNG whose header, chunk lengths and CRCs are all valid, but whose pixel data is not a
    zlib stream: only decoding the pixels tells."""
    ihdr = struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(range(256)) * 8) + chunk(b"IEND", b"")


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header announcing a vast image, with a few bytes of pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b""))


def tar_of(*members, fmt=tarfile.PAX_FORMAT) -> bytes:
    """(name, bytes) files, or TarInfo objects as they are (links, devices, folders)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                t.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                t.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def special(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def gzip_bomb(name: str, size: int) -> bytes:
    """A .tar.gz of one file of ``size`` zero bytes, ~1000 times smaller than that: gzip members
    may be concatenated, so one compressed block of zeros is repeated."""
    info = tarfile.TarInfo(name)
    info.size = size
    header = info.tobuf(tarfile.PAX_FORMAT)
    block = 16 << 20
    zeros = gzip.compress(b"\0" * block, 9)
    parts = [gzip.compress(header, 9)]
    parts += [zeros] * (size // block)
    tail = size % block + (-size % 512) + 1024  # the rest, padding to 512, two end-of-archive blocks
    parts.append(gzip.compress(b"\0" * tail, 9))
    return b"".join(parts)


class Peer:
    """A renderer as the origin sees it: a key it introduced with a hello, signing its calls."""

    def __init__(self, origin: ServerProc, name: str, keyfile: Path):
        self.origin = origin
        self.id = as_peer(origin, name, keyfile)

    def call(self, method: str, path: str, body: bytes = b"", digest: str | None = None,
             headers: dict | None = None) -> httpx.Response:
        if digest is None and body:
            digest = hashlib.sha256(body).hexdigest()
        h = self.id.sign_request(method, path, *([digest] if digest else []), to=self.origin.name)
        return httpx.request(method, self.origin.http + path, content=body, headers={**h, **(headers or {})},
                             timeout=120)

    def lease(self, job: int) -> int:
        r = self.call("POST", f"/fed/jobs/{job}/lease?slots=2")  # it says it has two slots: two leases
        assert r.status_code == 200, r.text
        return int(r.content.split(b"/frame/")[1].split(b'"')[0])

    def upload(self, job: int, frame: int, data: bytes, claimed: str | None = None) -> httpx.Response:
        sha = claimed or hashlib.sha256(data).hexdigest()
        return self.call("PUT", f"/fed/jobs/{job}/frames/{frame}/result", data, digest=sha,
                         headers={"X-Content-SHA256": sha, "Content-Type": "application/x-tar"})


def api(server: ServerProc, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, server.http + path, headers={"Authorization": f"Bearer {server.token}"},
                         timeout=60, **kw)


def du(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile-results")
    # Its uploads are made-up images: the origin's checks of their pixels (test_e2e_verification) are off.
    origin = ServerProc("origin", base / "data", free_port(), ["--slots", "0", "--lease-timeout", "600",
                                                               *NO_PIXEL_CHECKS]).start()
    r = subprocess.run([sys.executable, "-m", "distren", "pack", str(SCENES / "textured"), "-o", str(base / "t.tar"),
                        "--width", str(W), "--height", str(H), "--frames", "1-2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = api(origin, "POST", "/api/jobs", content=(base / "t.tar").read_bytes())
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    peer = Peer(origin, "mallory", base / "mallory.key")
    first = peer.lease(job)
    second = peer.lease(job)
    assert {first, second} == {1, 2}
    yield origin, peer, job, base
    origin.stop()


def state(origin: ServerProc, job: int) -> list:
    st = api(origin, "GET", f"/api/jobs/{job}").json()
    return [(f["id"], f["state"], f["server"], f["files"]) for f in st["frames"]] + [st["state"]]


def check_refused(site, frame: int, data: bytes, *fragments: str, claimed: str | None = None) -> str:
    origin, peer, job, base = site
    before, used = state(origin, job), du(origin.data)
    outside = sorted(p.name for p in base.iterdir())
    r = peer.upload(job, frame, data, claimed)
    assert r.status_code == 400, (r.status_code, r.text)
    msg = r.json()["error"]
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    assert str(origin.data) not in msg and "/incoming/" not in msg
    assert "\n" not in msg, "a refusal is one line"
    assert origin.proc.poll() is None, "the origin died"
    assert api(origin, "GET", "/api/server").status_code == 200
    assert state(origin, job) == before, "a refused upload changed the job"
    assert list((origin.data / "incoming").iterdir()) == [], "the refused upload left files behind"
    assert du(origin.data) - used < (1 << 20), "the refused upload grew the server's data"
    assert set(p.name for p in origin.data.iterdir()) <= DATA_ENTRIES
    assert sorted(p.name for p in base.iterdir()) == outside, "something was written beside the server's data"
    return msg


CASES = [
    # (id, frame 1's tarball, fragments of the refusal)
    ("another-frames-image", lambda: tar_of(("textured1.png", png()), ("textured2.png", png((0, 0, 0)))),
     ["'textured2.png' is not a file this frame makes", "it makes textured1.png"]),
    ("only-another-frames-image", lambda: tar_of(("textured2.png", png())), ["'textured2.png' is not a file"]),
    ("an-extra-file", lambda: tar_of(("textured1.png", png()), ("notes.txt", b"hi")), ["'notes.txt' is not a file"]),
    ("a-scene-file", lambda: tar_of(("textured1.png", png()), ("textured.pov", b"#declare X=1;")),
     ["'textured.pov' is not a file"]),
    ("the-image-in-a-folder", lambda: tar_of(("sub/textured1.png", png())), ["'sub/textured1.png' is not a file"]),
    ("empty", lambda: tar_of(), ["lacks textured1.png"]),
    ("only-folders", lambda: tar_of(special("textured1.png", tarfile.DIRTYPE)), ["lacks textured1.png"]),
    ("garbage-pixels", lambda: tar_of(("textured1.png", png_with_garbage_pixels())),
     ["textured1.png is not a readable image"]),
    ("truncated-png", lambda: tar_of(("textured1.png", png()[:-30])), ["textured1.png is not a readable image"]),
    ("not-a-png", lambda: tar_of(("textured1.png", b"GIF89a not really")), ["textured1.png is not a readable image"]),
    ("wrong-size", lambda: tar_of(("textured1.png", png(size=(16, 16)))), ["textured1.png is 16x16", "renders 32x24"]),
    ("vast-header", lambda: tar_of(("textured1.png", png_claiming(100_000, 100_000))),
     ["textured1.png claims more pixels than any job has"]),
    ("larger-than-any-such-image", lambda: tar_of(("textured1.png", png() + b"\0" * (3 << 20))),
     ["textured1.png is", "at most"]),
    ("symlink", lambda: tar_of(special("textured1.png", tarfile.SYMTYPE, "/etc/passwd")), ["is a link"]),
    ("hardlink", lambda: tar_of(special("textured1.png", tarfile.LNKTYPE, "textured.pov")), ["is a link"]),
    ("device", lambda: tar_of(special("textured1.png", tarfile.CHRTYPE)), ["special file"]),
    ("fifo", lambda: tar_of(special("textured1.png", tarfile.FIFOTYPE)), ["special file"]),
    ("climbs-out", lambda: tar_of(("../textured1.png", png())), ["climbs out"]),
    ("absolute", lambda: tar_of(("/tmp/textured1.png", png())), ["absolute path"]),
    ("backslash", lambda: tar_of(("..\\textured1.png", png())), ["absolute path"]),
    ("twice", lambda: tar_of(("textured1.png", png()), ("./textured1.png", png((0, 0, 0)))), ["appears twice"]),
    ("nul-in-pax-name", lambda: tar_of(("textured1.png\u00e9\x00x", png())), ["control character"]),
    ("long-component", lambda: tar_of(("a" * 300 + ".png", png())), ["longer than 255 bytes"]),
    ("deep-path", lambda: tar_of(("a/" * 4000 + "textured1.png", png())), ["longer than 1024 bytes"]),
    ("many-members", lambda: tar_of(*[special(f"d{i}", tarfile.DIRTYPE) for i in range(1001)]),
     ["more than 1000 members"]),
    ("not-a-tarball", lambda: b"\x89PNG this is no tarball" * 40, ["not a readable tarball"]),
    ("trailing-garbage", lambda: tar_of(("textured1.png", png())) + b"junk" * 256, ["after the end"]),
    ("truncated-gzip", lambda: gzip.compress(tar_of(("textured1.png", png())))[:120], ["frame tarball:"]),
]


@pytest.mark.parametrize("make,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_hostile_upload_is_refused_and_changes_nothing(site, make, fragments):
    check_refused(site, 1, make(), *fragments)


def test_a_gzip_bomb_is_refused_by_its_headers_without_unpacking(site):
    """1.5 MiB that unpacks to 1.6 GB under the frame's own image name."""
    bomb = gzip_bomb("textured1.png", 1_600_000_000)
    assert len(bomb) < 2 << 20
    started = time.monotonic()
    msg = check_refused(site, 1, bomb, "textured1.png is 1600000000 bytes",
                        f"at most {largest_file('textured1.png', W, H, 1 << 40)}")
    assert "frame tarball:" in msg
    assert time.monotonic() - started < 30


def test_content_other_than_the_signed_digest_is_refused(site):
    data = tar_of(("textured1.png", png()))
    check_refused(site, 1, data, "does not match its X-Content-SHA256", claimed=hashlib.sha256(b"other").hexdigest())


def test_an_upload_over_max_result_bytes_is_refused_while_streaming(tmp_path):
    origin = ServerProc("small", tmp_path / "data", free_port(),
                        ["--slots", "0", "--lease-timeout", "600", "--max-result-bytes", "64K",
                         *NO_PIXEL_CHECKS]).start()
    try:
        r = subprocess.run([sys.executable, "-m", "distren", "pack", str(SCENES / "textured"), "-o",
                            str(tmp_path / "t.tar"), "--width", str(W), "--height", str(H), "--frames", "1"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        job = api(origin, "POST", "/api/jobs", content=(tmp_path / "t.tar").read_bytes()).json()["id"]
        peer = Peer(origin, "renderer", tmp_path / "r.key")
        frame = peer.lease(job)
        big = tar_of(("textured1.png", png() + b"\0" * (100 << 10)))
        r = peer.upload(job, frame, big)
        assert r.status_code == 400 and "larger than 65536 bytes" in r.json()["error"], r.text
        # By the headers too: a small upload whose members add up to more than the limit.
        bomb = gzip_bomb("textured1.png", 200 << 10)
        assert len(bomb) < 64 << 10
        r = peer.upload(job, frame, bomb)
        assert r.status_code == 400 and "frame tarball:" in r.json()["error"], r.text
        assert origin.proc.poll() is None
        assert list((origin.data / "incoming").iterdir()) == []
        # A genuine upload within the limit is taken.
        r = peer.upload(job, frame, tar_of(("textured1.png", png())))
        assert r.status_code == 200 and r.json() == {"result": "accepted"}, r.text
    finally:
        origin.stop()


def test_genuine_uploads_finish_the_job_and_result_tar_holds_exactly_them(site, tmp_path):
    origin, peer, job, base = site
    one, two = png((10, 200, 10)), png((10, 10, 200))
    r = peer.upload(job, 1, tar_of(("./textured1.png", one)))  # `./NAME` is NAME
    assert r.status_code == 200 and r.json() == {"result": "accepted"}, r.text
    r = peer.upload(job, 1, tar_of(("./textured1.png", one)))  # again: idempotent
    assert r.json() == {"result": "already done"}
    r = peer.upload(job, 2, tar_of(("textured2.png", two)))
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    while (st := api(origin, "GET", f"/api/jobs/{job}").json())["state"] != "done":
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    assert [f["files"] for f in st["frames"]] == [["textured1.png"], ["textured2.png"]]
    r = api(origin, "GET", f"/api/jobs/{job}/result")
    with tarfile.open(fileobj=io.BytesIO(r.content)) as t:
        got = {m.name: t.extractfile(m).read() for m in t if m.isfile()}
    assert sorted(got) == ["distrenjob.xml", "textured1.png", "textured2.png"]
    assert got["textured1.png"] == one and got["textured2.png"] == two


def test_a_peers_failure_reason_is_stored_as_one_bounded_line(site):
    origin, peer, _, base = site
    r = api(origin, "POST", "/api/jobs", content=(base / "t.tar").read_bytes())
    job = r.json()["id"]
    frame = peer.lease(job)
    junk = "POV-Ray said:\x00\x1b[31m\x07 bad\r\nthing\u202e\ufffd\ufffd " + "\x01x" * 6000
    body = json.dumps({"reason": junk, "log": "a log"}).encode()
    r = peer.call("POST", f"/fed/jobs/{job}/frames/{frame}/failed", body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    st = api(origin, "GET", f"/api/jobs/{job}").json()
    reasons = [f["reason"] for f in st["frames"] if f["id"] == frame]
    reasons += [e["reason"] for e in api(origin, "GET", f"/api/jobs/{job}/events").json()]
    assert any("POV-Ray said: [31m bad thing x x" in r for r in reasons), reasons
    for reason in reasons:
        assert len(reason) <= 2000
        assert all(c.isprintable() for c in reason), repr(reason)
    assert origin.proc.poll() is None


# --- images: decoded whole, up to the job's largest size, in the sandbox ----------------------------


def test_check_image_decodes_the_pixels_not_just_the_header(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(png_with_garbage_pixels())
    with Image.open(bad) as im:  # the header alone looks fine
        assert im.size == (W, H)
        im.verify()
    with pytest.raises(images.ImageError, match="bad.png is not a readable image"):
        images.check_image(bad, W, H, "bad.png")
    good = tmp_path / "good.png"
    good.write_bytes(png())
    images.check_image(good, W, H, "good.png")
    with pytest.raises(images.ImageError, match="good.png is 32x24; the job renders 33x24"):
        images.check_image(good, 33, H, "good.png")


def test_images_larger_than_pillows_default_limit_pass_in_the_sandbox(tmp_path):
    """13500 x 13500 is 182 Mpx, above Pillow's 179 Mpx bomb limit, and within the job's 16384^2."""
    side = 13500
    work = tmp_path / "work"
    work.mkdir()
    Image.new("1", (side, side), 1).save(work / "big.png")
    assert Image.MAX_IMAGE_PIXELS < side * side
    pool = checkers.Checkers(sandbox.Limits())
    try:
        pool.check((1, "peer"), work, ["big.png"], side, side)
        before = Image.MAX_IMAGE_PIXELS
        images.check_image(work / "big.png", side, side, "big.png")
        assert Image.MAX_IMAGE_PIXELS == before  # raised only inside the check
        with pytest.raises(images.ImageError, match="big.png is 13500x13500; the job renders 13500x13499"):
            pool.check((1, "peer"), work, ["big.png"], side, side - 1)
    finally:
        pool.close()
