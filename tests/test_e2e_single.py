"""One real server, real POV-Ray, the real CLI: every frame pixel-identical to POV-Ray's own."""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from conftest import POV_ANIM, SCENES, assert_frames_match, povray_reference

pytestmark = pytest.mark.e2e


def submit_and_download(server, tmp_path: Path, *submit_args: str) -> tuple[str, Path, dict]:
    res = server.cli("submit", *submit_args, "--wait")
    url = res.stdout.strip().splitlines()[-1]
    assert url.startswith("distren://shared/job/") or url.startswith(f"distren://{server.name}/job/")
    out = tmp_path / "got"
    server.cli("download", url, "-o", str(out))
    st = json.loads(server.cli("status", url, "--json").stdout)
    return url, out, st


def test_textured_scene_with_nested_include_and_image_map(shared_server, tmp_path):
    scene = SCENES / "textured"
    url, got, st = submit_and_download(shared_server, tmp_path, str(scene / "textured.ini"),
                                       "--width", "64", "--height", "48")
    ref = povray_reference(scene, "textured.ini", tmp_path / "ref", 64, 48)
    names = [f"textured{i}.png" for i in range(1, 7)]
    assert_frames_match(got, ref, names)
    assert st["state"] == "done"
    assert [f["files"] for f in st["frames"]] == [[n] for n in names]
    assert all(f["server"] == "distren://shared/" and f["state"] == "done" for f in st["frames"])
    # The rebundled result holds the frames, not the seed scene.
    assert not (got / "textured.pov").exists() and not (got / "inc").exists()


def test_povray_example_splinefollow_ini_uses_switches(shared_server, tmp_path):
    """splinefollow.ini sets its animation as switches: +kf0.1666 +kff20 +kc declare=fp=0."""
    scene = POV_ANIM / "splinefollow"
    url, got, st = submit_and_download(shared_server, tmp_path, str(scene), "--width", "32", "--height", "24")
    ref = povray_reference(scene, "splinefollow.ini", tmp_path / "ref", 32, 24)
    assert len(st["frames"]) == 20
    assert_frames_match(got, ref, [f"splinefollow{i:02d}.png" for i in range(1, 21)])


def test_povray_example_fractalzoom_subset_keeps_clock_and_names(shared_server, tmp_path):
    scene = POV_ANIM / "fractalzoom"
    url, got, st = submit_and_download(shared_server, tmp_path, str(scene / "fractalzoom.ini"),
                                       "--width", "48", "--height", "36", "--frames", "28-33")
    assert [f["id"] for f in st["frames"]] == list(range(28, 34))
    # POV-Ray's own subset render of the same INI: the clock still spans frames 1-60.
    ref = povray_reference(scene, "fractalzoom.ini", tmp_path / "ref", 48, 36, 28, 33)
    assert_frames_match(got, ref, [f"fractalzoom{i:02d}.png" for i in range(28, 34)])
    assert not (got / "fractalzoom27.png").exists()


def test_status_json_and_table(shared_server, tmp_path):
    res = shared_server.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24", "--frames", "2-3")
    url = res.stdout.strip().splitlines()[-1]
    shared_server.cli("wait", url, "--timeout", "60")
    st = json.loads(shared_server.cli("status", url, "--json").stdout)
    assert st["url"] == url and st["state"] == "done"
    assert [(f["url"], f["state"], f["server"], f["files"]) for f in st["frames"]] == [
        (f"{url}/frame/2", "done", "distren://shared/", ["textured2.png"]),
        (f"{url}/frame/3", "done", "distren://shared/", ["textured3.png"]),
    ]
    table = shared_server.cli("status", url).stdout
    assert "textured2.png" in table and "done" in table
    listing = shared_server.cli("jobs").stdout
    assert url in listing
    log = shared_server.cli("log", f"{url}/frame/2").stdout
    assert "+SF2" in log and "POV-Ray finished" in log


def test_render_errors_carry_povrays_message(shared_server, tmp_path):
    broken = SCENES / "broken"
    cases = {
        "parse_error": "line 14: Parse Error",
        "missing_include": "does_not_exist.inc",
    }
    for case, expected in cases.items():
        res = shared_server.cli("submit", str(broken / case / "scene.ini"), "--width", "32", "--height", "24", "--wait",
                                check=False)
        assert res.returncode == 1, res.stderr
        url = res.stdout.strip().splitlines()[-1]
        st = json.loads(shared_server.cli("status", url, "--json").stdout)
        assert st["state"] == "failed"
        for f in st["frames"]:
            assert f["state"] == "failed" and expected in f["reason"], f["reason"]
            assert f["attempts"] == 3  # retried, then given up
        assert expected in res.stderr.replace("\n", " ")
        # The job cannot be downloaded, and says why.
        dl = shared_server.cli("download", url, "-o", str(tmp_path / case), check=False)
        assert dl.returncode == 1 and "is failed and has no finished frame to download" in dl.stderr


