"""Fair leases and need to know, against real servers on loopback: a killed renderer costs seconds
with default settings, and Mallory (tests/mallory.py), a hostile peer, cannot read scenes or frames
without a lease, hoard frames, fail a job, or replay what she signed; a lease answer she lost is
recovered by asking again with the same request id, and her late result is taken when nobody
else holds the frame."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
import time

import httpx
import pytest

from conftest import SCENES, last_line, povray_reference, wait_for
from mallory import Mallory
from test_e2e_dependencies import _rewrite_jobfile

pytestmark = pytest.mark.e2e

SLOW_POV = """#declare I = 0;
#while (I < 250000)
  #declare I = I + 1;
#end
camera { location -3*z look_at 0 }
light_source { <-5, 5, -5> rgb 1 }
sphere { 0, 1 pigment { rgb <clock, 0.5, 0.2> } }
"""


def api(server, path: str) -> dict | list:
    r = httpx.get(f"{server.http}/api{path}", headers={"Authorization": f"Bearer {server.token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def job_status(server, job: int) -> dict:
    return api(server, f"/jobs/{job}")


def submit(server, scene, *args: str) -> int:
    return int(last_line(server.cli("submit", str(scene), "--width", "32", "--height", "24", *args)).rsplit("/", 1)[1])


def knows_slots(origin, name: str, slots: int) -> bool:
    rows = json.loads(origin.cli("servers", "--json").stdout)
    return any(r["name"] == name and r["slots"] == slots for r in rows)


@pytest.fixture
def mallory(tmp_path):
    m = Mallory("mallory", tmp_path / "m.key")
    yield m
    m.close()


def test_a_killed_renderers_frame_is_rendered_elsewhere_within_45_s_by_default(start_server, tmp_path):
    a = start_server("a", "--slots", "0", "--allow", "b", "--allow", "c")  # default lease settings
    b = start_server("b", "--slots", "1", "--peer", a.http)
    scene = tmp_path / "slow"
    scene.mkdir()
    (scene / "slow.pov").write_text(SLOW_POV)
    (scene / "slow.ini").write_text("Input_File_Name=slow.pov\nInitial_Frame=1\nFinal_Frame=2\n")
    job = submit(a, scene)
    held = wait_for(lambda: next((f for f in job_status(a, job)["frames"]
                                  if f["state"] == "rendering" and f["server"] == "distren://b/"), None),
                    "b to hold a frame")
    b.kill()  # mid-render: the scene's parse alone takes seconds
    killed = time.time()
    start_server("c", "--slots", "2", "--peer", a.http)
    wait_for(lambda: job_status(a, job)["state"] == "done", "the job to finish without b", 45)
    done = time.time() - killed
    assert done <= 45
    events = api(a, f"/jobs/{job}/events")
    ran_out = [e for e in events if e["frame_id"] == held["id"] and "lease of distren://b/ ran out" in e["reason"]]
    assert ran_out, [e["reason"] for e in events]
    assert ran_out[0]["at"] - killed <= 30, "the dead renderer's frame was not back in the queue within 30 s"
    st = job_status(a, job)
    assert next(f for f in st["frames"] if f["id"] == held["id"])["server"] == "distren://c/"
    print(f"killed renderer: frame queued again {ran_out[0]['at'] - killed:.1f} s and job done {done:.1f} s "
          "after the kill")


def test_no_scene_and_no_frame_files_without_a_lease(start_server, mallory):
    a = start_server("a", "--slots", "1", "--allow", "b", "--allow", "c")
    job = submit(a, SCENES / "textured", "--frames", "1-2", "--wait")
    assert mallory.join(a).status_code == 200
    for r in (mallory.bundle(a, job), mallory.frame_files(a, job, 1)):
        assert r.status_code == 403, r.text
        assert "need to know" in r.json()["error"] and "holds no lease" in r.json()["error"], r.text
    # Claiming to render a frame that depends on it, on a server that does not vouch for that: refused.
    r = mallory.call(a, "GET", f"/fed/jobs/{job}/frames/1/files?for_server=mallory&for_job=1&for_frame=0")
    assert r.status_code == 403 and "does not say that mallory renders" in r.json()["error"], r.text
    # A frame's state tells a dependent whether it is done, not who rendered it.
    state = mallory.call(a, "GET", f"/fed/jobs/{job}/frames/1").json()
    assert state["state"] == "done" and "server" not in state and len(state["sha256"]) == 64


def test_a_lease_opens_the_scene_and_a_lost_answer_is_recovered_by_request_id(start_server, mallory):
    a = start_server("a", "--slots", "0", "--allow", "b", "--allow", "c")
    job = submit(a, SCENES / "textured", "--frames", "1-4")
    assert mallory.join(a).status_code == 200
    wait_for(lambda: knows_slots(a, "mallory", 2), "a to learn mallory's slots from her state")
    r = mallory.lease(a, job, request="answer-lost-1")
    assert r.status_code == 200, r.text
    first = Mallory.leased_frame(r)
    # The answer never reached her: the same request id, newly signed, gets the same frame.
    again = mallory.lease(a, job, request="answer-lost-1")
    assert again.status_code == 200 and Mallory.leased_frame(again) == first, again.text
    other = mallory.lease(a, job, request="another-request")
    assert other.status_code == 200 and Mallory.leased_frame(other) != first
    held = [f for f in job_status(a, job)["frames"] if f["server"] == "distren://mallory/"]
    assert len(held) == 2
    r = mallory.bundle(a, job)  # she holds a lease now: the scene is hers to render
    assert r.status_code == 200 and r.headers["X-Content-SHA256"] == hashlib.sha256(r.content).hexdigest()
    assert tarfile.open(fileobj=io.BytesIO(r.content)).getmember("distrenjob.xml")
    r = mallory.lease(a, job, request="not.an.id")
    assert r.status_code == 400 and "request=" in r.json()["error"], r.text


def test_hoarding_is_capped_at_her_slots_and_renewals_end_at_the_frame_timeout(start_server, mallory):
    a = start_server("a", "--slots", "0", "--lease-timeout", "3", "--frame-timeout", "8", "--allow", "b", "--allow", "c")
    job = submit(a, SCENES / "textured", "--frames", "1-6")
    assert mallory.join(a).status_code == 200
    wait_for(lambda: knows_slots(a, "mallory", 2), "a to learn mallory's slots from her state")
    t0 = time.monotonic()
    frames = [Mallory.leased_frame(mallory.lease(a, job)) for _ in range(2)]
    t1 = time.monotonic() - t0  # both leases were granted by then
    r = mallory.lease(a, job)
    assert r.status_code == 409 and "as many as its 2 slot(s)" in r.json()["error"], r.text
    # An honest renderer joins; Mallory renews her two leases as often as she likes.
    honest = threading.Thread(target=start_server, args=("b", "--slots", "1", "--peer", a.http))
    honest.start()
    refused: dict[int, str] = {}
    renewed: dict[int, float] = {}
    while len(refused) < 2 and time.monotonic() - t0 < 30:
        for f in frames:
            if f not in refused:
                sent = time.monotonic() - t0
                r = mallory.renew(a, job, f)
                if r.status_code == 200:
                    renewed[f] = sent
                else:
                    refused[f] = r.json()["error"]
        time.sleep(0.3)
    assert len(refused) == 2, "renewals never stopped"
    # Renewed until the frame timeout, never after; refused with that reason (or, once the
    # lease it could no longer renew ran out, because the frame went to someone else).
    assert all(when < t1 + 8 for when in renewed.values()), (t1, renewed)
    assert any("longer than the frame timeout (8 s)" in e for e in refused.values()), refused
    assert all("frame timeout" in e or "not leased" in e for e in refused.values()), refused
    assert time.monotonic() - t0 < 8 + 3 + 3  # refused at the frame timeout, not later
    honest.join()
    wait_for(lambda: job_status(a, job)["state"] == "done", "the honest renderer to finish the job", 60)
    assert {f["server"] for f in job_status(a, job)["frames"]} == {"distren://b/"}


def test_lease_and_fail_three_times_blocklists_her_and_the_job_still_finishes(start_server, mallory):
    a = start_server("a", "--slots", "0", "--allow", "b", "--allow", "c")
    job = submit(a, SCENES / "textured", "--frames", "1-4")
    assert mallory.join(a).status_code == 200
    failed = []
    for _ in range(3):
        r = mallory.lease(a, job)
        assert r.status_code == 200, r.text
        failed.append(Mallory.leased_frame(r))
        assert mallory.failed(a, job, failed[-1]).status_code == 200
    assert len(set(failed)) == 3, f"she was given a frame she had failed while others were ready: {failed}"
    r = mallory.lease(a, job)
    assert r.status_code == 409 and "block-listed" in r.json()["error"], r.text
    st = job_status(a, job)
    assert st["blocklist"][0]["server"] == "distren://mallory/"
    assert max(f["attempts"] for f in st["frames"]) == 1
    assert "block-listed: distren://mallory/" in a.cli("status", f"distren://a/job/{job}").stdout
    assert any("distren://mallory/ block-listed for this job" in e["reason"] for e in api(a, f"/jobs/{job}/events"))
    # Persistent: a restart does not forgive her.
    a.stop()
    a.start()
    assert mallory.lease(a, job).status_code == 409
    start_server("b", "--slots", "1", "--peer", a.http)
    a.cli("wait", f"distren://a/job/{job}", "--timeout", "60")


def test_replayed_requests_are_refused(start_server, mallory):
    a = start_server("a", "--slots", "0", "--allow", "b", "--allow", "c")
    job = submit(a, SCENES / "textured", "--frames", "1-4")
    assert mallory.join(a).status_code == 200
    frame = Mallory.leased_frame(mallory.lease(a, job))
    r = mallory.replay()  # the lease request again, byte for byte
    assert r.status_code == 401 and "replayed" in r.json()["error"], r.text
    assert mallory.renew(a, job, frame).status_code == 200
    r = mallory.replay()
    assert r.status_code == 401 and "replayed" in r.json()["error"], r.text
    assert mallory.bundle(a, job).status_code == 200
    r = mallory.replay()
    assert r.status_code == 401 and "replayed" in r.json()["error"], r.text
    assert [f["server"] for f in job_status(a, job)["frames"]].count("distren://mallory/") == 1


def test_a_late_result_is_taken_when_nobody_else_holds_the_frame(start_server, mallory, tmp_path):
    a = start_server("a", "--slots", "0", "--lease-timeout", "1", "--allow", "b", "--allow", "c")
    job = submit(a, SCENES / "textured", "--frames", "1-2")
    assert mallory.join(a).status_code == 200
    frame = Mallory.leased_frame(mallory.lease(a, job))
    wait_for(lambda: job_status(a, job)["frames"][frame - 1]["state"] == "queued", "her lease to run out")
    # She was paused, not dead: her renewal gets the frame back, since nobody had taken it.
    r = mallory.renew(a, job, frame)
    assert r.status_code == 200, r.text
    wait_for(lambda: job_status(a, job)["frames"][frame - 1]["state"] == "queued", "her lease to run out again")
    # Her result arrives late: a genuine render, and nobody holds the frame, so it is taken.
    ref = povray_reference(SCENES / "textured", "textured.ini", tmp_path / "ref", 32, 24, frame, frame)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(ref / f"textured{frame}.png", f"textured{frame}.png")
    r = mallory.upload(a, job, frame, buf.getvalue())
    assert r.status_code == 200 and r.json()["result"] == "accepted", r.text
    f = job_status(a, job)["frames"][frame - 1]
    assert (f["state"], f["server"], f["attempts"]) == ("done", "distren://mallory/", 0)
    reasons = [e["reason"] for e in api(a, f"/jobs/{job}/events") if e["frame_id"] == frame]
    assert "late result from distren://mallory/" in reasons, reasons


def test_a_dependencys_files_go_to_the_renderer_its_dependents_origin_vouches_for(start_server, mallory, tmp_path):
    """b's job is rendered by c; a's job depends on one of its frames and is rendered by c too,
    which holds no lease on b's job by then: b gives c the frame's files because a, asked, says
    that c renders the frame that depends on it. Mallory, claiming the same, is refused."""
    a = start_server("a", "--slots", "0", "--allow", "b", "--allow", "c")
    b = start_server("b", "--slots", "0", "--peer", a.http, "--allow", "c", "--log-level", "debug")  # its requests logged
    wait_for(lambda: "b" in a.cli("servers").stdout, "a and b to peer")
    start_server("c", "--slots", "1", "--peer", a.http, "--peer", b.http)
    upstream = last_line(b.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24",
                               "--frames", "1-2", "--wait"))
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
    url = last_line(a.cli("submit", str(tmp_path / "r2.tar"), "--wait"))
    assert job_status(a, int(url.rsplit("/", 1)[1]))["frames"][0]["server"] == "distren://c/"
    b_log = (b.data.parent / f"b-{b.port}.log").read_text()
    assert re.search(r"GET \S+/fed/jobs/1/frames/0/vouch\?server=c&job=1&frame=2 \"HTTP/1.1 200", b_log), \
        "b did not ask a whether c renders the dependent frame"
    assert mallory.join(b).status_code == 200
    r = mallory.call(b, "GET", "/fed/jobs/1/frames/2/files?for_server=a&for_job=1&for_frame=0")
    assert r.status_code == 403 and "a does not say that mallory renders" in r.json()["error"], r.text
