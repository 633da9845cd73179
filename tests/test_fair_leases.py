"""Fair leases in the lifecycle, against a real SQLite store: slots, request ids, the block-list,
frames a renderer failed, renewals bounded by the frame timeout, expired leases given back, late
results. (tests/test_e2e_leases.py runs the same rules against real servers and Mallory.)"""

from __future__ import annotations

import re
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distren import urls
from distren.errors import Conflict, DistrenError, Replayed
from distren.jobfile import Frame, JobFile, lease_xml
from distren.lifecycle import Lifecycle
from distren.renderer import Renderer
from distren.states import DONE, QUEUED, RENDERING
from distren.store import Store
from test_store import new_job

B, M = "distren://b/", "distren://m/"


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data")
    yield s
    s.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def life(store, clock):
    return Lifecycle(store, clock=clock)


def state(store, job, frame):
    row = store.frame(job, frame)
    return row.state, row.server, row.attempts


def test_a_renderer_holds_at_most_its_slots_of_leases_across_the_origins_jobs(store, life, clock):
    a, b = new_job(store, frames=[1, 2]), new_job(store, frames=[1, 2])
    assert life.lease(M, a, clock.now + 20, slots=2) == (a, 1)
    assert life.lease(M, b, clock.now + 20, slots=2) == (b, 1)
    with pytest.raises(Conflict, match="as many as its 2 slot"):
        life.lease(M, a, clock.now + 20, slots=2)
    assert life.lease(B, a, clock.now + 20, slots=1) == (a, 2)  # others are not held back by her
    life.finish(a, 1, M, [])
    assert life.lease(M, b, clock.now + 20, slots=2) == (b, 2)  # a delivery frees a slot


def test_a_request_id_asked_again_gets_the_same_frame_and_a_replayed_nonce_nothing(store, life, clock):
    job = new_job(store, frames=[1, 2, 3])
    assert life.lease(M, job, clock.now + 20, nonce=("n1", 9e9), request="r1") == (job, 1)
    clock.now += 5
    assert life.lease(M, job, clock.now + 20, nonce=("n2", 9e9), request="r1", slots=1) == (job, 1)
    assert store.frames(job)[0].state == RENDERING
    with pytest.raises(Replayed):
        life.lease(M, job, clock.now + 20, nonce=("n2", 9e9), request="r1")
    assert life.lease(B, job, clock.now + 20, request="r1") == (job, 2)  # ids are per renderer
    clock.now += 19  # the lease was extended by the second ask: still hers
    assert life.expire_leases(blocklist_threshold=3) == []


@given(threshold=st.integers(1, 4), failures=st.lists(st.sampled_from(["failed", "expired"]), max_size=6))
@settings(max_examples=40, deadline=None)
def test_the_blocklist_threshold_counts_failures_and_expiries_and_never_fails_the_job(tmp_path_factory, threshold,
                                                                                     failures):
    store = Store(tmp_path_factory.mktemp("bl") / "data")
    clock = Clock()
    life = Lifecycle(store, clock=clock)
    try:
        job = new_job(store, frames=list(range(1, 8)))
        taken: list[int] = []
        for n, how in enumerate(failures):
            if n >= threshold:
                with pytest.raises(Conflict, match="block-listed"):
                    life.lease(M, job, clock.now + 20, slots=8)
                break
            _, frame = life.lease(M, job, clock.now + 20, slots=8)
            taken.append(frame)
            if how == "failed":
                assert life.render_failed(job, frame, M, "no", 3, blocklist_threshold=threshold) == QUEUED
            else:
                clock.now += 21
                assert life.expire_leases(blocklist_threshold=threshold) == [(job, frame, M)]
        assert len(set(taken)) == len(taken), "she got a frame she had failed while others were ready"
        assert all(f.attempts <= 1 for f in store.frames(job))
        blocked = len(failures) >= threshold
        assert bool(store.blocklist(job)) == blocked
        assert sum("block-listed" in e.reason for e in store.events(job)) == int(blocked)
        assert store.get_job(job).state != "failed"
    finally:
        store.close()


def test_frames_a_renderer_failed_go_to_it_again_only_when_nothing_else_is_ready(store, life, clock):
    job = new_job(store, frames=[1, 2])
    life.lease(M, job, clock.now + 20)
    life.render_failed(job, 1, M, "no", 3, blocklist_threshold=3)
    assert life.lease(M, job, clock.now + 20) == (job, 2)
    life.finish(job, 2, M, [])
    assert life.lease(M, job, clock.now + 20) == (job, 1)  # the only frame left


