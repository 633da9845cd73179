"""Hostile jobs against a real server with small limits, real POV-Ray, real ffmpeg: settings that
would make ffmpeg, the stitcher or POV-Ray read or write host files or reach the network are
refused at submit with a reason naming the field; scenes that allocate, print, write or loop
without bound fail with a reason naming the limit. After each: the server is alive, nothing was
written outside its folders, and a refused job left no trace."""

from __future__ import annotations

import io
import socket
import tarfile
import threading
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import httpx
import pytest

from conftest import ServerProc, free_port
from distren import jobfile, sandbox
from distren import backends
from distren.errors import JobFileError

pytestmark = pytest.mark.e2e

MiB = 1 << 20
LIMITS = ["--slots", "2", "--max-memory", "768M", "--max-output", "32M", "--max-files", "100",
          "--max-file-bytes", "4M", "--frame-timeout", "10"]
DATA_ENTRIES = {"state.sqlite", "state.sqlite-wal", "state.sqlite-shm", "admin.token", "server.key",
                "jobs", "work", "incoming", "outgoing"}
STILL_INI = "Input_File_Name=scene.pov\nOutput_File_Name=still.png\n"
PLAIN_POV = "camera { location <0, 0, -4> look_at 0 }\nlight_source { <2, 4, -3> rgb 1 }\nsphere { 0, 1 pigment { rgb 1 } }\n"


class Guard:
    """A listening socket that records any connection made to it, and a folder outside the
    server's data that nothing may write to."""

    def __init__(self, outside: Path):
        self.outside = outside
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.hits += 1
                conn.close()
            except OSError:
                pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile-sandbox")
    outside = base / "outside"
    outside.mkdir()
    guard = Guard(outside)
    server = ServerProc("hs", base / "data", free_port(), list(LIMITS)).start()
    yield server, guard
    server.stop()
    guard.stop.set()
    guard.sock.close()


def bundle(frames_xml: str, files: dict[str, bytes | str], width: int = 32, height: int = 24,
           ini: str = "still.ini") -> bytes:
    xml = (f'<distren version="1"><job type="povray"><resolution width="{width}" height="{height}"/>'
           f'<povray ini="{ini}"/><frames>{frames_xml}</frames></job></distren>')
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in {"distrenjob.xml": xml, **files}.items():
            data = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def still(pov: str = PLAIN_POV, **more: bytes | str) -> dict[str, bytes | str]:
    return {"scene/still.ini": STILL_INI, "scene/scene.pov": pov, **{f"scene/{k}": v for k, v in more.items()}}


def api(server: ServerProc, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, server.http + path, headers={"Authorization": f"Bearer {server.token}"},
                         timeout=60, **kw)


def job_count(server: ServerProc) -> int:
    return len(api(server, "GET", "/api/jobs").json())


def check_after(server: ServerProc, guard: Guard) -> None:
    """The server answers, wrote only its own folders, nothing reached the host or network."""
    assert server.proc.poll() is None, "the server died"
    assert api(server, "GET", "/api/server").status_code == 200
    assert set(p.name for p in server.data.iterdir()) <= DATA_ENTRIES
    assert list(guard.outside.iterdir()) == []
    assert guard.hits == 0, "something connected to the guard's port"


def refused(server: ServerProc, guard: Guard, data: bytes, *fragments: str) -> str:
    before = job_count(server)
    r = api(server, "POST", "/api/jobs", content=data)
    assert r.status_code == 400, (r.status_code, r.text)
    msg = r.json()["error"]
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    assert str(server.data) not in msg
    assert job_count(server) == before
    check_after(server, guard)
    return msg


def run_job(server: ServerProc, data: bytes, timeout: float = 60) -> dict:
    r = api(server, "POST", "/api/jobs", content=data)
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        st = api(server, "GET", f"/api/jobs/{job}").json()
        if st["state"] in ("done", "failed"):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.2)


