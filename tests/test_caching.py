"""Answers a peer asks for again and again carry an ETag, and a request naming it gets 304 and no
body while nothing changed: ``GET /fed/state`` (the sync loop's pull) and a frame's state (polled
by dependents). Real servers on loopback."""

from __future__ import annotations

import httpx
import pytest

from conftest import SCENES, wait_for
from mallory import Mallory
from test_e2e_leases import submit

pytestmark = pytest.mark.e2e


@pytest.fixture
def mallory(tmp_path):
    m = Mallory("mallory", tmp_path / "m.key")
    yield m
    m.close()


def test_state_and_frame_answers_are_revalidated_by_etag(start_server, mallory):
    a = start_server("a", "--slots", "0", "--allow", "b")
    assert mallory.join(a).status_code == 200
    job = submit(a, SCENES / "textured", "--frames", "1-1")
    first = mallory.state(a)
    etag = first.headers["ETag"]
    assert first.status_code == 200 and first.headers["Cache-Control"] == "private, no-cache"
    since = first.json()["cursor"]
    again = mallory.call(a, "GET", "/fed/state?since=0", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
    # Another question, or the same after a change, is answered in full.
    assert mallory.call(a, "GET", f"/fed/state?since={since}", headers={"If-None-Match": etag}).status_code == 200
    second = submit(a, SCENES / "textured", "--frames", "1-1")
    changed = mallory.call(a, "GET", "/fed/state?since=0", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert [r["job"] for r in changed.json()["announcements"]] == [f"distren://a/job/{n}" for n in (job, second)]
    # The request must still be signed: an ETag opens nothing.
    assert httpx.get(f"{a.http}/fed/state", headers={"If-None-Match": etag}, timeout=10).status_code == 401

    frame = mallory.call(a, "GET", f"/fed/jobs/{job}/frames/1")
    assert frame.status_code == 200 and frame.json()["state"] == "queued"
    same = mallory.call(a, "GET", f"/fed/jobs/{job}/frames/1", headers={"If-None-Match": frame.headers["ETag"]})
    assert same.status_code == 304 and same.content == b""
    leased = mallory.lease(a, job)
    assert leased.status_code == 200, leased.text
    moved = mallory.call(a, "GET", f"/fed/jobs/{job}/frames/1", headers={"If-None-Match": frame.headers["ETag"]})
    assert moved.status_code == 200 and moved.json()["state"] == "rendering"


def test_the_sync_loop_pulls_with_if_none_match(start_server):
    a = start_server("a", "--slots", "0", "--peering", "open")
    b = start_server("b", "--slots", "0", "--peer", a.http, "--log-level", "debug")  # logs each request
    log = b.data.parent / f"b-{b.port}.log"
    # b's pulls of a: in full until nothing changes, then 304 every 3 s.
    wait_for(lambda: f'GET {a.http}/fed/state?since=' in log.read_text() and "304 Not Modified" in log.read_text(),
             "b to pull a's state and be answered 304", 30)
