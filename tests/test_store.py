"""The SQLite store, against real database files: migrations, ids, the frame/job state machine
(made by distren.lifecycle, executed by the store) and its event log, leases, peers, nonces,
announcements, and what survives SIGKILL."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from distren import states
from distren import store as store_mod
from distren.errors import Conflict, DistrenError, NotFound
from distren.lifecycle import Lifecycle
from distren.states import CANCELLED, DONE, FAILED, QUEUED, RENDERING
from distren.store import MIGRATIONS, Store

SRC = Path(store_mod.__file__).resolve().parents[2]  # the child imports the same distren as the tests
_staged = itertools.count()


def new_job(store: Store, frames=(1, 2, 3), submitter="alpha/~ann", upload_key=None, jobfile=None,
            life: Lifecycle | None = None) -> int:
    staged = store.staging_dir() / f"staged-{os.getpid()}-{next(_staged)}"
    staged.mkdir()
    (staged / "seed.tar").write_bytes(b"seed")
    (staged / "scene").mkdir()
    return (life or Lifecycle(store)).create_job(submitter, "povray", list(frames),
                                                 jobfile or (lambda jid: f"<job id='{jid}'/>".encode()), staged, upload_key)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data")
    yield s
    s.close()


@pytest.fixture
def life(store):
    return Lifecycle(store)


def raw(store_or_dir) -> sqlite3.Connection:
    """A second, independent connection to the same database file, for looking behind the API."""
    root = store_or_dir.root if isinstance(store_or_dir, Store) else Path(store_or_dir)
    db = sqlite3.connect(root / "state.sqlite")
    return db


def frame_events(store: Store, job_id: int, frame_id: int):
    return [e for e in store.events(job_id) if e.frame_id == frame_id]


def job_events(store: Store, job_id: int):
    return [e for e in store.events(job_id) if e.frame_id is None]


def lease_of(store: Store, job_id: int, frame_id: int):
    with raw(store) as db:
        return db.execute("SELECT lease_expires FROM frames WHERE job_id=? AND frame_id=?",
                          (job_id, frame_id)).fetchone()[0]


def consistency_problems(db: sqlite3.Connection) -> list[str]:
    """Everything that must hold of a database at rest, whatever happened before."""
    problems = []
    jobs = dict(db.execute("SELECT id, state FROM jobs").fetchall())
    for (job_id, frame_id, state, reason) in db.execute("SELECT job_id, frame_id, state, reason FROM frames"):
        evs = db.execute("SELECT old, new, reason FROM events WHERE job_id=? AND frame_id=? ORDER BY id",
                         (job_id, frame_id)).fetchall()
        # The event log is a walk through the state machine that starts at queued...
        prev = QUEUED
        for old, new, why in evs:
            if old != prev:
                problems.append(f"frame {job_id}/{frame_id}: event {old}->{new} does not follow {prev}")
            try:
                states.check_frame(old, new)
            except Conflict:
                problems.append(f"frame {job_id}/{frame_id}: event {old}->{new} is not a legal move")
            prev = new
        # ...and ends where the frame is.
        if state != prev:
            problems.append(f"frame {job_id}/{frame_id} is {state} but its last event says {prev}")
        if evs and evs[-1][2] != reason:
            problems.append(f"frame {job_id}/{frame_id}: reason {reason!r} but last event says {evs[-1][2]!r}")
        if job_id not in jobs:
            problems.append(f"frame {job_id}/{frame_id} of a job that does not exist")
    for job_id, state in jobs.items():
        evs = db.execute("SELECT old, new FROM events WHERE job_id=? AND frame_id IS NULL ORDER BY id",
                         (job_id,)).fetchall()
        if not evs or evs[0] != ("", QUEUED):
            problems.append(f"job {job_id}: first event is {evs[:1]}, not its submission")
        for (_, a), (b, c) in zip(evs, evs[1:]):
            if a != b:
                problems.append(f"job {job_id}: event {b}->{c} does not follow {a}")
        if evs and evs[-1][1] != state:
            problems.append(f"job {job_id} is {state} but its last event says {evs[-1][1]}")
        counts = dict(db.execute("SELECT state, COUNT(*) FROM frames WHERE job_id=? GROUP BY state",
                                 (job_id,)).fetchall())
        if state == DONE:
            if set(counts) - {DONE}:
                problems.append(f"job {job_id} is done but its frames are {counts}")
        elif state not in (CANCELLED, states.PAUSED):  # the user's states, until the user ends them
            expected = states.job_state_for(counts)
            expected = RENDERING if expected == DONE else expected  # done waits for the rebundle
            if state != expected:
                problems.append(f"job {job_id} is {state} but its frames {counts} say {expected}")
    return problems


def assert_consistent(store_or_db):
    if isinstance(store_or_db, Store):
        with raw(store_or_db) as db:
            problems = consistency_problems(db)
    else:
        problems = consistency_problems(store_or_db)
    assert not problems, "\n".join(problems)


# --- migrations and reopening -------------------------------------------------------------

def test_migrations_apply(tmp_path):
    s = Store(tmp_path / "d")
    s.close()
    with raw(tmp_path / "d") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "users", "jobs", "frames", "events", "peers", "announcements", "nonces"} <= tables
    assert (tmp_path / "d" / "jobs").is_dir()


def test_reopen_is_idempotent(tmp_path):
    s = Store(tmp_path / "d")
    s.set_meta("name", "alpha")
    token = s.add_user("ann", admin=True)
    job = new_job(s)
    s.close()
    for _ in range(3):
        s = Store(tmp_path / "d")
        assert s.get_meta("name") == "alpha"
        assert s.user_for_token(token) == ("ann", True)
        assert [j.id for j in s.list_jobs()] == [job]
        assert [f.frame_id for f in s.frames(job)] == [1, 2, 3]
        s.close()
        with raw(tmp_path / "d") as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_upgrade_from_the_first_schema(tmp_path):
    """A database written by the single-server version gains the later tables and keeps its jobs."""
    d = tmp_path / "d"
    d.mkdir()
    db = sqlite3.connect(d / "state.sqlite")
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO jobs(submitter, type, state, jobfile, created, updated) VALUES('u','povray','queued',x'00',1,1)")
    db.execute("INSERT INTO frames(job_id, frame_id, state) VALUES(1, 1, 'queued')")
    db.execute("INSERT INTO events(at, job_id, frame_id, old, new, reason) VALUES(1, 1, NULL, '', 'queued', 'submitted')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    s = Store(d)
    life = Lifecycle(s)
    try:
        assert life.claim("me", lease_expires=123.0) == (1, 1)
        assert lease_of(s, 1, 1) == 123.0
        assert s.pin_peer("beta", "http://b", "KEY") is True
    finally:
        s.close()
    with raw(d) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_a_failing_migration_leaves_nothing_behind(tmp_path, monkeypatch):
    Store(tmp_path / "d").close()
    monkeypatch.setattr(store_mod.migrations, "MIGRATIONS",
                        MIGRATIONS + ["CREATE TABLE half(a INTEGER); CREATE TABLE broken("])
    with pytest.raises(sqlite3.Error):
        Store(tmp_path / "d")
    with raw(tmp_path / "d") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("SELECT 1 FROM sqlite_master WHERE name='half'").fetchone() is None
    monkeypatch.setattr(store_mod.migrations, "MIGRATIONS", MIGRATIONS)
    Store(tmp_path / "d").close()


# --- jobs -----------------------------------------------------------------------------------

def test_create_job_moves_the_staged_folder(store):
    staged = store.staging_dir() / "up.d"
    (staged / "scene").mkdir(parents=True)
    (staged / "seed.tar").write_bytes(b"SEED")
    job = Lifecycle(store).create_job("alpha/~ann", "povray", [3, 1, 2], lambda jid: f"id={jid}".encode(), staged, "k1")
    assert not staged.exists()
    assert store.seed_path(job).read_bytes() == b"SEED"
    assert store.scene_dir(job).is_dir()
    row = store.get_job(job)
    assert (row.submitter, row.type, row.state, row.jobfile) == ("alpha/~ann", "povray", QUEUED, f"id={job}".encode())
    assert [f.frame_id for f in store.frames(job)] == [1, 2, 3]
    assert all(f.state == QUEUED and f.attempts == 0 and f.server is None for f in store.frames(job))
    assert store.frame_counts(job) == {QUEUED: 3}
    assert store.job_for_upload_key("alpha/~ann", "k1") == job
    assert store.job_for_upload_key("alpha/~bob", "k1") is None
    [ev] = store.events(job)
    assert (ev.frame_id, ev.old, ev.new, ev.reason) == (None, "", QUEUED, "submitted by alpha/~ann")


def test_create_job_replaces_a_stale_folder(store):
    stale = store.job_dir(1)
    stale.mkdir(parents=True)
    (stale / "leftover").write_text("from a job whose COMMIT never happened")
    job = new_job(store)
    assert job == 1
    assert not (stale / "leftover").exists()
    assert store.seed_path(job).read_bytes() == b"seed"


def test_create_job_rolls_back_and_the_id_is_not_handed_out(store):
    first = new_job(store)
    staged = store.staging_dir() / "bad"
    staged.mkdir()

    def boom(jid):
        raise RuntimeError("cannot write the job file")

    with pytest.raises(RuntimeError):
        Lifecycle(store).create_job("u", "povray", [1], boom, staged, None)
    assert staged.is_dir()  # the caller still owns it
    assert [j.id for j in store.list_jobs()] == [first]
    assert new_job(store) == first + 1
    assert_consistent(store)


def test_job_ids_never_reused_after_delete_and_reopen(tmp_path):
    s = Store(tmp_path / "d")
    life = Lifecycle(s)
    a, b = new_job(s), new_job(s)
    life.cancel(b, "ann")
    life.delete(b, "ann")  # the highest id goes
    with pytest.raises(NotFound):
        s.get_job(b)
    assert s.events(b) == [] and s.frames(b) == []
    s.close()
    s = Store(tmp_path / "d")
    life = Lifecycle(s)
    c = new_job(s)
    assert c > b > a
    life.cancel(a, "ann")
    life.cancel(c, "ann")
    life.delete(a, "ann")
    life.delete(c, "ann")
    s.close()
    s = Store(tmp_path / "d")
    life = Lifecycle(s)
    assert s.list_jobs() == []
    assert new_job(s) > c
    s.close()


def test_delete_job_refuses_live_and_unknown_jobs(store, life):
    job = new_job(store, frames=[1])
    with pytest.raises(Conflict, match="cancel it before deleting"):
        life.delete(job, "ann")
    with pytest.raises(NotFound):
        life.delete(999, "ann")
    life.claim("me")
    life.render_failed(job, 1, "me", "boom", 1)
    assert store.get_job(job).state == FAILED
    life.delete(job, "ann")  # failed is final
    assert store.list_jobs() == []


def test_unknown_job_and_frame(store, life):
    job = new_job(store, frames=[1])
    with pytest.raises(NotFound):
        store.get_job(job + 1)
    with pytest.raises(NotFound):
        store.frame(job, 2)
    for call in (lambda: life.finish(job, 2, "me", []), lambda: life.release(job, 2, "me", "x"),
                 lambda: life.render_failed(job, 2, "me", "x", 1), lambda: life.cancel(job + 1, "ann")):
        with pytest.raises(NotFound):
            call()


def test_retry_frame_of_unknown_job_is_not_found(store, life):
    try:
        life.retry(999, 1, "ann")
    except NotFound:
        return
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"expected NotFound, got {type(e).__name__}: {e}") from None
    raise AssertionError("no error")


def test_mark_job_done_of_unknown_job_is_not_found(store, life):
    try:
        life.job_done(999)
    except NotFound:
        return
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"expected NotFound, got {type(e).__name__}: {e}") from None
    raise AssertionError("no error")


def test_duplicate_upload_key_is_not_a_raw_sqlite_error(store):
    first = new_job(store, upload_key="same")
    try:
        second = new_job(store, upload_key="same")
    except DistrenError:
        return
    except sqlite3.Error as e:
        raise AssertionError(f"raw {type(e).__name__}: {e}") from None
    assert second == first


# --- claiming and the frame state machine -----------------------------------------------------

def test_claim_order_oldest_job_then_lowest_frame(store, life):
    a = new_job(store, frames=[5, 2, 9])
    b = new_job(store, frames=[1])
    assert life.claim("me", job_id=b) == (b, 1)
    got = [life.claim("me") for _ in range(4)]
    assert got == [(a, 2), (a, 5), (a, 9), None]
    assert life.claim("me", job_id=a) is None
    f = store.frame(a, 2)
    assert (f.state, f.server, f.attempts, f.reason) == (RENDERING, "me", 0, "rendering on me")  # a claim is no failed render
    assert f.started is not None
    assert store.get_job(a).state == RENDERING


def test_requeued_frame_is_claimed_again_before_later_ones(store, life):
    a = new_job(store, frames=[1, 2, 3])
    assert life.claim("me") == (a, 1)
    assert life.claim("me") == (a, 2)
    life.release(a, 1, "me", "the renderer crashed")
    assert life.claim("me") == (a, 1)


def test_attempts_counting(store, life):
    """Attempts count renders that failed: claims and releases use none up."""
    job = new_job(store, frames=[1])
    life.claim("me")
    assert store.frame(job, 1).attempts == 0
    life.release(job, 1, "me", "me shut down while rendering")
    assert store.frame(job, 1).attempts == 0
    life.claim("me")
    assert life.render_failed(job, 1, "me", "boom", 3) == QUEUED
    f = store.frame(job, 1)
    assert (f.state, f.attempts, f.server, f.reason) == (QUEUED, 1, None, "attempt 1 on me failed: boom; retrying")
    life.claim("me")
    assert store.frame(job, 1).attempts == 1
    assert life.render_failed(job, 1, "me", "boom", 2) == FAILED
    f = store.frame(job, 1)
    assert (f.state, f.attempts, f.reason) == (FAILED, 2, "boom (on me)")
    assert store.get_job(job).state == FAILED
    life.retry(job, 1, "ann")
    f = store.frame(job, 1)
    assert (f.state, f.attempts, f.server) == (QUEUED, 0, None)
    assert store.get_job(job).state == QUEUED
    life.claim("me")
    assert life.render_failed(job, 1, "me", "Parse Error", 3, final=True) == FAILED   # no use retrying
    assert store.frame(job, 1).attempts == 1


def test_finish_frame_returns_true_on_the_last_frame(store, life):
    job = new_job(store, frames=[1, 2, 3])
    for server in ("me", "peer", "me"):
        life.claim(server)
    files = [{"name": "f2.png", "size": 3, "sha256": "ab"}]
    assert life.finish(job, 3, "me", []) is False
    assert life.finish(job, 2, "peer", files) is False
    assert store.get_job(job).state == RENDERING
    assert store.jobs_awaiting_rebundle() == []
    assert life.finish(job, 1, "me", []) is True
    f2 = store.frame(job, 2)
    assert (f2.state, f2.server, f2.files, f2.reason) == (DONE, "peer", files, "rendered by peer")
    assert f2.finished is not None
    # A job never becomes done by its frames alone: it waits for the rebundled result.
    assert store.get_job(job).state == RENDERING
    assert store.jobs_awaiting_rebundle() == [job]
    life.job_done(job)
    assert store.get_job(job).state == DONE
    assert store.jobs_awaiting_rebundle() == []
    life.job_done(job)  # again: nothing happens
    assert [e.new for e in job_events(store, job)] == [QUEUED, RENDERING, DONE]
    assert_consistent(store)


def test_illegal_frame_moves_are_conflicts_and_leave_no_trace(store, life):
    job = new_job(store, frames=[1, 2])
    before = store.events(job)
    with pytest.raises(Conflict, match="frame 1 of job .* is queued; it cannot become done"):
        life.finish(job, 1, "me", [])
    with pytest.raises(Conflict, match="queued; it cannot become failed"):
        life.render_failed(job, 1, "me", "x", 1)
    with pytest.raises(Conflict, match="frame 1 of job .* is queued, not rendering"):
        life.release(job, 1, "me", "x")
    with pytest.raises(Conflict, match="frame 1 of job .* is queued, not failed"):
        life.retry(job, 1, "ann")
    life.claim("me")
    life.finish(job, 1, "me", [])
    n = len(store.events(job))
    for call in (lambda: life.finish(job, 1, "me", []), lambda: life.release(job, 1, "me", "x"),
                 lambda: life.render_failed(job, 1, "me", "x", 1), lambda: life.retry(job, 1, "ann")):
        with pytest.raises(Conflict, match="is done"):
            call()
    assert len(store.events(job)) == n
    assert len(before) == 1
    assert_consistent(store)


def test_every_transition_is_an_event_with_its_reason(store, life):
    job = new_job(store, frames=[1, 2])
    life.claim("me")                                  # 1 rendering; job rendering
    life.release(job, 1, "me", "me shut down while rendering")
    life.claim("peer")                                # 1 rendering again
    life.render_failed(job, 1, "peer", "Parse Error: no camera", 1)
    life.retry(job, 1, "ann")
    life.claim("me")
    life.finish(job, 1, "me", [])
    assert [(e.old, e.new, e.reason) for e in frame_events(store, job, 1)] == [
        (QUEUED, RENDERING, "rendering on me"),
        (RENDERING, QUEUED, "me shut down while rendering"),
        (QUEUED, RENDERING, "rendering on peer"),
        (RENDERING, FAILED, "Parse Error: no camera (on peer)"),
        (FAILED, QUEUED, "retried by ann"),
        (QUEUED, RENDERING, "rendering on me"),
        (RENDERING, DONE, "rendered by me"),
    ]
    assert frame_events(store, job, 2) == []
    jev = [(e.old, e.new, e.reason) for e in job_events(store, job)]
    assert jev == [
        ("", QUEUED, "submitted by alpha/~ann"),
        (QUEUED, RENDERING, "frame 1 started rendering on me"),
        (RENDERING, QUEUED, "frame 1: me shut down while rendering"),
        (QUEUED, RENDERING, "frame 1 started rendering on peer"),
        # the failure leaves the job rendering ({failed, queued}: it is under way): no event
        (RENDERING, QUEUED, "frame 1 retried by ann"),
        (QUEUED, RENDERING, "frame 1 started rendering on me"),
    ]
    ids = [e.id for e in store.events(job)]
    assert ids == sorted(ids)
    assert [e.id for e in store.events(job, after=ids[3])] == ids[4:]
    assert store.get_job(job).state == RENDERING
    assert store.get_job(job).reason == "frame 1 started rendering on me"
    assert_consistent(store)


def test_failed_job_and_retry(store, life):
    job = new_job(store, frames=[1, 2])
    life.claim("me")
    life.claim("me")
    life.render_failed(job, 1, "me", "boom", 1)
    assert store.get_job(job).state == RENDERING   # frame 2 still rendering
    life.finish(job, 2, "me", [])
    assert store.get_job(job).state == FAILED      # nothing left to do but a failed frame
    assert life.claim("me") is None
    assert store.jobs_awaiting_rebundle() == []
    life.retry(job, 1, "ann")
    assert store.get_job(job).state == RENDERING   # one done, one queued
    assert life.claim("me") == (job, 1)
    assert life.finish(job, 1, "me", []) is True
    assert_consistent(store)


def test_cancel_prevents_claims(store, life):
    a = new_job(store, frames=[1, 2, 3])
    b = new_job(store, frames=[1])
    assert life.claim("me") == (a, 1)
    life.cancel(a, "ann")
    job = store.get_job(a)
    assert (job.state, job.reason) == (CANCELLED, "cancelled by ann")
    assert life.claim("me", job_id=a) is None
    assert life.claim("me") == (b, 1)   # other jobs go on
    assert life.claim("me") is None
    # The render that was under way may still end; it is discarded and the job stays cancelled.
    assert life.finish(a, 1, "me", [{"name": "a1.png"}]) is False
    f = store.frame(a, 1)
    assert (f.state, f.server, f.files, f.reason) == (QUEUED, None, [], "job cancelled; the render was discarded")
    assert store.get_job(a).state == CANCELLED
    with pytest.raises(Conflict, match="cancelled; `distren retry` the job"):
        life.retry(a, 2, "ann")
    with pytest.raises(Conflict, match="already cancelled"):
        life.cancel(a, "ann")
    with pytest.raises(Conflict):
        life.job_done(a)
    life.finish(b, 1, "me", [])
    life.job_done(b)
    with pytest.raises(Conflict, match="already done"):
        life.cancel(b, "ann")
    assert job_events(store, a)[-1].reason == "cancelled by ann"
    assert_consistent(store)


def test_retry_frame_refuses_a_rendering_frame(store, life):
    job = new_job(store, frames=[1])
    assert life.claim("beta", lease_expires=time.time() + 60) == (job, 1)
    try:
        life.retry(job, 1, "ann")
    except Conflict:
        return
    # What happens instead: the frame is rendered twice.
    assert life.claim("me") == (job, 1)
    with pytest.raises(Conflict):
        life.renew(job, 1, "beta", time.time() + 120)
    raise AssertionError("retry_frame accepted a frame that was rendering")


def test_requeue_frame_refuses_a_failed_frame(store, life):
    job = new_job(store, frames=[1, 2])
    life.claim("me")
    life.render_failed(job, 1, "me", "Parse Error", 1)
    life.cancel(job, "ann")
    with pytest.raises(Conflict):
        life.retry(job, 1, "ann")   # the user may not...
    with pytest.raises(Conflict):
        life.release(job, 1, "me", "attempt 1 failed: x; retrying")   # ...nor may this


def test_recover_requeues_only_this_servers_frames(store, life):
    job = new_job(store, frames=[1, 2, 3, 4])
    assert life.claim("me") == (job, 1)
    assert life.claim("beta", lease_expires=time.time() + 60) == (job, 2)
    assert life.claim("me") == (job, 3)
    life.finish(job, 3, "me", [])
    assert store.frames_leased_to("beta") == [(job, 2)]
    assert life.recover("me") == [(job, 1)]
    f1, f2, f3 = store.frame(job, 1), store.frame(job, 2), store.frame(job, 3)
    assert (f1.state, f1.server, f1.reason) == (QUEUED, None, "me restarted while rendering this frame")
    assert (f2.state, f2.server) == (RENDERING, "beta")
    assert f3.state == DONE
    assert life.recover("me") == []
    assert store.frames_leased_to("beta") == [(job, 2)]
    assert_consistent(store)


def test_recover_brings_a_job_back_to_queued(store, life):
    job = new_job(store, frames=[1, 2])
    life.claim("me")
    life.claim("me")
    assert life.recover("me") == [(job, 1), (job, 2)]
    assert store.get_job(job).state == QUEUED
    assert job_events(store, job)[-1].reason == "frame 2 requeued after restart"


# --- leases -----------------------------------------------------------------------------------

def test_leases(store, life):
    job = new_job(store, frames=[1, 2, 3, 4])
    assert life.claim("beta", lease_expires=100.0) == (job, 1)
    assert life.claim("gamma", lease_expires=200.0) == (job, 2)
    assert life.claim("me") == (job, 3)          # a local render has no lease
    assert lease_of(store, job, 1) == 100.0
    assert lease_of(store, job, 3) is None

    with pytest.raises(Conflict, match="not leased to gamma"):
        life.renew(job, 1, "gamma", 500.0)
    with pytest.raises(Conflict, match="not leased to beta"):
        life.renew(job, 4, "beta", 500.0)        # queued, nobody's
    life.renew(job, 1, "beta", 150.0)
    assert lease_of(store, job, 1) == 150.0

    n = len(store.events(job))
    assert life.expire_leases(now=150.0) == []           # not before the time is up
    assert len(store.events(job)) == n
    assert life.expire_leases(now=175.0) == [(job, 1, "beta")]
    f1 = store.frame(job, 1)
    assert (f1.state, f1.server) == (QUEUED, None)
    assert lease_of(store, job, 1) is None
    assert "beta" in f1.reason and "lease" in f1.reason
    ev = frame_events(store, job, 1)[-1]
    assert (ev.old, ev.new, ev.reason) == (RENDERING, QUEUED, f1.reason)
    assert store.frame(job, 2).state == RENDERING       # gamma's lease runs longer
    assert store.frame(job, 3).state == RENDERING       # local frames never expire
    with pytest.raises(Conflict):
        life.renew(job, 1, "beta", 1000.0)         # too late: the frame went back to the queue

    assert life.expire_leases(now=1e12) == [(job, 2, "gamma")]
    assert store.frame(job, 3).state == RENDERING
    assert_consistent(store)


def test_extend_leases(store, life):
    job = new_job(store, frames=[1, 2, 3, 4])
    life.claim("beta", lease_expires=100.0)
    life.claim("gamma", lease_expires=900.0)
    life.claim("me")
    life.claim("beta", lease_expires=50.0)
    life.finish(job, 4, "beta", [])
    life.extend_leases(until=500.0)
    assert lease_of(store, job, 1) == 500.0
    assert lease_of(store, job, 2) == 900.0   # never shortened
    assert lease_of(store, job, 3) is None    # a local render gets no lease
    assert lease_of(store, job, 4) is None    # finished frames keep none
    assert life.expire_leases(now=499.0) == []
    assert life.expire_leases(now=501.0) == [(job, 1, "beta")]


# --- peers, nonces, announcements -------------------------------------------------------------

def test_pin_peer(store):
    assert store.peer_key("beta") is None
    assert store.pin_peer("beta", "http://b:1", "KEY1") is True
    assert store.peer_key("beta") == "KEY1"
    assert store.pin_peer("beta", "http://b:2", "KEY1") is False   # same key: just a new address
    assert [(p["name"], p["address"], p["public_key"]) for p in store.peers()] == [("beta", "http://b:2", "KEY1")]
    with pytest.raises(Conflict, match="different key"):
        store.pin_peer("beta", "http://evil", "KEY2")
    assert store.peer_key("beta") == "KEY1"
    assert store.peers()[0]["address"] == "http://b:2"
    store.peer_heard("beta", slots=4, rendering=["x"])
    p = store.peers()[0]
    assert (p["slots"], p["rendering"]) == (4, ["x"])
    store.remove_peer("beta")
    assert store.peer_key("beta") is None
    assert store.pin_peer("beta", "http://b:3", "KEY2") is True   # re-pinned deliberately
    with pytest.raises(NotFound):
        store.remove_peer("nobody")


def test_pinned_key_survives_reopen(tmp_path):
    s = Store(tmp_path / "d")
    s.pin_peer("beta", "http://b", "KEY1")
    s.close()
    s = Store(tmp_path / "d")
    with pytest.raises(Conflict):
        s.pin_peer("beta", "http://b", "KEY2")
    s.close()


def test_seen_nonce(tmp_path):
    s = Store(tmp_path / "d")
    assert s.seen_nonce("a" * 32, 100.0) is False
    assert s.seen_nonce("a" * 32, 100.0) is True
    assert s.seen_nonce("b" * 32, 300.0) is False
    s.close()
    s = Store(tmp_path / "d")                 # persistent: a restart does not reopen the window
    assert s.seen_nonce("a" * 32, 100.0) is True
    s.purge_nonces(now=200.0)
    assert s.seen_nonce("b" * 32, 300.0) is True
    assert s.seen_nonce("a" * 32, 400.0) is False  # forgotten once expired
    s.close()


def bodies(store: Store, active_only: bool = True) -> list[dict]:
    """The announcement bodies, without the 'active' flag (older versions of the store added it)."""
    return [{k: v for k, v in a.items() if k != "active"} for a in store.announcements(active_only)]


def test_record_announcement(store):
    body = {"url": "distren://beta/job/1", "frames": 3}
    assert store.record_announcement("distren://beta/job/1", "beta", body, True) is True     # news
    assert store.record_announcement("distren://beta/job/1", "gamma", body, True) is False   # duplicate
    assert bodies(store) == [body]
    withdrawal = dict(body, state="done")
    assert store.record_announcement("distren://beta/job/1", "beta", withdrawal, False) is True
    assert bodies(store) == []
    assert bodies(store, active_only=False) == [withdrawal]
    # Withdrawn stays withdrawn: a late or relayed copy of the old announcement changes nothing.
    assert store.record_announcement("distren://beta/job/1", "gamma", body, True) is False
    assert store.record_announcement("distren://beta/job/1", "beta", body, False) is False
    assert bodies(store) == []
    assert bodies(store, active_only=False) == [withdrawal]
    # A withdrawal heard before the announcement itself also wins.
    assert store.record_announcement("distren://beta/job/2", "beta", {"url": "2"}, False) is True
    assert store.record_announcement("distren://beta/job/2", "beta", {"url": "2"}, True) is False
    assert bodies(store) == []
    assert store.record_announcement("distren://gamma/job/1", "gamma", {"url": "g1"}, True) is True
    assert bodies(store) == [{"url": "g1"}]


def test_announcements_survive_reopen(tmp_path):
    s = Store(tmp_path / "d")
    s.record_announcement("distren://beta/job/1", "beta", {"url": "b1"}, True)
    s.record_announcement("distren://beta/job/2", "beta", {"url": "b2"}, True)
    s.record_announcement("distren://beta/job/2", "beta", {"url": "b2", "gone": True}, False)
    s.close()
    s = Store(tmp_path / "d")
    assert bodies(s) == [{"url": "b1"}]
    assert s.record_announcement("distren://beta/job/2", "beta", {"url": "b2"}, True) is False
    s.close()


def test_forget_announcement(store):
    store.record_announcement("distren://beta/job/1", "beta", {"url": "b1"}, True)
    store.forget_announcement("distren://beta/job/1")
    assert bodies(store) == []
    assert bodies(store, active_only=False) == [{"url": "b1"}]   # the signed record stays
    assert store.record_announcement("distren://beta/job/1", "beta", {"url": "b1"}, True) is False
    store.forget_announcement("distren://nobody/job/1")          # unknown: nothing happens
    assert bodies(store, active_only=False) == [{"url": "b1"}]


# --- the state machine, driven at random -------------------------------------------------------

SERVERS = ("me", "peer")


class StoreMachine(RuleBasedStateMachine):
    """Two small jobs; random claims, finishes, requeues, failures, retries, cancels, recoveries
    and lease expiries. A model predicts every outcome; the invariants check the database against
    the model and against its own event log."""

    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="distren-store-"))
        self.store = Store(self.dir)
        self.life = Lifecycle(self.store)
        self.db = raw(self.dir)
        self.jobs: list[int] = []
        self.frames: dict[tuple[int, int], str] = {}
        self.attempts: dict[tuple[int, int], int] = {}
        self.server: dict[tuple[int, int], str | None] = {}
        self.job_state: dict[int, str] = {}
        self.events = 0

    def teardown(self):
        self.db.close()
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # model helpers
    def frames_of(self, job):
        return sorted(k for k in self.frames if k[0] == job)

    def follow(self, job):
        if self.job_state[job] in (CANCELLED, DONE):
            return
        counts = {}
        for k in self.frames_of(job):
            counts[self.frames[k]] = counts.get(self.frames[k], 0) + 1
        new = states.job_state_for(counts)
        new = RENDERING if new == DONE else new
        if new != self.job_state[job]:
            self.job_state[job] = new
            self.events += 1

    def move(self, key, new):
        self.frames[key] = new
        self.events += 1
        self.follow(key[0])

    def expect_conflict(self, call):
        before = self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        with pytest.raises(Conflict):
            call()
        assert self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == before

    @initialize(sizes=st.lists(st.integers(1, 3), min_size=1, max_size=2))
    def create(self, sizes):
        for n in sizes:
            ids = list(range(10, 10 + n))
            job = new_job(self.store, frames=ids)
            self.jobs.append(job)
            self.job_state[job] = QUEUED
            self.events += 1
            for f in ids:
                self.frames[(job, f)] = QUEUED
                self.attempts[(job, f)] = 0
                self.server[(job, f)] = None

    def pick(self, i, anywhere, usual):
        """Mostly a frame in the state the operation is meant for; otherwise any frame, to check
        that every illegal move is refused."""
        pool = sorted(k for k, s in self.frames.items() if s == usual)
        if anywhere or not pool:
            pool = sorted(self.frames)
        return pool[i % len(pool)]

    # Claiming is what everything else needs, so two rules do it.
    @rule(server=st.sampled_from(SERVERS), only=st.none() | st.integers(0, 1))
    def claim(self, server, only):
        self._claim(server, only)

    @rule(server=st.sampled_from(SERVERS))
    def claim_next(self, server):
        self._claim(server, None)

    def _claim(self, server, only):
        job_id = None if only is None else self.jobs[only % len(self.jobs)]
        lease = 1000.0 if server == "peer" else None
        candidates = sorted(k for k, s in self.frames.items()
                            if s == QUEUED and self.job_state[k[0]] in (QUEUED, RENDERING)
                            and (job_id is None or k[0] == job_id))
        got = self.life.claim(server, job_id=job_id, lease_expires=lease)
        if not candidates:
            assert got is None
            return
        assert got == candidates[0]
        self.server[got] = server
        self.move(got, RENDERING)
        ev = frame_events(self.store, *got)[-1]
        assert ev.reason == f"rendering on {server}"

    @rule(i=st.integers(0, 5), anywhere=st.booleans())
    def finish(self, i, anywhere):
        key = self.pick(i, anywhere, RENDERING)
        if self.frames[key] != RENDERING:
            self.expect_conflict(lambda: self.life.finish(*key, "me", []))
            return
        last = self.life.finish(*key, self.server[key], [{"name": "x"}])
        if self.job_state[key[0]] == CANCELLED:  # the render is discarded
            assert last is False
            self.server[key] = None
            self.move(key, QUEUED)
            return
        self.move(key, DONE)
        assert last == all(self.frames[k] == DONE for k in self.frames_of(key[0]))

    @rule(i=st.integers(0, 5), anywhere=st.booleans(),
          reason=st.sampled_from(["lost", "attempt 1 failed: x; retrying"]))
    def requeue(self, i, anywhere, reason):
        key = self.pick(i, anywhere, RENDERING)
        if self.frames[key] != RENDERING:
            self.expect_conflict(lambda: self.life.release(*key, "me", reason))
            return
        self.life.release(*key, self.server[key], reason)
        self.server[key] = None
        self.move(key, QUEUED)
        ev = frame_events(self.store, *key)[-1]
        assert (ev.old, ev.new, ev.reason) == (RENDERING, QUEUED, reason)

    @rule(i=st.integers(0, 5), anywhere=st.booleans(), max_attempts=st.integers(1, 3))
    def fail(self, i, anywhere, max_attempts=1):
        key = self.pick(i, anywhere, RENDERING)
        if self.frames[key] != RENDERING:
            self.expect_conflict(lambda: self.life.render_failed(*key, "me", "Parse Error", max_attempts))
            return
        holder = self.server[key]
        got = self.life.render_failed(*key, holder, "Parse Error", max_attempts)
        reason = frame_events(self.store, *key)[-1].reason
        if self.job_state[key[0]] == CANCELLED:  # not the frame's fault: no attempt used
            assert (got, reason) == (QUEUED, "job cancelled while rendering")
            self.server[key] = None
            self.move(key, QUEUED)
            return
        self.attempts[key] += 1
        if self.attempts[key] < max_attempts:
            assert (got, reason) == (QUEUED, f"attempt {self.attempts[key]} on {holder} failed: Parse Error; retrying")
            self.server[key] = None
            self.move(key, QUEUED)
            return
        assert (got, reason) == (FAILED, f"Parse Error (on {holder})")
        self.move(key, FAILED)

    @rule(i=st.integers(0, 5), anywhere=st.booleans())
    def retry(self, i, anywhere):
        key = self.pick(i, anywhere, FAILED)
        if self.job_state[key[0]] == CANCELLED or self.frames[key] != FAILED:
            self.expect_conflict(lambda: self.life.retry(*key, "ann"))
            return
        self.life.retry(*key, "ann")
        self.attempts[key] = 0
        self.server[key] = None
        self.move(key, QUEUED)
        assert frame_events(self.store, *key)[-1].reason == "retried by ann"

    # Rarer events share a rule each, so the frame operations above get most of the steps.
    @rule(j=st.integers(0, 1), what=st.sampled_from(["rebundled", "rebundled", "cancel"]))
    def job_op(self, j, what):
        getattr(self, what)(j)

    @rule(what=st.sampled_from(["restart", "leases_run_out", "reopen"]))
    def disruption(self, what):
        getattr(self, what)()

    def cancel(self, j):
        job = self.jobs[j % len(self.jobs)]
        if self.job_state[job] in (DONE, CANCELLED):
            self.expect_conflict(lambda: self.life.cancel(job, "ann"))
            return
        self.life.cancel(job, "ann")
        self.job_state[job] = CANCELLED
        self.events += 1

    def rebundled(self, j):
        """What the service does once finish_frame said 'last': mark the job done."""
        job = self.jobs[j % len(self.jobs)]
        if self.job_state[job] in (QUEUED, RENDERING) and all(self.frames[k] == DONE for k in self.frames_of(job)):
            self.life.job_done(job)
            self.job_state[job] = DONE
            self.events += 1
        elif self.job_state[job] == CANCELLED:
            self.expect_conflict(lambda: self.life.job_done(job))

    def restart(self):
        mine = sorted(k for k, s in self.frames.items() if s == RENDERING and self.server[k] == "me")
        assert sorted(self.life.recover("me")) == mine
        for k in mine:
            self.server[k] = None
            self.move(k, QUEUED)

    def leases_run_out(self):
        theirs = sorted(k for k, s in self.frames.items() if s == RENDERING and self.server[k] == "peer")
        assert sorted((j, f) for j, f, _ in self.life.expire_leases(now=2000.0)) == theirs
        for k in theirs:
            self.server[k] = None
            self.move(k, QUEUED)

    def reopen(self):
        self.store.close()
        self.store = Store(self.dir)
        self.life = Lifecycle(self.store)

    @invariant()
    def matches_model(self):
        if not self.jobs:
            return
        for job in self.jobs:
            assert self.store.get_job(job).state == self.job_state[job]
            for f in self.store.frames(job):
                key = (job, f.frame_id)
                assert f.state == self.frames[key], key
                assert f.attempts == self.attempts[key], key
                if f.state in (QUEUED,):
                    assert f.server is None
                if f.state == RENDERING:
                    assert f.server == self.server[key]
        assert self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == self.events

    @invariant()
    def matches_its_event_log(self):
        assert_consistent(self.db)

    @invariant()
    def rebundle_list(self):
        expected = sorted(j for j in self.jobs if self.job_state[j] in (QUEUED, RENDERING)
                          and all(self.frames[k] == DONE for k in self.frames_of(j)))
        assert sorted(self.store.jobs_awaiting_rebundle()) == expected


StoreMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=40, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_store_state_machine = StoreMachine.TestCase


# --- SIGKILL ---------------------------------------------------------------------------------

CHILD = r"""
import os, random, signal, sys, time
from pathlib import Path
from distren.lifecycle import Lifecycle
from distren.store import Store