def movie_frames(**settings: str) -> str:
    attrs = " ".join(f"{k}={quoteattr(v, {chr(10): '&#10;', chr(9): '&#9;', chr(13): '&#13;'})}"
                     for k, v in settings.items())
    return f'<frame name="frame/0"/><frame name="frame/1" type="movie"><movie {attrs}/></frame>'


def stitch_frames(output: str = "full.png", tiles: str = "t0.png@0,0,32,12;t1.png@0,12,32,24") -> str:
    return (f'<frame name="frame/0"/><frame name="frame/1" type="stitch">'
            f'<stitch output={quoteattr(output, {chr(10): "&#10;"})} '
            f'tiles={quoteattr(tiles, {chr(10): "&#10;", chr(13): "&#13;"})}/></frame>')


# --- refused at submit: names that would reach past the frame's folder ---------------------------

OUT = "@OUTSIDE@"  # replaced by the guard's folder (outside the server's data)
PORT = "@PORT@"

MOVIE_CASES = [
    ("output", f"file:{OUT}/x.mp4", "URL"),
    ("output", f"http://127.0.0.1:{PORT}/x.mp4", "URL"),
    ("output", "pipe:1", "URL"),
    ("output", f"{OUT}/x.mp4", "absolute"),
    ("output", "../../x.mp4", "'..'"),
    ("output", "-y.mp4", "starts with '-'"),
    ("output", "a'b.mp4", "quote"),
    ("output", 'a"b.mp4', "quote"),
    ("output", "a\nb.mp4", "control character"),
    ("output", "a\tb.mp4", "control character"),
    ("output", "a b.mp4", "' '"),
    ("output", "a|b.mp4", "'|'"),
    ("output", "./x.mp4", "'.' component"),
    ("output", "dir//x.mp4", "empty"),
    ("output", "", "empty"),
    ("inputs", f"file:{OUT}/host.png", "URL"),
    ("inputs", "ok.png;file:/etc/passwd.png", "URL"),
    ("inputs", f"http://127.0.0.1:{PORT}/a.png", "URL"),
    ("inputs", "concat:a.png|b.png", "URL"),
    ("inputs", "ok.png;../x.png", "'..'"),
    ("inputs", "/etc/x.png", "absolute"),
    ("inputs", 'ok.png;a"b.png', "quote"),
    ("inputs", "ok.png;\rb.png", "control character"),
    ("inputs", "a.png;b.tga", "one type"),
    ("inputs", "list.m3u8", "one type"),
    ("inputs", "%d.png", "'%'"),
    ("fps", "1e3", "frames per second"),
    ("fps", "nan", "frames per second"),
    ("fps", "24 -i x", "frames per second"),
    ("fps", "-1", "frames per second"),
    ("fps", "0", "frames per second"),
]


@pytest.mark.parametrize("field,value,why", MOVIE_CASES, ids=[f"movie-{f}-{v!r}" for f, v, _ in MOVIE_CASES])
def test_movie_settings_that_reach_out_are_refused(world, field, value, why):
    server, guard = world
    value = value.replace(OUT, str(guard.outside)).replace(PORT, str(guard.port))
    settings = {"output": "movie.mp4", "inputs": "still.png", "fps": "24"} | {field: value}
    msg = refused(server, guard, bundle(movie_frames(**settings), still()), f"movie frame/1 {field}", why)
    assert "plain relative" in msg or field == "fps" or why == "one type"