def test_a_users_retry_clears_the_jobs_blocklist(store, life, clock):
    job = new_job(store, frames=[1])
    for _ in range(3):
        life.lease(B, job, clock.now + 20)
        life.render_failed(job, 1, B, "missing include", 3, blocklist_threshold=3)
    assert store.frame(job, 1).state == "failed" and store.blocklist(job)
    life.retry(job, 1, "ann")
    assert store.blocklist(job) == []
    assert life.lease(B, job, clock.now + 20) == (job, 1)
    assert "block-list cleared: retried by ann" in [e.reason for e in store.events(job)]


def test_renewals_stop_at_the_frame_timeout(store, life, clock):
    job = new_job(store, frames=[1])
    life.lease(M, job, clock.now + 20)
    start = clock.now
    while clock.now + 5 < start + 60:
        clock.now += 5
        assert life.renew(job, 1, M, clock.now + 20, frame_timeout=60) == min(clock.now + 20, start + 60)
    clock.now = start + 60
    with pytest.raises(Conflict, match="longer than the frame timeout"):
        life.renew(job, 1, M, clock.now + 20, frame_timeout=60)


def test_an_expired_lease_is_given_back_on_renewal_only_if_nobody_took_the_frame(store, life, clock):
    job = new_job(store, frames=[1])
    life.lease(M, job, clock.now + 20)
    clock.now += 21
    life.expire_leases(blocklist_threshold=3)
    assert life.renew(job, 1, M, clock.now + 20, slots=1) == clock.now + 20
    assert state(store, job, 1) == (RENDERING, M, 0)
    clock.now += 21
    life.expire_leases(blocklist_threshold=3)
    life.lease(B, job, clock.now + 20)
    with pytest.raises(Conflict, match="not leased to"):
        life.renew(job, 1, M, clock.now + 20, slots=1)
    assert state(store, job, 1) == (RENDERING, B, 0)


def test_a_late_result_is_taken_while_the_frame_is_queued_and_forgiven(store, life, clock):
    job = new_job(store, frames=[1, 2])
    life.lease(M, job, clock.now + 20)
    clock.now += 21
    life.expire_leases(blocklist_threshold=3)
    assert not life.finish(job, 1, M, [])
    assert state(store, job, 1) == (DONE, M, 0)
    assert store.failed_frames(store._db, job, M) == []  # the expiry no longer counts
    with pytest.raises(Conflict):  # a result from a server that never held the frame
        life.finish(job, 2, B, [])


class _Origin:
    """A transport standing in for an origin whose lease answer names a bundle hash of its own
    choosing (the header is not signed), and that records what it was asked."""

    def __init__(self, header_sha: str):
        self.header_sha = header_sha
        self.paths: list[str] = []

    def call(self, method, address, path, *a, **kw):
        self.paths.append(path)
        jf = JobFile(type="povray", width=32, height=24, frames=(Frame(1), Frame(2)), name="distren://a/job/7",
                     submitter="distren://a/user/ann")
        return httpx.Response(200, content=lease_xml(jf, Frame(1, server="distren://b/")),
                              headers={"X-Distren-Bundle-SHA256": self.header_sha, "X-Distren-Lease-Expires": "120",
                                       "X-Distren-Now": "100"})


def test_a_renderer_checks_the_scene_against_the_signed_announcement_not_the_lease_header(store, life, tmp_path):
    signed = "a" * 64
    store.record_announcement("distren://a/job/7", "a", {"job": "distren://a/job/7", "bundle_sha256": signed}, True)
    origin = _Origin(header_sha="b" * 64)
    r = Renderer("b", store, life, origin, tmp_path / "cache", lambda n: None, lambda a: "a", lambda: None, slots=3)
    work = r._lease("http://127.0.0.1:9", urls.parse_job("distren://a/job/7"))
    assert work.bundle_sha256 == signed
    assert 19 < work.expires - time.time() <= 20  # the lease's length by the origin's clock
    # Its slots and a fresh request id go with every request (signed with the path).
    assert re.fullmatch(r"/fed/jobs/7/lease\?can=[a-z,]+&slots=3&request=[0-9a-f]{32}", origin.paths[0])
    with pytest.raises(DistrenError, match="no signed announcement"):
        r._lease("http://127.0.0.1:9", urls.parse_job("distren://a/job/8"))
