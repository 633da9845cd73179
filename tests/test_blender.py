"""The Blender backend: bpy in the sandbox, `distren pack scene.blend`, frames equal to Blender's
own renders, tiles, and a stranger's .blend that tries to run code. The scenes are made by the
tests through bpy (tests/blender_scenes.py), once per session, at 32x24 and 2 samples."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import REPO, last_line, same_pixels, status
from distren import backends, jobfile, pack, sandbox
from distren.backends import blender
from distren.errors import LimitExceeded, RenderError, SceneError
from distren.scheduling import prepare_workdir

SCENES = REPO / "tests" / "blender_scenes.py"
FRAMES = [f"render/frame_{i:04d}.png" for i in range(1, 13)]


def _bpy(*args: str) -> str:
    res = subprocess.run([sys.executable, str(SCENES), *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout


@pytest.fixture(scope="session")
def blend(tmp_path_factory) -> dict:
    """The scenes, Blender's names for a few output patterns, Blender's own renders of
    anim.blend, and a loopback port listening for hostile.blend's script to call."""
    base = tmp_path_factory.mktemp("blender")
    folder = base / "scene"
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    out = _bpy("make", str(folder), str(listener.getsockname()[1]))
    names = json.loads(next(ln for ln in out.splitlines() if ln.startswith("names: "))[7:])
    _bpy("own", str(folder / "anim.blend"), str(base / "own"))
    yield {"folder": folder, "names": names, "own": base / "own", "base": base, "listener": listener}
    listener.close()


def unpack(tar: Path, dest: Path) -> tuple[jobfile.JobFile, Path]:
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    return jobfile.loads((dest / jobfile.FILENAME).read_bytes()), dest / "scene"


def render(jf, frame, scene: Path, work: Path, box=None) -> tuple[Path, str]:
    """A frame (or a box of it) as a server renders it: a working copy of the scene, the sandbox."""
    shared = prepare_workdir(scene, work)
    log = work.parent / f"{work.name}.log"
    b = backends.get("blender")
    if box is None:
        name = b.render(jf, frame, work, log, sandbox.Limits(wall=120), None, shared)[0]
    else:
        name = b.render_region(jf, frame, work, log, sandbox.Limits(wall=120), box, shared)
    return work / name, log.read_text()


def test_frame_names_are_blenders(blend):
    for key, name in blend["names"].items():
        pattern, fmt = key.split("|")
        assert blender.frame_name(blender.output_pattern(pattern), 7, fmt) == name, key
    assert blender.output_pattern("/tmp/") == "" and blender.frame_name("", 3, "PNG") == "0003.png"


def test_registry_states_blender_with_its_version():
    assert backends.available()["blender"] == "5.0.1"
    assert backends.for_job("blender").deterministic


def test_pack_reads_the_blend_and_bundles_its_texture(blend, tmp_path):
    jf = pack.pack(blend["folder"] / "anim.blend", tmp_path / "job.tar")
    assert (jf.type, jf.width, jf.height) == ("blender", 32, 24)
    assert [f.id for f in jf.frames] == list(range(1, 13))
    assert jf.settings == {"blend": "anim.blend", "output": "render/frame_####", "format": "PNG", "samples": "2",
                           "seed": "7", "denoise": "0", "compositing": "0"}
    with tarfile.open(tmp_path / "job.tar") as t:
        # Only what the scene uses: not the other .blend files beside it.
        assert sorted(t.getnames()) == ["distrenjob.xml", "scene/anim.blend", "scene/textures/checker.png"]
    with pytest.raises(SceneError, match=r"several \.blend files \(anim\.blend, hostfile\.blend"):
        pack.pack(blend["folder"], tmp_path / "j1.tar")
    alone = tmp_path / "alone"
    shutil.copytree(blend["folder"] / "textures", alone / "textures")
    shutil.copy(blend["folder"] / "anim.blend", alone / "anim.blend")
    # A folder holding one .blend is that .blend.
    jf = pack.pack(alone, tmp_path / "j2.tar", width=16, height=12, frames="3-5", movie=True)
    assert (jf.width, jf.height, [f.id for f in jf.frames]) == (16, 12, [3, 4, 5, 6])
    assert jf.frames[-1].type == "movie"
    assert jf.frames[-1].settings["inputs"] == "render/frame_0003.png;render/frame_0004.png;render/frame_0005.png"