data, kill_at, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
s = Store(data)
life = Lifecycle(s)
n = [0]

def new_job():
    n[0] += 1
    st = s.staging_dir() / f"up-{n[0]}.d"
    (st / "scene").mkdir(parents=True)
    (st / "seed.tar").write_bytes(b"seed")
    return life.create_job("alpha/~ann", "povray", list(range(1, 9)), lambda j: b"<job/>", st, f"key-{n[0]}")

new_job()

if kill_at:
    # Die just before the kill_at-th SQL statement from here on: inside a transaction, most often.
    stmts = [0]
    def trace(sql):
        stmts[0] += 1
        if stmts[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    s._db.set_trace_callback(trace)

print("ready", flush=True)
while True:
    server = rng.choice(["me", "me", "peer"])
    got = life.claim(server, lease_expires=time.time() + 60 if server == "peer" else None)
    if got is None:
        for j in s.jobs_awaiting_rebundle():
            life.job_done(j)
        new_job()
        continue
    r = rng.random()
    if r < 0.55:
        if life.finish(*got, server, [{"name": "f.png", "size": 1, "sha256": "00"}]):
            life.job_done(got[0])
    elif r < 0.75:
        life.render_failed(*got, server, "boom", 3)
    elif r < 0.9:
        life.render_failed(*got, server, "Parse Error", 1)
        if rng.random() < 0.7:
            life.retry(*got, "ann")
    elif r < 0.93:
        life.cancel(got[0], "ann")
        life.finish(*got, server, [])
    elif server == "peer":
        life.renew(*got, server, time.time() + 120)
    else:
        life.recover("me")
"""


def run_child(data: Path, kill_at: int, seed: int, kill_delay: float | None = None) -> int:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data), str(kill_at), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline() == b"ready\n", proc.stderr.read().decode()
        if kill_delay is not None:
            time.sleep(kill_delay)
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    return proc.returncode


def check_after_crash(data: Path) -> None:
    with raw(data) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert_consistent(db)
        jobs = [r[0] for r in db.execute("SELECT id FROM jobs")]
        assert jobs, "the child committed nothing"
    for job in jobs:  # a committed job always has its folder (moved before COMMIT)
        assert (data / "jobs" / str(job) / "seed.tar").is_file()
    s = Store(data)
    life = Lifecycle(s)
    try:
        life.recover("me")
        assert s.frames_leased_to("me") == []
        assert_consistent(s)
        # The server goes on working where it stopped.
        assert new_job(s, frames=[1]) > max(jobs)
        while (got := life.claim("me")) is not None:
            if life.finish(*got, "me", []):
                life.job_done(got[0])
        assert_consistent(s)
    finally:
        s.close()


@pytest.mark.parametrize("kill_at, seed", [(1, 0), (2, 1), (7, 2), (40, 3), (113, 4), (250, 5),
                                           (677, 6), (1501, 7), (3333, 8)])
def test_sigkill_in_the_middle_of_a_transaction(tmp_path, kill_at, seed):
    """The child kills itself just before its kill_at-th SQL statement (of claim, finish, requeue,
    fail, retry, cancel, recover, create_job...): the reopened database holds whole transactions."""
    run_child(tmp_path / "d", kill_at, seed)
    check_after_crash(tmp_path / "d")


@pytest.mark.parametrize("delay, seed", [(0.05, 10), (0.3, 11)])
def test_sigkill_at_a_random_moment(tmp_path, delay, seed):
    """Killed from outside, most likely in the middle of a transaction."""
    run_child(tmp_path / "d", 0, seed, kill_delay=delay)
    check_after_crash(tmp_path / "d")


@pytest.mark.parametrize("seed", range(4))
def test_store_long_random_walk(seed):
    """The same model, driven by plain seeded randomness for many more steps than the state
    machine takes: long histories (many claims, failures, retries, restarts, reopenings) on
    a few jobs."""
    import random

    rng = random.Random(seed)
    m = StoreMachine()
    try:
        m.create(sizes=[rng.randint(1, 4), rng.randint(1, 4)])
        for _ in range(300):
            if all(s in (DONE, CANCELLED) for s in m.job_state.values()):
                m.create(sizes=[rng.randint(1, 4)])  # keep the server busy
            r = rng.random()
            if r < 0.30:
                m._claim(rng.choice(SERVERS), rng.choice([None, None, len(m.jobs) - 1]))
            elif r < 0.45:
                m.finish(i=rng.randrange(6), anywhere=rng.random() < 0.2)
            elif r < 0.58:
                m.requeue(i=rng.randrange(6), anywhere=rng.random() < 0.2, reason="lost")
            elif r < 0.72:
                m.fail(i=rng.randrange(6), anywhere=rng.random() < 0.2)
            elif r < 0.86:
                m.retry(i=rng.randrange(6), anywhere=rng.random() < 0.2)
            elif r < 0.95:
                m.disruption(rng.choice(["restart", "leases_run_out", "reopen"]))
            else:
                if rng.random() < 0.8:
                    for j in range(len(m.jobs)):
                        m.rebundled(j)
                else:
                    m.cancel(len(m.jobs) - 1 - rng.randrange(2))
            m.matches_model()
            m.matches_its_event_log()
            m.rebundle_list()
    finally:
        m.teardown()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=3000))
def test_reason_text_of_plain_ascii_is_one_line_bounded_and_as_the_careful_way_makes_it(text):
    from distren.store.jobs import MAX_REASON, reason_text
    got = reason_text(text)
    assert "\n" not in got and "\x00" not in got and len(got) <= MAX_REASON
    # The careful way, character by character: what the quick path for plain ASCII must equal.
    careful = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    assert got == (careful if len(careful) <= MAX_REASON else careful[: MAX_REASON - 3] + "...")