def test_ini_naming_a_missing_file_is_refused_at_pack(shared_server, tmp_path):
    res = shared_server.cli("submit", str(SCENES / "broken" / "missing_input" / "scene.ini"), check=False)
    assert res.returncode == 1
    assert "nothing_here.pov does not exist" in res.stderr
    res = shared_server.cli("pack", str(SCENES / "broken" / "missing_input"), "-o", str(tmp_path / "x.tar"), check=False)
    assert res.returncode == 1 and not (tmp_path / "x.tar").exists()


def _bundle(path: Path, members: dict[str, bytes]) -> Path:
    import io

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


GOOD_XML = (b'<distren><job type="povray"><resolution width="32" height="24"/><povray ini="s.ini"/>'
            b'<frames><frame name="frame/1"/></frames></job></distren>')


def test_bad_bundles_are_refused_and_server_keeps_serving(shared_server, tmp_path):
    before = sorted(p.name for p in shared_server.data.parent.iterdir())
    jobs_before = shared_server.cli("jobs").stdout
    cases = [
        ({"distrenjob.xml": b"<distren><job type='povray'>", "scene/s.ini": b""}, "not well-formed XML at line 1"),
        ({"distrenjob.xml": GOOD_XML, "scene/s.ini": b"Input_File_Name=s.pov\nFinal_Frame=1\n",
          "scene/s.pov": b"", "../evil.txt": b"gotcha"}, "'../evil.txt' climbs out of the bundle"),
        ({"scene/s.ini": b""}, "no distrenjob.xml"),
        ({"distrenjob.xml": GOOD_XML.replace(b"frame/1", b"frame/x"), "scene/s.ini": b""}, "invalid frame id"),
        ({"distrenjob.xml": GOOD_XML, "scene/other.ini": b""}, "the bundle has no scene/s.ini"),
        ({"distrenjob.xml": b'<!DOCTYPE x [<!ENTITY a "aaaa">]><distren/>', "scene/s.ini": b""}, "unsafe XML"),
    ]
    for n, (members, expected) in enumerate(cases):
        tar = _bundle(tmp_path / f"bad{n}.tar", members)
        res = shared_server.cli("submit", str(tar), check=False)
        assert res.returncode == 1, (expected, res.stdout)
        assert expected in res.stderr.replace("\n", " "), (expected, res.stderr)
    assert not (shared_server.data.parent / "evil.txt").exists()
    assert sorted(p.name for p in shared_server.data.parent.iterdir()) == before
    assert list((shared_server.data / "incoming").iterdir()) == []
    assert shared_server.cli("jobs").stdout == jobs_before
    # Not a tarball at all, straight over HTTP.
    r = httpx.post(f"{shared_server.http}/api/jobs", content=b"\x00garbage" * 100,
                   headers={"Authorization": f"Bearer {shared_server.token}"})
    assert r.status_code == 400 and "not a readable tarball" in r.json()["error"]
    assert httpx.get(f"{shared_server.http}/api/server").json()["name"] == "shared"


def test_tokens(shared_server, tmp_path):
    assert (shared_server.data / "admin.token").stat().st_mode & 0o777 == 0o600
    res = shared_server.cli("jobs", token="", check=False)
    assert res.returncode == 1 and "no token" in res.stderr and "DISTREN_TOKEN" in res.stderr  # the CLI's advice
    res = shared_server.cli("jobs", token="wrong", check=False)
    assert res.returncode == 1 and "not valid" in res.stderr
    token = shared_server.cli("user", "add", "carol").stdout.strip().splitlines()[-1]
    url = shared_server.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24", "--frames", "1",
                            token=token).stdout.strip().splitlines()[-1]
    st = json.loads(shared_server.cli("status", url, "--json", token=token).stdout)
    assert st["submitter"] == "distren://shared/user/carol"
    res = shared_server.cli("user", "add", "mallory", token=token, check=False)
    assert res.returncode == 1 and "not an admin" in res.stderr and "Ask the server's admin" in res.stderr
    res = shared_server.cli("user", "add", "carol", check=False)
    assert res.returncode == 1 and "already exists" in res.stderr


def _scene(folder: Path, pov: str) -> Path:
    folder.mkdir()
    (folder / "s.ini").write_text("Input_File_Name=s.pov\n")
    (folder / "s.pov").write_text(pov + "\ncamera { location -5 look_at 0 }\nsphere { 0, 1 pigment { rgb 1 } }\n")
    return folder


def test_scene_cannot_read_outside_the_sandbox(shared_server, tmp_path):
    """POV-Ray itself ignores its I/O restrictions on Unix; bubblewrap must stop these scenes."""
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    scene = _scene(tmp_path / "reader", f'#fopen In "{secret}" read\n#read (In, S)\n')
    res = shared_server.cli("submit", str(scene), "--width", "32", "--height", "24", "--wait", check=False)
    assert res.returncode == 1
    url = res.stdout.strip().splitlines()[-1]
    reason = json.loads(shared_server.cli("status", url, "--json").stdout)["frames"][0]["reason"]
    assert f"Cannot open user file {secret}" in reason, reason