def test_a_linked_library_travels_with_the_files_it_uses(blend, tmp_path):
    """linked.blend links a cone from lib/props.blend, whose texture only the library uses: the
    bundle holds both, and the frame equals Blender's own render of linked.blend."""
    tar = _packed(blend, tmp_path, "linked.blend")
    with tarfile.open(tar) as t:
        assert sorted(t.getnames()) == ["distrenjob.xml", "scene/lib/props.blend", "scene/linked.blend",
                                        "scene/textures/checker.png", "scene/textures/stripes.png"]
    jf, scene = unpack(tar, tmp_path / "job")
    got, log = render(jf, jf.frame(4), scene, tmp_path / "w")
    _bpy("own", str(blend["folder"] / "linked.blend"), str(tmp_path / "own"), "4")
    assert same_pixels(got, tmp_path / "own" / "frame_0004.png"), log
    assert not same_pixels(got, blend["own"] / "frame_0004.png")  # the cone is there


def test_a_blend_with_its_files_packed_travels_alone(blend, tmp_path):
    tar = _packed(blend, tmp_path, "packed.blend")
    with tarfile.open(tar) as t:
        assert sorted(t.getnames()) == ["distrenjob.xml", "scene/packed.blend"]
    jf, scene = unpack(tar, tmp_path / "job")
    got, log = render(jf, jf.frame(2), scene, tmp_path / "w")
    assert same_pixels(got, blend["own"] / "frame_0002.png"), log  # anim.blend's frame: the same texture


def test_pack_refuses_what_it_cannot_find(blend, tmp_path):
    with pytest.raises(SceneError, match=r"secret\.png, which is outside its folder"):
        pack.pack(blend["folder"] / "hostfile.blend", tmp_path / "x.tar")
    moved = shutil.copytree(blend["folder"], tmp_path / "moved")
    (moved / "textures" / "checker.png").unlink()
    with pytest.raises(SceneError, match=r"uses //textures/checker\.png, which does not exist"):
        pack.pack(moved / "anim.blend", tmp_path / "y.tar")
    (moved / "broken.blend").write_bytes(b"BLENDER-v500 not really")
    with pytest.raises(SceneError, match=r"broken\.blend: Blender cannot read it"):
        pack.pack(moved / "broken.blend", tmp_path / "z.tar")


def test_a_frame_and_a_block_equal_blenders_own_render(blend, tmp_path):
    jf, scene = unpack(_packed(blend, tmp_path), tmp_path / "job")
    got, log = render(jf, jf.frame(5), scene, tmp_path / "w1")
    assert got.name == "frame_0005.png"
    assert same_pixels(got, blend["own"] / "frame_0005.png"), log
    # A border render of a block is exactly that block of the whole render.
    box = (8, 4, 24, 20)
    part, _ = render(jf, jf.frame(5), scene, tmp_path / "w2", box)
    from PIL import Image

    with Image.open(part) as a, Image.open(blend["own"] / "frame_0005.png") as b:
        assert a.size == b.size and a.crop(box).tobytes() == b.crop(box).tobytes()
        assert a.crop((0, 0, 8, 24)).tobytes() != b.crop((0, 0, 8, 24)).tobytes()  # the rest was not rendered


def _packed(blend, tmp_path: Path, name: str = "anim.blend", **kw) -> Path:
    tar = tmp_path / f"{name}.tar"
    pack.pack(blend["folder"] / name, tar, **kw)
    return tar


def test_scripts_in_a_blend_never_run(blend, tmp_path):
    """A text block registered to run at load and a Python driver: neither runs, the frame
    renders, and the log says Blender blocked them."""
    shutil.copy(blend["folder"] / "hostile.blend", tmp_path / "hostile.blend")
    shutil.copytree(blend["folder"] / "textures", tmp_path / "textures")
    jf = pack.pack(tmp_path / "hostile.blend", tmp_path / "h.tar")
    jf, scene = unpack(tmp_path / "h.tar", tmp_path / "job")
    work = tmp_path / "w"
    got, log = render(jf, jf.frame(1), scene, work)
    assert got.is_file()
    left = {p.name for p in work.iterdir()}
    assert not left & {"pwned-by-text.txt", "pwned-by-driver.txt", "socket-opened.txt", "socket-refused.txt"}, left
    assert "scripts in the .blend were not run" in log


def test_even_a_script_that_ran_would_reach_no_socket_and_no_host_file(blend, tmp_path):
    """The sandbox, in case Blender ever ran a .blend's script: hostile.blend opened with its
    scripts trusted, in the sandbox as a frame is rendered. Its text block runs, and its socket
    to this machine's loopback and its read of a host file both fail."""
    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(blend["folder"] / "hostile.blend", work / "hostile.blend")
    argv, binds = sandbox.python_command(blender.RUNNER, [])
    paths = sorted(inside for inside in binds if inside.startswith(f"{sandbox.PY_ROOT}/path"))
    argv[argv.index("-c") + 1] = (f"import sys; sys.path[:0] = {paths!r}; import bpy; "
                                  "bpy.ops.wm.open_mainfile(filepath='/work/hostile.blend', use_scripts=True)")
    out = sandbox.run(argv, work, sandbox.Limits(wall=120), tmp_path / "log", binds=binds)
    assert out.returncode == 0, out.tail[-2000:]
    left = {p.name for p in work.iterdir()}
    assert {"pwned-by-text.txt", "socket-refused.txt", "host-refused.txt"} <= left, left
    assert not left & {"socket-opened.txt", "host-read.txt"}, left
    with pytest.raises(BlockingIOError):
        blend["listener"].accept()


