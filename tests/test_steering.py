"""Steering in the lifecycle, in process: priority orders the queue, a paused job is never
claimed, a requeue brings back a cancelled job and its dependents, and a re-signed
announcement carries a new priority."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distren.bus import Bus
from distren.errors import Conflict, DistrenError
from distren.lifecycle import Lifecycle
from distren.states import CANCELLED, DONE, FAILED, PAUSED, QUEUED, RENDERING
from distren.store import Store
from test_store import assert_consistent, new_job


@pytest.fixture
def life(tmp_path):
    store = Store(tmp_path / "data")
    yield Lifecycle(store, Bus())
    store.close()


def test_the_highest_priority_is_claimed_first_the_oldest_among_equals(life):
    old, mid, new = (new_job(life.store, frames=[1, 2], life=life) for _ in range(3))
    life.set_priority(new, 5, "ann")
    life.set_priority(mid, 5, "ann")
    order = [life.claim("me") for _ in range(6)]
    assert order == [(mid, 1), (mid, 2), (new, 1), (new, 2), (old, 1), (old, 2)]
    assert life.claim("me") is None
    assert_consistent(life.store)


@settings(max_examples=30, deadline=None)
@given(prios=st.lists(st.integers(-1000, 1000), min_size=1, max_size=5))
def test_claims_follow_priority_then_age(tmp_path_factory, prios):
    store = Store(tmp_path_factory.mktemp("p") / "data")
    life = Lifecycle(store)
    jobs = [new_job(store, frames=[1], life=life) for _ in prios]
    for j, p in zip(jobs, prios):
        life.set_priority(j, p, "ann")
    got = [life.claim("me")[0] for _ in jobs]
    assert got == sorted(jobs, key=lambda j: (-prios[jobs.index(j)], j))
    store.close()


def test_priority_is_an_event_that_keeps_the_state_and_is_checked(life):
    seen = []
    life.bus.subscribe(seen.append)
    job = new_job(life.store, life=life)
    life.set_priority(job, -3, "ann")
    life.set_priority(job, -3, "ann")  # no change: nothing recorded
    ev = [e for e in life.store.events(job) if e.old == e.new]
    assert [(e.old, e.reason) for e in ev] == [(QUEUED, "priority 0 -> -3, set by ann")]
    assert [c.reason for c in seen if c.old == c.new] == ["priority 0 -> -3, set by ann"]
    for bad in (1001, -1001, True, "5", 2.5, None):
        with pytest.raises(DistrenError, match="priority: a whole number from -1000 to 1000"):
            life.set_priority(job, bad, "ann")
    assert life.store.get_job(job).priority == -3


def test_a_paused_job_is_never_claimed_and_its_running_frame_finishes(life):
    job = new_job(life.store, frames=[1, 2, 3], life=life)
    assert life.claim("me") == (job, 1)
    life.pause(job, "ann")
    assert life.claim("me") is None and life.claim("peer", job_id=job, lease_expires=1e12) is None
    assert life.finish(job, 1, "me", [{"name": "a.png", "size": 1, "sha256": "0" * 64}]) is False
    assert life.store.get_job(job).state == PAUSED  # a finished frame does not end the pause
    with pytest.raises(Conflict, match="paused already"):
        life.pause(job, "ann")
    life.resume(job, "ann")
    assert life.store.get_job(job).state == RENDERING  # one done, two queued
    with pytest.raises(Conflict, match="not paused; nothing to resume"):
        life.resume(job, "ann")
    assert life.claim("me") == (job, 2)
    assert_consistent(life.store)


def test_a_job_whose_last_frame_finishes_while_paused_can_be_done(life):
    job = new_job(life.store, frames=[1], life=life)
    life.claim("me")
    life.pause(job, "ann")
    assert life.finish(job, 1, "me", []) is True
    life.job_done(job)
    assert life.store.get_job(job).state == DONE


def test_requeue_brings_back_a_cancelled_job_and_the_frames_waiting_for_it(life):
    store = life.store
    job = new_job(store, frames=[1, 2], life=life)
    life.claim("me")
    life.render_failed(job, 1, "me", "boom", 1)
    url = store.frame_url(job, 2)
    waiter = new_job(store, frames=[1], life=life)
    with store.tx() as db:  # as create_job records a <dep> on frame 2
        store.insert_deps(db, waiter, [(1, url)])
    life.cancel(job, "ann")
    assert store.frame(waiter, 1).state == "blocked"
    assert life.requeue(job, None, "bob") == (True, [1])
    assert store.get_job(job).state == QUEUED
    f = store.frame(job, 1)
    assert (f.state, f.attempts, f.reason) == (QUEUED, 0, "retried by bob")
    assert store.frame(waiter, 1).state == QUEUED  # its target may render again
    assert [e.reason for e in store.events(job) if e.old == CANCELLED] == ["requeued by bob"]
    with pytest.raises(Conflict, match="has no failed frame to requeue"):
        life.requeue(job, None, "bob")
    with pytest.raises(Conflict, match="has no frame 9"):
        life.requeue(job, [9], "bob")
    assert_consistent(store)


def test_requeue_of_named_frames_only(life):
    job = new_job(life.store, frames=[1, 2, 3], life=life)
    for _ in range(3):
        life.claim("me")
    for f in (1, 2):
        life.render_failed(job, f, "me", "boom", 1)
    life.finish(job, 3, "me", [])
    assert life.store.get_job(job).state == FAILED
    with pytest.raises(Conflict, match="frame 3 of job 1 is done"):
        life.requeue(job, [2, 3], "ann")
    assert life.requeue(job, [2], "ann") == (False, [2])
    assert [life.store.frame(job, f).state for f in (1, 2, 3)] == [FAILED, QUEUED, DONE]
    assert life.store.get_job(job).state == RENDERING
    assert_consistent(life.store)


def test_a_re_signed_record_carries_a_new_priority_to_peers(life):
    import time

    store = life.store
    ann = {"job": "distren://b/job/1", "origin": "b", "active": True, "priority": 0, "expires": time.time() + 100}
    assert store.record_announcement(ann["job"], "b", ann, True) is True
    assert store.record_announcement(ann["job"], "b", ann | {"priority": 9}, True) is False  # not fresher: kept
    assert store.announcements()[0]["priority"] == 0
    store.record_announcement(ann["job"], "b", ann | {"priority": 9, "expires": ann["expires"] + 50}, True)
    assert store.announcements()[0]["priority"] == 9
