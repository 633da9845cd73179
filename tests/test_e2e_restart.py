"""SIGKILL a server mid-job and start it again on the same data: nothing is lost."""

from __future__ import annotations

import json
import tarfile
import time

import httpx
import pytest

from conftest import REPO, SCENES, last_line, assert_frames_match, povray_reference

pytestmark = pytest.mark.e2e
DEMO = REPO / "src" / "distren" / "demo_scene"



def test_sigkill_mid_job_then_restart(start_server, tmp_path):
    a = start_server("alpha")
    first = last_line(a.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24", "--frames", "1-2",
                            "--wait"))
    job = last_line(a.cli("submit", str(DEMO / "demo.ini"), "--width", "32", "--height", "24"))
    headers = {"Authorization": f"Bearer {a.token}"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = httpx.get(f"{a.http}/api/jobs/2", headers=headers).json()
        if st["counts"]["done"] >= 4 and st["counts"]["rendering"]:
            break
        time.sleep(0.05)
    assert 4 <= st["counts"]["done"] < 24, st["counts"]
    a.kill()

    # Every frame tarball on disk is whole: written atomically or not at all.
    for tar in (a.data / "jobs" / "2" / "frames").glob("*.tar"):
        with tarfile.open(tar) as t:
            assert [m.name for m in t.getmembers()], tar

    a.start()
    a.cli("wait", job, "--timeout", "120")
    got = tmp_path / "got"
    a.cli("download", job, "-o", str(got))
    ref = povray_reference(DEMO, "demo.ini", tmp_path / "ref", 32, 24)
    assert_frames_match(got, ref, [f"demo{i:02d}.png" for i in range(1, 25)])
    events = a.cli("status", job, "--json")
    assert json.loads(events.stdout)["state"] == "done"
    leftovers = [p for p in a.data.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
    assert leftovers == []

    # The earlier job survived the kill: listed and downloadable.
    assert first in a.cli("jobs").stdout
    a.cli("download", first, "-o", str(tmp_path / "first"))
    ref1 = povray_reference(SCENES / "textured", "textured.ini", tmp_path / "ref1", 32, 24, 1, 2)
    assert_frames_match(tmp_path / "first", ref1, ["textured1.png", "textured2.png"])


def test_job_ids_are_never_reused(start_server, tmp_path):
    a = start_server("alpha")
    submit = ("submit", str(SCENES / "textured"), "--width", "32", "--height", "24", "--frames", "1", "--wait")
    urls = [last_line(a.cli(*submit)) for _ in range(2)]
    assert urls == ["distren://alpha/job/1", "distren://alpha/job/2"]
    a.cli("delete", urls[1])
    assert urls[1] not in a.cli("jobs").stdout
    res = a.cli("status", urls[1], check=False)
    assert res.returncode == 1 and "no job 2" in res.stderr
    a.kill()
    a.start()
    assert last_line(a.cli(*submit)) == "distren://alpha/job/3"
    # A server's name is part of every URL it handed out: it cannot change.
    a.stop()
    from conftest import ServerProc, free_port

    wrong = ServerProc("beta", a.data, free_port())
    with pytest.raises(RuntimeError):
        wrong.start(timeout=10)
    assert "belongs to server 'alpha'" in (a.data.parent / f"beta-{wrong.port}.log").read_text()