STITCH_CASES = [
    ("output", f"file:{OUT}/full.png", "t0.png@0,0,32,12;t1.png@0,12,32,24", "output", "URL"),
    ("output", f"http://127.0.0.1:{PORT}/full.png", "t0.png@0,0,32,12;t1.png@0,12,32,24", "output", "URL"),
    ("output", "-full.png", "t0.png@0,0,32,12;t1.png@0,12,32,24", "output", "starts with '-'"),
    ("tiles", "full.png", f"file:{OUT}/t.png@0,0,32,24", "tiles", "URL"),
    ("tiles", "full.png", "t0.png@0,0,32,12;http://x/t1.png@0,12,32,24", "tiles", "URL"),
    ("tiles", "full.png", "t'0.png@0,0,32,24", "tiles", "quote"),
    ("tiles", "full.png", "t0\n.png@0,0,32,24", "tiles", "control character"),
    ("tiles", "full.png", "../t0.png@0,0,32,24", "tiles", "'..'"),
    ("tiles", "full.png", f"{OUT}/t0.png@0,0,32,24", "tiles", "absolute"),
    ("region", "full.png", "t0.png@0,0,32,24 ", "tiles", "x0,y0,x1,y1"),
    ("region", "full.png", "t0.png@0,0,3_2,24", "tiles", "x0,y0,x1,y1"),
    ("region", "full.png", "t0.png@0,0,64,24", "tiles", "not inside"),
]


@pytest.mark.parametrize("what,output,tiles,field,why", STITCH_CASES,
                         ids=[f"stitch-{w}-{t!r}" if w != "output" else f"stitch-output-{o!r}"
                              for w, o, t, _, _ in STITCH_CASES])
def test_stitch_settings_that_reach_out_are_refused(world, what, output, tiles, field, why):
    server, guard = world
    sub = lambda s: s.replace(OUT, str(guard.outside)).replace(PORT, str(guard.port))  # noqa: E731
    refused(server, guard, bundle(stitch_frames(sub(output), sub(tiles)), still()), f"stitch frame/1 {field}", why)


TILE_CASES = [
    ("t.png +I/etc/passwd", "' '"),
    ("+Ievil.png", "starts with '-' or '+'"),
    (f"file:{OUT}/t.png", "URL"),
    ("../t.png", "'..'"),
]


@pytest.mark.parametrize("output,why", TILE_CASES, ids=[f"tile-output-{o!r}" for o, _ in TILE_CASES])
def test_tile_outputs_that_reach_povrays_command_line_are_refused(world, output, why):
    server, guard = world
    frame = f'<frame name="frame/0"><povray region="0,0,32,24" output={quoteattr(output.replace(OUT, str(guard.outside)))}/></frame>'
    refused(server, guard, bundle(frame, still()), "tile frame/0 output", why)


def test_an_ini_named_as_a_url_is_refused(world):
    server, guard = world
    refused(server, guard, bundle('<frame name="frame/0"/>', still(), ini="file:still.ini"), "<povray> ini", "URL")


# --- on a peer: the origin's settings are untrusted too ---------------------------------------------


@pytest.mark.parametrize("kind,settings", [
    ("movie", {"output": "file:/tmp/x.mp4", "inputs": "a.png"}),
    ("movie", {"output": "m.mp4", "inputs": "http://127.0.0.1:9/a.png"}),
    ("stitch", {"output": "x.png", "tiles": "file:/etc/t.png@0,0,32,24"}),
    ("stitch", {"output": "-x.png", "tiles": "t.png@0,0,32,24"}),
    ("povray", {"region": "0,0,32,24", "output": "+I/etc/passwd"}),
])
def test_a_peer_refuses_hostile_settings_before_running_anything(tmp_path, kind, settings):
    """A peer renders what an origin leased it: its backend checks the names again, before
    anything runs, whatever the origin accepted."""
    jf = jobfile.JobFile("povray", 32, 24, (jobfile.Frame(1, type=kind, settings=settings),), {"ini": "a.ini"})
    backend = backends.get(kind)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(JobFileError, match="plain relative"):
        backend.render(jf, jf.frames[0], tmp_path, tmp_path / "log", sandbox.Limits())
    assert not (tmp_path / "log").exists()
    assert not Path("/tmp/x.mp4").exists()


# --- renders that run, and fail within their limits -------------------------------------------------


