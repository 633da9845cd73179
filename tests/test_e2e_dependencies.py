"""Frame dependencies, tiled stills and movies: two renderers peered with an origin that renders
nothing, real POV-Ray, pixel-exact against POV-Ray's own renders."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import imageio_ffmpeg
import pytest

from conftest import SCENES, assert_frames_match, last_line, povray_reference, same_pixels, status

pytestmark = pytest.mark.e2e




@pytest.fixture
def trio(start_server):
    # One admin's farm: each server accepts the others by name (c fetches b's frames directly).
    a = start_server("a", "--slots", "0", "--allow", "b", "--allow", "c")
    b = start_server("b", "--slots", "1", "--peer", a.http, "--allow", "c")
    c = start_server("c", "--slots", "1", "--peer", a.http, "--allow", "b")
    return a, b, c


def test_chained_animation_reads_the_previous_frame(trio, tmp_path):
    a, b, c = trio
    url = last_line(a.cli("submit", str(SCENES / "chain"), "--width", "32", "--height", "24", "--chain", "--wait"))
    st = status(a, url)
    assert [f["deps"] for f in st["frames"]] == [[]] + [[f"{url}/frame/{i}"] for i in range(1, 6)]
    got = tmp_path / "got"
    a.cli("download", url, "-o", str(got))
    ref = povray_reference(SCENES / "chain", "chain.ini", tmp_path / "ref", 32, 24)  # sequential
    assert_frames_match(got, ref, [f"chain{i}.png" for i in range(1, 7)])


def test_tiled_antialiased_still_stitches_to_the_full_render(trio, tmp_path):
    a, b, c = trio
    scene = tmp_path / "still"
    scene.mkdir()
    (scene / "still.ini").write_text("Input_File_Name=still.pov\nAntialias=On\nAntialias_Threshold=0.1\n")
    (scene / "still.pov").write_text(
        '#include "colors.inc"\ncamera { location <0,2,-5> look_at 0 }\nlight_source { <5,5,-5> White }\n'
        'sphere { 0, 1.5 pigment { checker Red Blue scale 0.3 } finish { reflection 0.3 } }\n'
        'plane { y, -1 pigment { checker White Black } }\n')
    url = last_line(a.cli("submit", str(scene), "--width", "200", "--height", "150", "--tiles", "3x2", "--wait"))
    st = status(a, url)
    tiles = [f for f in st["frames"] if f["type"] == "povray"]
    assert len(tiles) == 6 and {f["server"] for f in tiles} == {"distren://b/", "distren://c/"}
    stitch = [f for f in st["frames"] if f["type"] == "stitch"]
    assert len(stitch) == 1 and stitch[0]["files"] == ["still.png"]
    got = tmp_path / "got"
    a.cli("download", url, "-o", str(got))
    ref = povray_reference(scene, "still.ini", tmp_path / "ref", 200, 150)
    assert same_pixels(got / "still.png", ref / "still.png")
    # Arbitrary tile edges would differ with antialiasing; a split that cannot fall on blocks is refused.
    res = a.cli("submit", str(scene), "--width", "64", "--height", "48", "--tiles", "3x1", check=False)
    assert res.returncode == 1 and "render block" in res.stderr


def test_movie_frame_encodes_the_animation(trio, tmp_path):
    a, b, c = trio
    url = last_line(a.cli("submit", str(SCENES / "textured"), "--width", "64", "--height", "48", "--movie", "--wait"))
    st = status(a, url)
    movie = st["frames"][-1]
    assert movie["type"] == "movie" and movie["files"] == ["textured.mp4"]
    assert len(movie["deps"]) == 6
    a.cli("download", url, "-o", str(tmp_path / "got"))
    n, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "got" / "textured.mp4"))
    assert n == 6


def _rewrite_jobfile(tar_in: Path, tar_out: Path, edit) -> None:
    with tarfile.open(tar_in) as src, tarfile.open(tar_out, "w") as dst:
        for m in src:
            data = src.extractfile(m).read()
            if m.name == "distrenjob.xml":
                data = edit(data.decode()).encode()
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))


def test_cycles_and_unknown_dependencies_are_refused(trio, tmp_path):
    a, b, c = trio
    a.cli("pack", str(SCENES / "textured"), "-o", str(tmp_path / "t.tar"), "--width", "32", "--height", "24")
    cases = {
        "cycle": (lambda x: x.replace('<frame name="frame/1" />', '<frame name="frame/1"><dep name="frame/3"/></frame>')
                  .replace('<frame name="frame/3" />', '<frame name="frame/3"><dep name="frame/1"/></frame>'),
                  "dependency cycle frame/1 -> frame/3 -> frame/1"),
        "self": (lambda x: x.replace('<frame name="frame/2" />', '<frame name="frame/2"><dep name="frame/2"/></frame>'),
                 "frame/2 depends on itself"),
        "unknown": (lambda x: x.replace('<frame name="frame/2" />', '<frame name="frame/2"><dep name="frame/9"/></frame>'),
                    "frame/2 depends on frame/9, which this job does not have"),
        "other job": (lambda x: x.replace('<frame name="frame/2" />',
                                          '<frame name="frame/2"><dep name="distren://a/job/77/frame/1"/></frame>'),
                      "distren://a/job/77/frame/1, which does not exist on this server"),
        "other server's job": (lambda x: x.replace('<frame name="frame/2" />',
                                                   '<frame name="frame/2"><dep name="distren://b/job/5/frame/1"/></frame>'),
                               "distren://b/job/5/frame/1 does not exist on b"),
        "unknown server": (lambda x: x.replace('<frame name="frame/2" />',
                                               '<frame name="frame/2"><dep name="distren://nowhere/job/1/frame/1"/></frame>'),
                           "server 'nowhere' is not known here"),
    }
    for name, (edit, expected) in cases.items():
        _rewrite_jobfile(tmp_path / "t.tar", tmp_path / f"{name}.tar", edit)
        res = a.cli("submit", str(tmp_path / f"{name}.tar"), check=False)
        assert res.returncode == 1, name
        assert expected in res.stderr.replace("\n", " "), (name, res.stderr)
    assert "job" not in a.cli("jobs").stdout.split("submitter")[-1]


def test_failed_dependency_blocks_dependents_until_retried(start_server, tmp_path):
    """Frame 2 fails (its scene reads a file that is missing); frames 3-6 chain on it and are
    blocked with the reason. Once the file exists (the frame is fixed) and frame 2 is retried,
    the job completes."""
    a = start_server("a", "--slots", "0", "--allow", "b")
    b = start_server("b", "--slots", "1", "--peer", a.http)
    scene = tmp_path / "flaky"
    scene.mkdir()
    (scene / "flaky.ini").write_text("Input_File_Name=flaky.pov\nInitial_Frame=1\nFinal_Frame=4\n")
    (scene / "flaky.pov").write_text(
        '#if (frame_number = 2)\n#fopen F "needed.txt" read\n#fclose F\n#end\n'
        'camera { location -3*z look_at 0 }\nsphere { 0, 1 pigment { rgb <clock, 1, 0> } }\n')
    url = last_line(a.cli("submit", str(scene), "--width", "32", "--height", "24", "--chain", "--wait", check=False))
    st = status(a, url)
    assert st["state"] == "failed"
    states_ = {f["id"]: (f["state"], f["reason"]) for f in st["frames"]}
    assert states_[1][0] == "done" and states_[2][0] == "failed" and "needed.txt" in states_[2][1]
    assert states_[3] == ("blocked", f"blocked: {url}/frame/2 failed: {states_[2][1]}")
    assert states_[4][0] == "blocked" and f"{url}/frame/3 is blocked" in states_[4][1]
    res = a.cli("retry", f"{url}/frame/3", check=False)
    assert res.returncode == 1 and "retry that instead" in res.stderr
    # Fix the cause where the frame renders: b's copy of the scene gets the file.
    scenes = list((b.data / "cache" / "scenes").glob("*"))
    assert len(scenes) == 1
    (scenes[0] / "needed.txt").write_text("here\n")
    a.cli("retry", f"{url}/frame/2")
    a.cli("wait", url, "--timeout", "60")
    assert all(f["state"] == "done" for f in status(a, url)["frames"])


def test_dependency_on_another_servers_job(trio, tmp_path):
    """A job on a waits for a frame of b's job, and its renderer gets that frame's files from b."""
    a, b, c = trio
    upstream = last_line(b.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24",
                               "--frames", "1-2"))
    scene = tmp_path / "reader"
    scene.mkdir()
    (scene / "reader.ini").write_text("Input_File_Name=reader.pov\n")
    (scene / "reader.pov").write_text(
        'camera { location -2*z look_at 0 }\n'
        'box { <-1,-1,0>, <1,1,0.1> pigment { image_map { png "textured2.png" } translate -0.5 scale 2 }'
        ' finish { ambient 1 diffuse 0 } }\n')
    a.cli("pack", str(scene), "-o", str(tmp_path / "r.tar"), "--width", "32", "--height", "24")
    _rewrite_jobfile(tmp_path / "r.tar", tmp_path / "r2.tar", lambda x: x.replace(
        '<frame name="frame/0" />', f'<frame name="frame/0"><dep name="{upstream}/frame/2"/></frame>'))
    url = last_line(a.cli("submit", str(tmp_path / "r2.tar")))
    a.cli("wait", url, "--timeout", "90")
    b.cli("wait", upstream, "--timeout", "30")
    st = status(a, url)
    assert st["frames"][0]["deps"] == [f"{upstream}/frame/2"]
    # POV-Ray's own render of the reader, given the upstream frame as b delivered it.
    b.cli("download", upstream, "-o", str(tmp_path / "up"))
    a.cli("download", url, "-o", str(tmp_path / "got"))
    ref_scene = tmp_path / "ref-scene"
    import shutil
    shutil.copytree(scene, ref_scene)
    shutil.copy(tmp_path / "up" / "textured2.png", ref_scene)
    ref = povray_reference(ref_scene, "reader.ini", tmp_path / "ref", 32, 24)
    assert same_pixels(tmp_path / "got" / "reader.png", ref / "reader.png")