def test_a_host_file_named_in_a_blend_is_not_read(blend, tmp_path):
    """Bypassing pack (a hand-made bundle): the texture's absolute host path is not there in
    the sandbox, so Blender renders its missing-texture pink, not the host file's green."""
    from PIL import Image

    scene = tmp_path / "scene"
    scene.mkdir()
    shutil.copy(blend["folder"] / "hostfile.blend", scene / "hostfile.blend")
    jf = jobfile.JobFile(type="blender", width=32, height=24, frames=(jobfile.Frame(1),),
                         settings={"blend": "hostfile.blend", "output": "f_####", "format": "PNG", "samples": "2",
                                   "seed": "7", "denoise": "0", "compositing": "0"})
    got, log = render(jf, jf.frame(1), scene, tmp_path / "w")
    with Image.open(got) as im:
        rgb = im.convert("RGB")
        pixels = [rgb.getpixel((x, y)) for y in range(24) for x in range(32)]
    assert not any(g > r + 50 and g > b + 50 for r, g, b in pixels), "the host file's green reached the frame"
    assert sum(r > g + 50 and b > g + 50 for r, g, b in pixels) > 100, "no missing-texture pink either"


def test_failure_shows_blenders_message(blend, tmp_path):
    jf, scene = unpack(_packed(blend, tmp_path), tmp_path / "job")
    (scene / "anim.blend").write_bytes(b"garbage, not a blend file")
    with pytest.raises(RenderError, match=r'File format is not supported in file "/work/anim\.blend"'):
        render(jf, jf.frame(1), scene, tmp_path / "w")


def test_a_render_over_its_memory_limit_says_so(blend, tmp_path):
    jf, scene = unpack(_packed(blend, tmp_path), tmp_path / "job")
    shared = prepare_workdir(scene, tmp_path / "w")
    with pytest.raises(LimitExceeded, match=r"more than 600 MiB of memory.*--max-memory"):
        backends.get("blender").render(jf, jf.frame(1), tmp_path / "w", tmp_path / "log",
                                       sandbox.Limits(wall=120, memory=600 << 20), None, shared)


@pytest.mark.e2e
def test_twelve_frames_from_two_peers_equal_blenders_own(blend, start_server, tmp_path, monkeypatch):
    """Acceptance: an origin that renders nothing, two peers with Blender and one without; the
    12 frames equal Blender's own renders pixel for pixel, and the peer without Blender leased
    none of them."""
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests" / "plugins"))
    # The origin checks one frame of each peer by a border render of its own (each is a Blender start).
    a = start_server("a", "--slots", "0", "--verify-first", "1", "--verify-share", "0", "--allow", "b", "--allow", "c",
                     "--allow", "d")
    start_server("b", "--slots", "1", "--peer", a.http)
    start_server("c", "--slots", "1", "--peer", a.http)
    start_server("d", "--slots", "1", "--peer", a.http, "--plugin", "noblender")
    url = last_line(a.cli("submit", str(blend["folder"] / "anim.blend"), "--movie", "--wait", timeout=300))
    frames = status(a, url)["frames"]
    assert {f["server"] for f in frames if f["id"] <= 12} == {"distren://b/", "distren://c/"}, frames
    a.cli("download", url, "-o", str(tmp_path / "got"))
    for name in FRAMES:
        assert same_pixels(tmp_path / "got" / name, blend["own"] / Path(name).name), name
    assert (tmp_path / "got" / "render" / "frame_0001.mp4").stat().st_size > 0  # --movie, any server's ffmpeg


@pytest.mark.e2e
def test_tiled_still_equals_the_full_render(blend, shared_server, tmp_path):
    """2x2 border renders stitched: the full render of the .blend's current frame (1)."""
    url = last_line(shared_server.cli("submit", str(blend["folder"] / "anim.blend"), "--tiles", "2x2", "--wait",
                                      timeout=300))
    shared_server.cli("download", url, "-o", str(tmp_path / "got"))
    assert same_pixels(tmp_path / "got" / "render/frame_0001.png", blend["own"] / "frame_0001.png")