def test_scene_cannot_write_outside_the_sandbox(shared_server, tmp_path):
    target = Path("/tmp") / f"distren-escape-{tmp_path.name}.txt"
    scene = _scene(tmp_path / "writer", f'#fopen Out "{target}" write\n#write (Out, "escaped")\n#fclose Out\n')
    res = shared_server.cli("submit", str(scene), "--width", "32", "--height", "24", "--wait", check=False)
    assert res.returncode == 0, res.stderr  # it wrote into the sandbox's own empty /tmp ...
    assert not target.exists(), "the scene wrote outside its sandbox"  # ... not the machine's


def test_cancel_stops_rendering(shared_server):
    res = shared_server.cli("submit", str(POV_ANIM / "fractalzoom"), "--width", "48", "--height", "36")
    url = res.stdout.strip().splitlines()[-1]
    shared_server.cli("cancel", url)
    deadline = time.monotonic() + 30
    while True:  # the renders already running are stopped, not finished
        st = json.loads(shared_server.cli("status", url, "--json").stdout)
        if st["counts"]["rendering"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert st["state"] == "cancelled"
    assert st["counts"]["rendering"] == 0
    assert st["counts"]["done"] < 60
    res = shared_server.cli("wait", url, check=False)
    assert res.returncode == 1


def test_a_bare_pov_file_is_a_still(shared_server, tmp_path):
    scene = SCENES / "chain"  # any .pov; rendered at clock 0 as a still, as `povray +Ichain.pov` does
    url, got, st = submit_and_download(shared_server, tmp_path, str(scene / "chain.pov"),
                                       "--width", "48", "--height", "36")
    assert [f["id"] for f in st["frames"]] == [0] and st["frames"][0]["files"] == ["chain.png"]
    work = tmp_path / "ref"
    import shutil
    import subprocess

    shutil.copytree(scene, work)
    subprocess.run(["povray", "+Ichain.pov", "+W48", "+H36", "-D"], cwd=work, check=True, capture_output=True)
    from conftest import same_pixels

    assert same_pixels(got / "chain.png", work / "chain.png")
    res = shared_server.cli("submit", str(scene / "chain.pov"), "--frames", "x", check=False)
    assert res.returncode == 1 and "--frames 'x': use A-B" in res.stderr


def test_large_scene_files_are_shared_read_only_not_copied(shared_server, tmp_path):
    """Files of 1 MiB and more are mounted read-only in each frame's sandbox instead of copied:
    the frames are still POV-Ray's own, and a scene cannot change them."""
    import os as _os

    from PIL import Image

    scene = tmp_path / "big"
    (scene / "maps").mkdir(parents=True)
    Image.frombytes("RGB", (700, 700), _os.urandom(700 * 700 * 3)).save(scene / "maps" / "noise.png")
    assert (scene / "maps" / "noise.png").stat().st_size > 1 << 20
    (scene / "big.ini").write_text("Input_File_Name=big.pov\nInitial_Frame=1\nFinal_Frame=2\n")
    (scene / "big.pov").write_text(
        'camera { location <0, 0, -3> look_at 0 }\n'
        'box { <-1,-1,0>, <1,1,0.1> pigment { image_map { png "maps/noise.png" } translate -0.5 scale 2 }\n'
        '  finish { ambient 1 diffuse 0 } rotate z*45*clock }\n')
    url, got, st = submit_and_download(shared_server, tmp_path, str(scene), "--width", "48", "--height", "36")
    ref = povray_reference(scene, "big.ini", tmp_path / "ref", 48, 36)
    assert_frames_match(got, ref, ["big1.png", "big2.png"])

    before = (scene / "maps" / "noise.png").read_bytes()
    (scene / "big.pov").write_text('#fopen F "maps/noise.png" write\n#write (F, "overwritten")\n#fclose F\n'
                                   + (scene / "big.pov").read_text())
    res = shared_server.cli("submit", str(scene), "--width", "48", "--height", "36", "--frames", "1", "--wait",
                            check=False)
    assert res.returncode == 1
    url = res.stdout.strip().splitlines()[-1]
    job_dir = shared_server.data / "jobs" / url.rsplit("/", 1)[1]
    assert (job_dir / "scene" / "maps" / "noise.png").read_bytes() == before
    assert "Cannot open user file maps/noise.png" in json.loads(
        shared_server.cli("status", url, "--json").stdout)["frames"][0]["reason"]


def test_oversized_bodies_are_refused_before_anyone_is_asked_who_they_are(shared_server):
    big = b"{" + b" " * (2 << 20) + b"}"
    r = httpx.post(f"{shared_server.http}/fed/hello", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(3):
            yield b" " * (1 << 20)

    r = httpx.post(f"{shared_server.http}/api/users", content=chunks(),
                   headers={"Content-Type": "application/json", "Authorization": f"Bearer {shared_server.token}"})
    assert r.status_code in (400, 413)  # FastAPI reports the aborted read as a body it could not parse
    assert httpx.get(f"{shared_server.http}/api/server").status_code == 200
