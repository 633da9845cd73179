"""The lifecycle against a real SQLite store: random interleavings of claims, renewals, lease
expiries, failure reports, uploads, retries and cancels from several servers, on an injected
clock. The invariants are read from the database and its event log, not only from the model:
one holder at a time, nothing lost, no frame failed or finished by a server that does not hold
it, attempts equal to the failure reports accepted, every recorded change published once."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from distren import states
from distren.bus import Bus, Change
from distren.errors import Conflict
from distren.lifecycle import Lifecycle
from distren.states import CANCELLED, DONE, FAILED, QUEUED, RENDERING
from distren.store import Store
from test_store import assert_consistent, new_job, raw

LOCAL = "distren://alpha/"                            # renders in its own slots: no lease
REMOTE = ("distren://beta/", "distren://gamma/")      # lease frames from alpha
SERVERS = (LOCAL, *REMOTE)
LEASE = 10.0
MAX_ATTEMPTS = 3


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def files_of(server: str, key: tuple[int, int]) -> list[dict]:
    return [{"name": f"frame{key[1]}.png", "size": len(server), "sha256": server}]


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="distren-life-"))
        self.store = Store(self.dir)
        self.clock = Clock()
        self.bus = Bus()
        self.published: list[Change] = []
        self.bus.subscribe(self.published.append)
        self.life = Lifecycle(self.store, self.bus, self.clock)
        self.db = raw(self.dir)
        self.jobs: list[int] = []
        self.job_state: dict[int, str] = {}
        self.state: dict[tuple[int, int], str] = {}
        self.holder: dict[tuple[int, int], str | None] = {}
        self.lease: dict[tuple[int, int], float | None] = {}
        self.failures: dict[tuple[int, int], int] = {}   # failure reports accepted since the last retry
        self.files: dict[tuple[int, int], list[dict]] = {}

    def teardown(self):
        self.db.close()
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- model helpers ---------------------------------------------------------------------

    def follow(self, job):
        if self.job_state[job] in (CANCELLED, DONE):
            return
        counts: dict[str, int] = {}
        for k, s in self.state.items():
            if k[0] == job:
                counts[s] = counts.get(s, 0) + 1
        new = states.job_state_for(counts)
        self.job_state[job] = RENDERING if new == DONE else new

    def back_to_queue(self, key):
        self.state[key], self.holder[key], self.lease[key] = QUEUED, None, None
        self.follow(key[0])

    def n_events(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def refused(self, call):
        """A report the lifecycle must refuse: a Conflict, and nothing written or published."""
        before, published = self.n_events(), len(self.published)
        with pytest.raises(Conflict):
            call()
        assert self.n_events() == before
        assert len(self.published) == published

    def pick(self, server, i, own):
        """A frame ``server`` holds (if ``own`` and it holds any), else any frame."""
        pool = sorted(k for k in self.state if self.holder[k] == server and self.state[k] == RENDERING)
        if not own or not pool:
            pool = sorted(self.state)
        return pool[i % len(pool)]

    def holds(self, server, key) -> bool:
        return self.state[key] == RENDERING and self.holder[key] == server

    # --- rules -----------------------------------------------------------------------------

    @initialize(sizes=st.lists(st.integers(1, 3), min_size=1, max_size=2))
    def create(self, sizes):
        for n in sizes:
            job = new_job(self.store, frames=list(range(1, n + 1)), life=self.life)
            self.jobs.append(job)
            self.job_state[job] = QUEUED
            for f in range(1, n + 1):
                key = (job, f)
                self.state[key], self.holder[key], self.lease[key] = QUEUED, None, None
                self.failures[key] = 0

    @rule(server=st.sampled_from(SERVERS), only=st.none() | st.integers(0, 1))
    def claim(self, server, only):
        job_id = None if only is None else self.jobs[only % len(self.jobs)]
        lease = None if server == LOCAL else self.clock() + LEASE
        ready = sorted(k for k, s in self.state.items()
                       if s == QUEUED and self.job_state[k[0]] in (QUEUED, RENDERING)
                       and (job_id is None or k[0] == job_id))
        got = self.life.claim(server, job_id=job_id, lease_expires=lease)
        if not ready:
            assert got is None
            return
        assert got == ready[0]
        self.state[got], self.holder[got], self.lease[got] = RENDERING, server, lease
        self.follow(got[0])

    @rule(server=st.sampled_from(REMOTE), i=st.integers(0, 5), own=st.booleans())
    def renew(self, server, i, own):
        key = self.pick(server, i, own)
        expires = self.clock() + LEASE
        if not self.holds(server, key):
            self.refused(lambda: self.life.renew(*key, server, expires))
            return
        self.life.renew(*key, server, expires)
        self.lease[key] = expires

    @rule(seconds=st.floats(0.0, 2 * LEASE))
    def tick(self, seconds):
        self.clock.t += seconds

    @rule()
    def reap(self):
        now = self.clock()
        gone = sorted(k for k in self.state
                      if self.state[k] == RENDERING and self.lease[k] is not None and self.lease[k] < now)
        assert sorted((j, f) for j, f, _ in self.life.expire_leases()) == gone
        for k in gone:
            self.back_to_queue(k)   # a lease that ran out is no failed render: attempts stay

    @rule(server=st.sampled_from(SERVERS), i=st.integers(0, 5), own=st.booleans())
    def report_failure(self, server, i, own):
        key = self.pick(server, i, own)
        if not self.holds(server, key):
            self.refused(lambda: self.life.render_failed(*key, server, "Parse Error", MAX_ATTEMPTS))
            return
        got = self.life.render_failed(*key, server, "Parse Error", MAX_ATTEMPTS)
        if self.job_state[key[0]] == CANCELLED:
            assert got == QUEUED
            self.back_to_queue(key)
            return
        self.failures[key] += 1
        if self.failures[key] < MAX_ATTEMPTS:
            assert got == QUEUED
            self.back_to_queue(key)
        else:
            assert got == FAILED
            self.state[key], self.lease[key] = FAILED, None
            self.follow(key[0])

    @rule(server=st.sampled_from(SERVERS), i=st.integers(0, 5), own=st.booleans())
    def upload(self, server, i, own):
        key = self.pick(server, i, own)
        if not self.holds(server, key):
            self.refused(lambda: self.life.finish(*key, server, files_of(server, key)))
            return
        last = self.life.finish(*key, server, files_of(server, key))
        if self.job_state[key[0]] == CANCELLED:   # discarded
            assert last is False
            self.back_to_queue(key)
            return
        self.state[key], self.lease[key], self.files[key] = DONE, None, files_of(server, key)
        self.follow(key[0])
        assert last == all(s == DONE for k, s in self.state.items() if k[0] == key[0])

    @rule(i=st.integers(0, 5))
    def retry(self, i):
        failed = sorted(k for k, s in self.state.items() if s == FAILED)
        key = (failed or sorted(self.state))[i % len(failed or self.state)]
        if self.state[key] != FAILED or self.job_state[key[0]] == CANCELLED:
            before = self.n_events()
            with pytest.raises(Conflict):
                self.life.retry(*key, "ann")
            assert self.n_events() == before
            return
        self.life.retry(*key, "ann")
        self.failures[key] = 0
        self.back_to_queue(key)

    @precondition(lambda self: self.jobs)
    @rule(j=st.integers(0, 1), cancel=st.booleans())
    def job_op(self, j, cancel):
        job = self.jobs[j % len(self.jobs)]
        if cancel and self.job_state[job] not in (DONE, CANCELLED):
            self.life.cancel(job, "ann")
            self.job_state[job] = CANCELLED
        elif self.job_state[job] in (QUEUED, RENDERING) and all(
                s == DONE for k, s in self.state.items() if k[0] == job):
            self.life.job_done(job)   # what the server does once the result is rebundled
            self.job_state[job] = DONE

    # --- invariants, read from the database ------------------------------------------------

    def rows(self):
        return {(j, f): (s, srv, att, files, lease) for j, f, s, srv, att, files, lease in self.db.execute(
            "SELECT job_id, frame_id, state, server, attempts, files, lease_expires FROM frames")}

    @invariant()
    def nothing_lost(self):
        rows = self.rows()
        assert set(rows) == set(self.state)           # no frame vanished or appeared
        for key, (state, server, _, files, _) in rows.items():
            assert state in states.FRAME_STATES     # each in exactly one known state
            assert state == self.state[key], key
            if state == DONE:                       # done frames have their files recorded
                assert files == json.dumps(self.files[key], sort_keys=True), key
        for job in self.jobs:
            assert self.store.get_job(job).state == self.job_state[job]

    @invariant()
    def one_holder_at_a_time(self):
        for key, (state, server, _, _, lease) in self.rows().items():
            if state == RENDERING:
                assert server is not None and server == self.holder[key], key
                assert lease == self.lease[key], key
            elif state in (QUEUED, states.BLOCKED):
                assert server is None and lease is None, key
        # In the log, a frame is taken only from the queue: never from a holder.
        for (old, new) in self.db.execute("SELECT old, new FROM events WHERE frame_id IS NOT NULL AND new=?",
                                          (RENDERING,)):
            assert old == QUEUED

    @invariant()
    def only_the_holder_finishes_or_fails(self):
        """Every render's end in the log names the server its start named."""
        holder: dict[tuple[int, int], str] = {}
        for job, frame, old, new, reason in self.db.execute(
                "SELECT job_id, frame_id, old, new, reason FROM events WHERE frame_id IS NOT NULL ORDER BY id"):
            key = (job, frame)
            if new == RENDERING:
                holder[key] = reason.removeprefix("rendering on ")
                continue
            if old != RENDERING:
                continue
            who = holder.pop(key)
            if new == DONE:
                assert reason == f"rendered by {who}", (key, reason)
            elif new == FAILED:
                assert reason.endswith(f"(on {who})"), (key, reason)
            elif reason.startswith("attempt "):
                assert re.fullmatch(rf"attempt \d+ on {re.escape(who)} failed: .*; retrying", reason), (key, reason)

    @invariant()
    def attempts_are_failed_renders(self):
        """attempts == failure reports accepted since the last retry (the log agrees)."""
        counted: dict[tuple[int, int], int] = {k: 0 for k in self.state}
        for job, frame, old, new, reason in self.db.execute(
                "SELECT job_id, frame_id, old, new, reason FROM events WHERE frame_id IS NOT NULL ORDER BY id"):
            if new == FAILED or reason.startswith("attempt "):
                counted[(job, frame)] += 1
            elif reason.startswith("retried by "):
                counted[(job, frame)] = 0
        for key, (_, _, attempts, _, _) in self.rows().items():
            assert attempts == self.failures[key] == counted[key], key

    @invariant()
    def every_change_is_recorded_and_published_once(self):
        logged = [tuple(r) for r in self.db.execute("SELECT job_id, frame_id, old, new, reason FROM events ORDER BY id")]
        assert [(c.job_id, c.frame_id, c.old, c.new, c.reason) for c in self.published] == logged
        assert_consistent(self.db)


LifecycleMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
test_lifecycle_state_machine = LifecycleMachine.TestCase


# --- the cases issue 8 names, explicitly ----------------------------------------------------

@pytest.fixture
def life(tmp_path):
    store = Store(tmp_path / "data")
    yield Lifecycle(store, Bus(), Clock())
    store.close()


def test_a_renderer_whose_lease_ran_out_cannot_change_the_frame_another_now_holds(life):
    store, clock = life.store, life.clock
    job = new_job(store, frames=[1])
    beta, gamma = REMOTE
    assert life.claim(beta, lease_expires=clock() + LEASE) == (job, 1)
    clock.t += LEASE + 1
    assert life.expire_leases() == [(job, 1, beta)]
    assert life.claim(gamma, lease_expires=clock() + LEASE) == (job, 1)
    before = store.events(job)
    # beta comes back late with a failure report, a result and a renewal: each refused.
    with pytest.raises(Conflict, match=f"not leased to {beta}"):
        life.render_failed(job, 1, beta, "out of memory", MAX_ATTEMPTS)
    with pytest.raises(Conflict, match=f"not leased to {beta}"):
        life.render_failed(job, 1, beta, "out of memory", 1)
    with pytest.raises(Conflict, match=f"not leased to {beta}"):
        life.finish(job, 1, beta, files_of(beta, (job, 1)))
    with pytest.raises(Conflict, match=f"not leased to {beta}"):
        life.renew(job, 1, beta, clock() + LEASE)
    with pytest.raises(Conflict, match=f"not leased to {beta}"):
        life.release(job, 1, beta, "shut down")
    f = store.frame(job, 1)
    assert (f.state, f.server, f.attempts) == (RENDERING, gamma, 0)
    assert store.events(job) == before
    assert life.finish(job, 1, gamma, files_of(gamma, (job, 1))) is True
    assert store.frame(job, 1).files == files_of(gamma, (job, 1))


