"""Steering jobs under way from the real CLI against a real server: priority, pause and resume,
requeueing a cancelled job, and downloading what a cancelled job finished."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from conftest import ServerProc, last_line, status, wait_for


def _scene(folder: Path, frames: int = 12) -> Path:
    folder.mkdir()
    (folder / "ball.ini").write_text(f"Input_File_Name=ball.pov\nInitial_Frame=1\nFinal_Frame={frames}\n"
                                     "Initial_Clock=0\nFinal_Clock=1\n")
    (folder / "ball.pov").write_text("camera { location -3*z look_at 0 }\nlight_source { <2, 4, -3> rgb 1 }\n"
                                     "sphere { 0, 1 pigment { rgb <clock, 1, 0> } }\n")
    return folder


def _api(server: ServerProc, url: str, what: str = "") -> dict | list:
    """Polled often: straight over HTTP, not through a CLI process each time."""
    r = httpx.get(f"{server.http}/api/jobs/{url.rsplit('/', 1)[1]}{what}",
                  headers={"Authorization": f"Bearer {server.token}"}, timeout=10)
    r.raise_for_status()
    return r.json()


def _events(server: ServerProc, url: str) -> list[dict]:
    return _api(server, url, "/events")


def test_a_paused_job_starts_nothing_and_a_higher_priority_goes_first(start_server, tmp_path):
    a = start_server("a", "--slots", "1")
    scene = _scene(tmp_path / "ball")
    first = last_line(a.cli("submit", str(scene), "--width", "32", "--height", "24"))
    res = a.cli("pause", first)
    assert f"{first} is paused" in res.stderr
    assert _api(a, first)["state"] == "paused"
    urgent = last_line(a.cli("submit", str(scene), "--width", "32", "--height", "24", "--frames", "1-3",
                             "--priority", "5"))
    assert _api(a, urgent)["priority"] == 5
    # While paused: the frame that was rendering may finish; no other starts.
    wait_for(lambda: _api(a, first)["counts"]["rendering"] == 0, "the paused job's running frame to end")
    held = _api(a, first)["counts"]
    assert held["queued"] >= 10, held
    res = a.cli("resume", urgent, check=False)
    assert res.returncode == 1 and "not paused; nothing to resume" in res.stderr.replace("\n", " "), res.stderr
    a.cli("resume", first)
    a.cli("wait", urgent, "--timeout", "60")
    wait_for(lambda: _api(a, first)["counts"]["done"] > held["done"], "the resumed job to go on")
    a.cli("cancel", first)

    ev = _events(a, first)
    paused = next(e["id"] for e in ev if e["frame_id"] is None and e["new"] == "paused")
    resumed = next(e for e in ev if e["frame_id"] is None and e["old"] == "paused")
    assert resumed["reason"] == "resumed by admin" and resumed["new"] in ("queued", "rendering")
    starts = [e["id"] for e in ev if e["frame_id"] is not None and e["new"] == "rendering"]
    assert not [i for i in starts if paused < i < resumed["id"]], "a frame started while the job was paused"
    # The later job of higher priority had every frame started before the older one got another.
    urgent_starts = [e["id"] for e in _events(a, urgent) if e["frame_id"] is not None and e["new"] == "rendering"]
    assert len(urgent_starts) == 3
    assert max(urgent_starts) < min(i for i in starts if i > resumed["id"])

    # Priority after submit: the change is an event with its reason; out of range is refused.
    assert f"{first} is cancelled at priority 7" in a.cli("priority", first, "7").stderr
    assert [e["reason"] for e in _events(a, first) if e["old"] == e["new"]] == ["priority 0 -> 7, set by admin"]
    res = a.cli("priority", urgent, "1", check=False)
    assert res.returncode == 1 and "is done; its priority no longer matters" in res.stderr
    res = a.cli("priority", first, "5000", check=False)
    assert res.returncode == 1 and "priority" in res.stderr and "-1000 to 1000" in res.stderr, res.stderr


def test_a_cancelled_job_gives_its_finished_frames_and_can_be_requeued(start_server, tmp_path):
    a = start_server("a", "--slots", "1")
    url = last_line(a.cli("submit", str(_scene(tmp_path / "ball", 8)), "--width", "32", "--height", "24"))
    wait_for(lambda: _api(a, url)["counts"]["done"] >= 1, "a first frame")
    a.cli("cancel", url)
    wait_for(lambda: _api(a, url)["counts"]["rendering"] == 0, "the running render to stop")
    st = status(a, url)
    done = st["counts"]["done"]
    assert st["state"] == "cancelled" and 1 <= done < 8
    res = a.cli("download", url, "-o", str(tmp_path / "some"))
    assert f"{url} is cancelled: {done} of 8 frame(s) finished" in res.stderr.replace("\n", " "), res.stderr
    got = sorted(p.name for p in (tmp_path / "some").iterdir())
    assert got == sorted(["distrenjob.xml"] + [n for f in st["frames"] if f["state"] == "done" for n in f["files"]])
    for p in (tmp_path / "some").iterdir():  # as old as its render, not 1970
        assert time.time() - 600 < p.stat().st_mtime <= time.time() + 1, p

    res = a.cli("retry", url)
    assert "frame(s) queued" in res.stderr and "cancelled" not in _api(a, url)["state"]
    a.cli("wait", url, "--timeout", "90")
    a.cli("download", url, "-o", str(tmp_path / "all"))
    assert len(list((tmp_path / "all").glob("*.png"))) == 8
    requeued = [e for e in _events(a, url) if e["frame_id"] is None and e["old"] == "cancelled"]
    assert [e["reason"] for e in requeued] == ["requeued by admin"]
    res = a.cli("retry", url, check=False)
    assert res.returncode == 1 and "is done; there is nothing to requeue" in res.stderr


def test_retry_names_frames_and_refuses_what_it_cannot_requeue(start_server, tmp_path):
    a = start_server("a", "--slots", "0")  # nothing renders: the frames stay as they are
    url = last_line(a.cli("submit", str(_scene(tmp_path / "ball", 3)), "--width", "32", "--height", "24"))
    res = a.cli("retry", url, "--frames", "2-3", check=False)
    assert res.returncode == 1 and "has no failed frame to requeue among frames 2, 3" in res.stderr, res.stderr
    res = a.cli("retry", url, "--frames", "x", check=False)
    assert res.returncode == 1 and "--frames 'x': list frame ids" in res.stderr
    res = a.cli("retry", f"{url}/frame/1", f"{url.rsplit('/', 1)[0]}/999/frame/1", check=False)
    assert res.returncode == 1 and "one job at a time" in res.stderr
    res = a.cli("download", url, "-o", str(tmp_path / "none"), check=False)
    assert res.returncode == 1 and "is queued" in res.stderr
    a.cli("cancel", url)
    res = a.cli("download", url, "-o", str(tmp_path / "none"), check=False)
    assert res.returncode == 1 and "no finished frame to download" in res.stderr


def test_a_peer_leases_the_origins_jobs_by_priority(start_server, tmp_path):
    a = start_server("a", "--slots", "0", "--allow", "b")
    scene = _scene(tmp_path / "ball", 4)
    older = last_line(a.cli("submit", str(scene), "--width", "32", "--height", "24"))
    urgent = last_line(a.cli("submit", str(scene), "--width", "32", "--height", "24", "--priority", "5"))
    b = start_server("b", "--slots", "1", "--peer", a.http)  # hears of both jobs at once
    a.cli("wait", older, "--timeout", "90")
    a.cli("wait", urgent, "--timeout", "90")

    def starts(url):
        return [e["id"] for e in _events(a, url) if e["frame_id"] is not None and e["new"] == "rendering"
                and e["reason"] == "rendering on distren://b/"]

    assert len(starts(urgent)) == 4 and len(starts(older)) == 4
    # b may take one frame of the older job before it has heard of the other (it learns them
    # one by one as it syncs); from then on the higher priority goes first.
    early = [i for i in starts(older) if i < max(starts(urgent))]
    assert len(early) <= 1 and all(i < min(starts(urgent)) for i in early), (starts(older), starts(urgent))
    assert b.cli("status", urgent, "--server", a.http, "--token", a.token).returncode == 0
