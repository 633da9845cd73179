"""The pieces of verified results, without servers: the exact comparison of a block (in process
and in the sandboxed checker), and POV-Ray's blocks, which rendered alone give the pixels of the whole."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import POV_ANIM, SCENES
from distren import backends, checkers, jobfile, pixels, sandbox
from distren.errors import Conflict
from distren.lifecycle import Lifecycle
from distren.states import DONE, QUEUED
from distren.store import Store

W, H = 70, 50


def picture(path: Path, seed: int = 0, mode: str = "RGB") -> Path:
    im = Image.new(mode, (W, H))
    im.putdata([((x * 7 + y * 3 + seed) % 256, (x * y) % 256, (y * 11) % 256)[: len(mode)] if len(mode) > 1
                else (x + y + seed) % 256 for y in range(H) for x in range(W)])
    im.save(path)
    return path


def with_pixel(src: Path, dest: Path, xy: tuple[int, int]) -> Path:
    with Image.open(src) as im:
        im = im.copy()
    old = im.getpixel(xy)
    im.putpixel(xy, tuple((c + 1) % 256 for c in old) if isinstance(old, tuple) else (old + 1) % 256)
    im.save(dest)
    return dest


@settings(max_examples=60, deadline=None)
@given(x=st.integers(0, W - 1), y=st.integers(0, H - 1), box=st.tuples(st.integers(0, W - 1), st.integers(0, H - 1),
                                                                      st.integers(1, W), st.integers(1, H)))
def test_one_pixel_differing_inside_the_block_is_found_and_outside_is_not(tmp_path_factory, x, y, box):
    tmp = tmp_path_factory.mktemp("px")
    x0, y0 = box[0], box[1]
    x1, y1 = min(W, x0 + box[2]), min(H, y0 + box[3])
    want = picture(tmp / "want.png")
    got = with_pixel(want, tmp / "got.png", (x, y))
    said = pixels.compare(got, want, (x0, y0, x1, y1))
    if x0 <= x < x1 and y0 <= y < y1:
        assert said == f"pixels differ in ({x},{y})-({x},{y})"
    else:
        assert said is None
    assert pixels.compare(want, want, (x0, y0, x1, y1)) is None


def test_another_mode_or_size_differs(tmp_path):
    want = picture(tmp_path / "want.png")
    grey = picture(tmp_path / "grey.png", mode="L")
    assert pixels.compare(grey, want, (0, 0, 32, 32)) == "its pixels are L, not RGB"
    Image.new("RGB", (W, H + 1)).save(tmp_path / "tall.png")
    assert pixels.compare(tmp_path / "tall.png", want, (0, 0, 32, 32)) == f"the image is {W}x{H + 1}, not {W}x{H}"


def test_the_sandboxed_comparison_says_same_differ_or_unknown(tmp_path):
    """In the checker of the job and the uploading peer (distren.checkers), as the origin does."""
    sandbox.check()
    want = picture(tmp_path / "want.png")
    black = tmp_path / "black.png"
    Image.new("RGB", (W, H)).save(black)
    pool = checkers.Checkers(sandbox.Limits())
    try:
        def compare(got: Path, want: Path, box: tuple[int, int, int, int]) -> tuple[str, str]:
            return pool.compare((1, "peer"), got, want, box)

        assert compare(picture(tmp_path / "again.png"), want, (32, 32, 64, 50)) == ("same", "")
        assert compare(with_pixel(want, tmp_path / "one.png", (40, 33)), want, (32, 32, 64, 50)) == \
            ("differ", "pixels differ in (40,33)-(40,33)")
        assert compare(black, want, (0, 0, 32, 32)) == ("differ", "pixels differ in (0,0)-(31,31)")
        garbage = tmp_path / "garbage.png"
        garbage.write_bytes(b"\x89PNG\r\n\x1a\nnot an image at all")
        assert compare(garbage, want, (0, 0, 32, 32)) == ("differ", "the image does not decode (UnidentifiedImageError)")
        assert compare(black, picture(tmp_path / "grey.png", mode="L"), (0, 0, 32, 32)) == \
            ("differ", "its pixels are RGB, not L")
        # The origin's own image unreadable: nothing is said of the upload.
        assert compare(want, garbage, (0, 0, 32, 32)) == ("unknown", "UnidentifiedImageError")
    finally:
        pool.close()


def job_of(ini: str, frames: list[jobfile.Frame], width: int = W, height: int = H) -> jobfile.JobFile:
    return jobfile.JobFile(type="povray", width=width, height=height, settings={"ini": ini}, frames=tuple(frames))


@pytest.mark.parametrize("scene, ini, frame_id", [(SCENES / "textured", "textured.ini", 3),
                                                  (POV_ANIM / "fractalzoom", "fractalzoom.ini", 30)])
def test_every_povray_block_alone_has_the_pixels_of_the_whole_render(tmp_path, scene, ini, frame_id):
    """The claim verification rests on, for a frame of an animation, and for a tile of a still
    whose region starts off the 32-px grid (its blocks start at its own corner)."""
    sandbox.check()
    pov = backends.get("povray")
    src = shutil.copytree(scene, tmp_path / "scene")
    pov_file = next(ln.split("=", 1)[1].strip() for ln in (src / ini).read_text().splitlines()
                    if ln.lower().startswith("input_file_name"))
    (src / "still.ini").write_text(f"Input_File_Name={pov_file}\nAntialias=On\nAntialias_Threshold=0.3\n")
    for name, frame, ini_ in (("frame", jobfile.Frame(id=frame_id), ini),
                              ("tile", jobfile.Frame(id=0, settings={"region": "10,5,70,50", "output": "tile.png"}),
                               "still.ini")):
        jf = job_of(ini_, [frame])
        whole = shutil.copytree(src, tmp_path / f"{name}-whole")
        produced = pov.render(jf, frame, whole, tmp_path / "log", sandbox.Limits())
        image = pov.expected_files(jf, frame, src)[0]
        assert image in produced
        blocks = pov.blocks(jf, frame, src)
        x0, y0 = (10, 5) if name == "tile" else (0, 0)
        assert blocks[0][:2] == (x0, y0) and len(blocks) == (2 if name == "tile" else 3) * 2
        assert all(b[2] - b[0] <= 32 and b[3] - b[1] <= 32 for b in blocks)
        for box in (blocks[0], blocks[-1]):  # a whole block and a clipped one at the far corner
            part = shutil.copytree(src, tmp_path / f"{name}-{box[0]}-{box[1]}")
            assert pov.render_region(jf, frame, part, tmp_path / "log", sandbox.Limits(), box) == image
            assert pixels.compare(part / image, whole / image, box) is None
            # And the rest of the image is not rendered: the block is all that was.
            assert pixels.compare(part / image, whole / image, (x0, y0, W, H)) is not None


def test_distrust_takes_back_what_the_renderer_rendered_or_holds_and_what_was_made_from_it(tmp_path):
    store = Store(tmp_path / "data")
    store.set_meta("name", "a")
    life = Lifecycle(store)

    def job(frames, deps=lambda j: []):
        staged = store.staging_dir() / f"staged-{len(frames)}"
        (staged / "scene").mkdir(parents=True)
        (staged / "seed.tar").write_bytes(b"seed")
        return life.create_job("a/~ann", "povray", frames, lambda j: b"<job/>", staged, None, deps)

    m, b, here = "distren://mallory/", "distren://b/", "distren://a/"
    j = job([1, 2, 3, 4], lambda j: [(4, f"distren://a/job/{j}/frame/1")])  # 4 is made from 1's files
    done_job = job([1])
    try:
        assert life.claim(m, done_job, lease_expires=1e12) == (done_job, 1)
        life.finish(done_job, 1, m, [])
        assert life.job_done(done_job)
        assert life.claim(m, j, lease_expires=1e12) == (j, 1)
        life.finish(j, 1, m, [{"name": "x.png", "size": 1, "sha256": "0" * 64}])
        assert life.claim(b, j, lease_expires=1e12) == (j, 2)
        life.finish(j, 2, b, [])
        assert life.claim(m, j, lease_expires=1e12) == (j, 3)  # held when she is caught
        assert life.claim(here, j) == (j, 4)
        life.finish(j, 4, here, [])
        why = "re-rendered: mallory returned wrong pixels in frame 3 of distren://a/job/1"
        assert life.distrust("mallory", m, "returned wrong pixels in frame 3", why) == [(j, 1), (j, 3), (j, 4)]
        got = {f.frame_id: (f.state, f.server, f.files) for f in store.frames(j)}
        assert got == {1: (QUEUED, None, []), 2: (DONE, b, []), 3: (QUEUED, None, []), 4: (QUEUED, None, [])}
        reasons = {f.frame_id: f.reason for f in store.frames(j)}
        assert reasons[1] == reasons[3] == why
        assert reasons[4] == "re-rendered: it was made from distren://a/job/1/frame/1, which came from mallory"
        assert store.get_job(done_job).state == DONE  # a delivered job is not reopened
        assert store.trust("mallory")["mallory"]["reason"] == "returned wrong pixels in frame 3"
        assert not life.job_done(j)  # a rebundle racing with the distrust does not finish the job
        # 4 waits for 1 again: 1 and 3 are ready, 4 is not.
        assert [life.claim(b, j, lease_expires=1e12) for _ in range(3)] == [(j, 1), (j, 3), None]
        with pytest.raises(Conflict):  # her late upload of the frame she held changes nothing
            life.finish(j, 3, m, [])
    finally:
        store.close()