def test_three_lease_expiries_then_one_failure_do_not_fail_a_frame(life):
    store, clock = life.store, life.clock
    job = new_job(store, frames=[1])
    for server in (*REMOTE, REMOTE[0]):
        assert life.claim(server, lease_expires=clock() + LEASE) == (job, 1)
        clock.t += LEASE + 1
        assert life.expire_leases() == [(job, 1, server)]
        assert store.frame(job, 1).attempts == 0
    assert life.claim(LOCAL) == (job, 1)
    assert life.render_failed(job, 1, LOCAL, "Parse Error", MAX_ATTEMPTS) == QUEUED
    f = store.frame(job, 1)
    assert (f.state, f.attempts) == (QUEUED, 1)
    assert store.get_job(job).state == QUEUED
    # It takes MAX_ATTEMPTS failed renders to fail it.
    for n in range(2, MAX_ATTEMPTS + 1):
        life.claim(LOCAL)
        got = life.render_failed(job, 1, LOCAL, "Parse Error", MAX_ATTEMPTS)
        assert (got, store.frame(job, 1).attempts) == (FAILED if n == MAX_ATTEMPTS else QUEUED, n)


def test_a_refused_move_publishes_nothing(life):
    seen: list[Change] = []
    life.bus.subscribe(seen.append)
    job = new_job(store := life.store, frames=[1, 2])   # through its own Lifecycle: not seen here
    version = life.bus.version
    with pytest.raises(Conflict):
        life.finish(job, 1, LOCAL, [])
    assert (seen, life.bus.version) == ([], version)
    life.claim(LOCAL)
    assert [(c.frame_id, c.old, c.new) for c in seen] == [(1, QUEUED, RENDERING), (None, QUEUED, RENDERING)]
    assert life.bus.version == version + 1          # one transaction, one version
    assert store.frame(job, 1).state == RENDERING


def test_wait_for_change_wakes_on_a_publish():
    bus = Bus()
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(bus.wait_for_change(0, timeout=30)))
    t.start()
    bus.publish([Change(1, 1, QUEUED, RENDERING, "rendering on x")])
    t.join(30)
    assert got == [1]
    assert bus.wait_for_change(1, timeout=0.01) == 1   # nothing new: times out with the same version
    bus.publish([])                                     # an empty transaction is no change
    assert bus.version == 1


def test_a_failing_subscriber_does_not_stop_the_others():
    bus = Bus()
    seen: list[Change] = []

    def broken(change):
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    unsubscribe = bus.subscribe(seen.append)
    change = Change(1, None, QUEUED, RENDERING, "x")
    bus.publish([change])
    assert seen == [change]
    unsubscribe()
    bus.publish([change])
    assert seen == [change]