def test_a_movie_of_a_host_reaching_playlist_fails_inside_the_sandbox(world):
    """An input named .png that is really an HLS playlist pointing at the guard and at a host
    file: ffmpeg reads it as an image (-f image2, file protocol only) and fails; nothing is read
    or reached."""
    server, guard = world
    playlist = (f"#EXTM3U\n#EXTINF:1,\nhttp://127.0.0.1:{guard.port}/x.ts\n#EXTINF:1,\nfile:/etc/passwd\n")
    st = run_job(server, bundle(movie_frames(output="movie.mp4", inputs="evil.png", fps="24"),
                                still(**{"evil.png": playlist})))
    movie = st["frames"][1]
    assert st["state"] == "failed" and movie["state"] == "failed"
    assert movie["reason"].startswith("movie: ffmpeg failed")
    check_after(server, guard)


def test_a_movie_of_scene_images_renders_in_the_sandbox(world, tmp_path):
    server, guard = world
    from PIL import Image

    pngs = {}
    for i in range(3):
        buf = io.BytesIO()
        Image.new("RGB", (32, 24), (80 * i, 0, 0)).save(buf, format="PNG")
        pngs[f"img/f{i}.png"] = buf.getvalue()
    st = run_job(server, bundle(movie_frames(output="out/movie.mp4", inputs="img/f0.png;img/f1.png;img/f2.png",
                                             fps="12.5"), still(**pngs)))
    assert st["state"] == "done", st
    assert st["frames"][1]["files"] == ["out/movie.mp4"]
    check_after(server, guard)


def test_a_stitch_of_a_pixel_bomb_fails_cleanly(world):
    """A tile whose header claims 30000x30000 pixels: the sandboxed stitcher refuses it by size
    before decoding; the server never opens it."""
    server, guard = world
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    st = run_job(server, bundle(stitch_frames("full.png", "bomb.png@0,0,32,24"), still(**{"bomb.png": bomb})))
    assert st["frames"][1]["state"] == "failed"
    assert "stitch" in st["frames"][1]["reason"] and "32x24" in st["frames"][1]["reason"]
    check_after(server, guard)


def scene_job(server: ServerProc, pov: str, timeout: float = 60) -> dict:
    started = time.monotonic()
    st = run_job(server, bundle('<frame name="frame/0"/>', still(pov)), timeout)
    st["elapsed"] = time.monotonic() - started
    return st


def test_a_scene_that_allocates_6_gib_fails_naming_memory(world):
    server, guard = world
    st = scene_job(server, "#declare A = array[800000000];\n" + PLAIN_POV)
    frame = st["frames"][0]
    assert frame["state"] == "failed" and frame["attempts"] == 1  # a limit is final: no retry
    assert "more than 768 MiB of memory" in frame["reason"] and "--max-memory" in frame["reason"]
    print(f"\n6 GiB allocation stopped by the 768 MiB limit; job failed {st['elapsed']:.2f} s after submit")
    check_after(server, guard)


def test_a_scene_that_grows_without_bound_fails_naming_memory(world):
    server, guard = world
    st = scene_job(server, "#declare N = 0;\n#declare U = union { #while (N < 100000000) sphere { <N, 0, 0>, 1 "
                           "texture { pigment { rgb N } normal { bumps 0.5 } } } #declare N = N + 1; #end }\n" + PLAIN_POV)
    reason = st["frames"][0]["reason"]
    # POV-Ray says only "Cannot parse input": the watch saw its address space reach the limit.
    assert reason.startswith("the render used more than 768 MiB of memory") and "--max-memory" in reason, reason
    assert "Parsing" not in reason
    check_after(server, guard)


def server_rss(server: ServerProc) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


DEBUG_LINE = '#declare S = "' + "x" * 79 + '\\n";\n'


def test_endless_debug_output_fails_naming_output_and_server_memory_stays_flat(world):
    server, guard = world
    before = server_rss(server)
    st = scene_job(server, DEBUG_LINE + "#while (1) #debug S #end\n" + PLAIN_POV)
    after = server_rss(server)
    frame = st["frames"][0]
    assert "printed more than 32 MiB of output" in frame["reason"] and "--max-output" in frame["reason"]
    log = api(server, "GET", f"/api/jobs/{st['id']}/frames/0/log").text
    assert len(log) < 3 * MiB
    print(f"\nendless #debug: server RSS {before / MiB:.1f} MiB before, {after / MiB:.1f} MiB after; "
          f"log kept {len(log) / MiB:.2f} MiB")
    assert after - before < 40 * MiB
    check_after(server, guard)


def test_a_long_debug_output_below_the_limit_renders_with_a_bounded_log(world):
    """25 MB printed, under the 32 MiB limit: the frame renders, its log keeps the last MiB."""
    server, guard = world
    before = server_rss(server)
    st = scene_job(server, DEBUG_LINE + "#declare N = 0;\n#while (N < 300000) #debug S #declare N = N + 1; #end\n"
                   + PLAIN_POV)
    after = server_rss(server)
    assert st["state"] == "done", st
    log = api(server, "GET", f"/api/jobs/{st['id']}/frames/0/log").text
    assert "bytes of output dropped" in log and len(log) < 3 * MiB
    print(f"\n24 MB of #debug rendered: server RSS {before / MiB:.1f} MiB before, {after / MiB:.1f} MiB after")
    assert after - before < 40 * MiB
    check_after(server, guard)


def test_a_huge_written_file_fails_naming_file_size(world):
    server, guard = world
    st = scene_job(server, DEBUG_LINE + '#fopen F "huge.txt" write\n#while (1) #write (F, S) #end\n' + PLAIN_POV)
    frame = st["frames"][0]
    assert "wrote a file larger than 4 MiB" in frame["reason"] and "--max-file-bytes" in frame["reason"]
    check_after(server, guard)


def test_many_files_that_add_up_fail_naming_their_total(world):
    """Ten files of 1 MB, each under the 4 MiB file limit: together they are over it."""
    server, guard = world
    st = scene_job(server, DEBUG_LINE + '#declare N = 0;\n#while (N < 10) #fopen F concat("part", str(N, 0, 0), ".txt") '
                   'write #declare K = 0; #while (K < 12500) #write (F, S) #declare K = K + 1; #end #fclose F '
                   '#declare N = N + 1; #end\n' + PLAIN_POV)
    frame = st["frames"][0]
    assert "wrote more than 4 MiB of files" in frame["reason"] and "--max-file-bytes" in frame["reason"], frame
    check_after(server, guard)


def test_three_thousand_files_fail_naming_file_count(world):
    server, guard = world
    st = scene_job(server, '#declare N = 0;\n#while (N < 3000) #fopen F concat("f", str(N, 0, 0), ".txt") write '
                           '#write (F, "x") #fclose F #declare N = N + 1; #end\n' + PLAIN_POV)
    frame = st["frames"][0]
    assert "wrote more than 100 files" in frame["reason"] and "--max-files" in frame["reason"]
    assert not any((server.data / "work").iterdir())  # the working folder is gone, files and all
    check_after(server, guard)


def test_a_scene_that_never_ends_fails_naming_the_frame_timeout(world):
    server, guard = world
    st = scene_job(server, "#declare N = 0;\n#while (1) #declare N = N + 1; #end\n" + PLAIN_POV)
    frame = st["frames"][0]
    assert "took longer than 10 s" in frame["reason"] and "--frame-timeout" in frame["reason"]
    assert st["elapsed"] < 30
    check_after(server, guard)


def test_a_scene_cannot_read_or_write_host_files(world):
    server, guard = world
    target = guard.outside / "written.txt"
    st = scene_job(server, f'#fopen W "{target}" write\n#write (W, "x")\n#fclose W\n'
                           '#fopen R "/etc/passwd" read\n#read (R, L)\n' + PLAIN_POV)
    frame = st["frames"][0]
    assert frame["state"] == "failed" and "root:" not in frame["reason"]
    check_after(server, guard)
