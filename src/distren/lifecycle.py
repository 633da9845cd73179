"""The one owner of every frame and job state change.

Each transition below is one SQLite transaction that reads the frame (or job) as it is, checks
the expected state *and*, for reports from a renderer, that the reporting server still holds the
frame, makes the move through the store's small functions (which record the reason in the
``events`` table), and after COMMIT publishes the change on the :class:`~distren.bus.Bus`.
Nothing else writes a frame's or a job's state; :mod:`distren.states` is the table of allowed
moves.

Who holds a frame: the server named in ``frames.server`` while it is ``rendering``. A report
from any other server (a renderer whose lease ran out and whose frame was given to another) is
a :class:`~distren.errors.Conflict` and changes nothing.

Attempts count renders that failed. A lease that runs out, a restart, a shutdown or a cancelled
job puts the frame back in the queue without using up an attempt: those say nothing about
whether the frame can be rendered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import states
from .bus import Bus, Change
from .errors import Conflict, Replayed
from .states import BLOCKED, CANCELLED, DONE, FAILED, PAUSED, QUEUED, RENDERING
from .steering import Steering, check_priority
from .store import FrameRow, Store


@dataclass
class _Tx:
    db: object
    now: float
    changes: list[Change] = field(default_factory=list)


class Lifecycle(Steering):
    def __init__(self, store: Store, bus: Bus | None = None, clock: Callable[[], float] = time.time):
        self.store = store
        self.bus = bus or Bus()
        self.clock = clock

    @contextmanager
    def _tx(self) -> Iterator[_Tx]:
        with self.store.tx() as db:
            t = _Tx(db, self.clock())
            yield t
        self.bus.publish(t.changes)  # only once committed: a rollback publishes nothing

    # --- the moves, inside a transaction ----------------------------------------------------

    def _frame_to(self, t: _Tx, job_id: int, frame_id: int, new: str, reason: str, *,
                  expect: str | None = None, holder: str | None = None, **cols) -> FrameRow:
        """Move a frame to ``new``. ``expect``: only from that state (where the move means
        something narrower than the table allows, e.g. a retry is only of a failed frame);
        ``holder``: only if that server holds it."""
        row = self.store.frame_in(t.db, job_id, frame_id)
        what = f"frame {frame_id} of job {job_id}"
        if expect is not None and row.state != expect:
            raise Conflict(f"{what} is {row.state}, not {expect}")
        states.check_frame(row.state, new, what)
        if holder is not None and row.server != holder:
            raise Conflict(f"{what} is not leased to {holder} (it is {row.state} on {row.server})")
        self.store.set_frame(t.db, job_id, frame_id, row.state, new, reason, t.now, **cols)
        t.changes.append(Change(job_id, frame_id, row.state, new, reason))
        return row

    def _job_to(self, t: _Tx, job_id: int, new: str, reason: str, old: str | None = None) -> None:
        old = old or self.store.job_state(t.db, job_id)
        if old == new:
            return
        states.check_job(old, new, f"job {job_id}")
        self.store.set_job(t.db, job_id, old, new, reason, t.now)
        t.changes.append(Change(job_id, None, old, new, reason))

    def _follow(self, t: _Tx, job_id: int, reason: str) -> None:
        """Move a job to the state its frames imply (never out of cancelled or paused, which
        only a user ends; never to done: done waits for the rebundled result, see
        :meth:`job_done`)."""
        state = self.store.job_state(t.db, job_id)
        if state in (CANCELLED, DONE, PAUSED):
            return
        self._job_to(t, job_id, self._implied(t, job_id), reason, old=state)

    def _implied(self, t: _Tx, job_id: int) -> str:
        new = states.job_state_for(self.store.frame_states_in(t.db, job_id))
        return RENDERING if new == DONE else new

    def _dep_target_is(self, t: _Tx, dep: str, target_state: str, reason: str) -> None:
        """Record what became of ``dep`` and carry it through to the frames waiting for it:
        a stuck target blocks them (and, in turn, their own dependents); a target that is no
        longer stuck releases them when nothing else holds them."""
        todo = [(dep, target_state, reason)]
        touched: set[int] = set()
        while todo:
            url, tstate, why = todo.pop()
            for job_id, frame_id, fstate in self.store.set_dep_target(t.db, url, tstate):
                mine = self.store.frame_url(job_id, frame_id)
                if tstate == "stuck" and fstate == QUEUED:
                    self._frame_to(t, job_id, frame_id, BLOCKED, f"blocked: {why}")
                    todo.append((mine, "stuck", f"{mine} is blocked"))
                    touched.add(job_id)
                elif tstate != "stuck" and fstate == BLOCKED and not self.store.stuck_deps(t.db, job_id, frame_id):
                    self._frame_to(t, job_id, frame_id, QUEUED, f"unblocked: {url} {why or tstate}")
                    todo.append((mine, "waiting", ""))
                    touched.add(job_id)
        for job_id in touched:
            self._follow(t, job_id, "dependencies changed")

    def _requeue_all(self, t: _Tx, rows, reason: Callable[[str], str], job_reason: Callable[[int], str]):
        for job_id, frame_id, server in rows:
            self._frame_to(t, job_id, frame_id, QUEUED, reason(server), server=None, lease_expires=None)
            self._follow(t, job_id, job_reason(frame_id))

    # --- jobs -------------------------------------------------------------------------------

    def create_job(self, submitter: str, jtype: str, frame_ids: list[int],
                   make_jobfile: Callable[[int], bytes], staged: Path, upload_key: str | None,
                   make_deps: Callable[[int], list[tuple[int, str]]] = lambda job_id: [],
                   priority: int = 0) -> int:
        """A new job, its frames queued (or blocked, if what they wait for here is stuck)."""
        check_priority(priority)
        with self._tx() as t:
            reason = f"submitted by {submitter}" + (f" at priority {priority}" if priority else "")
            job_id, new = self.store.insert_job(t.db, submitter, jtype, frame_ids, make_jobfile, staged,
                                                upload_key, reason, t.now, priority)
            if not new:
                return job_id
            t.changes.append(Change(job_id, None, "", QUEUED, reason))
            deps = make_deps(job_id)
            self.store.insert_deps(t.db, job_id, deps)
            for _, dep in deps:  # targets on this server may be finished (or stuck) already
                target = self.store.local_target(dep)
                if target is None or target[0] == job_id:
                    continue
                found = self.store.frame_and_job_state(t.db, *target)
                if found is None:
                    continue
                fstate, jstate = found
                if fstate == DONE:
                    self._dep_target_is(t, dep, "done", "")
                elif fstate in (FAILED, BLOCKED) or jstate == CANCELLED:
                    self._dep_target_is(t, dep, "stuck", f"{dep} is {fstate if jstate != CANCELLED else 'cancelled'}")
        return job_id

    def cancel(self, job_id: int, by: str) -> None:
        """Frames under way stay rendering until their renderer reports (see :meth:`finish`)."""
        with self._tx() as t:
            state = self.store.job_state(t.db, job_id)
            if state in (DONE, CANCELLED):
                raise Conflict(f"job {job_id} is already {state}; nothing to cancel")
            self._job_to(t, job_id, CANCELLED, f"cancelled by {by}", old=state)
            for frame_id in self.store.unfinished_frames(t.db, job_id):
                url = self.store.frame_url(job_id, frame_id)
                self._dep_target_is(t, url, "stuck", f"{url}: its job was cancelled")

    def job_done(self, job_id: int) -> bool:
        """The result is rebundled: the job is done; False if a frame was taken back (:meth:`distrust`)."""
        with self._tx() as t:
            state = self.store.job_state(t.db, job_id)
            if state not in (DONE, CANCELLED) and self.store.unfinished_frames(t.db, job_id):
                return False
            self._job_to(t, job_id, DONE, "all frames rendered and rebundled", old=state)
            return True

    def delete(self, job_id: int, by: str) -> None:
        """Forget a finished job. Its id stays used: AUTOINCREMENT never hands it out again."""
        with self._tx() as t:
            state = self.store.job_state(t.db, job_id)
            if state not in states.FINAL_JOB_STATES:
                raise Conflict(f"job {job_id} is {state}; cancel it before deleting it")
            self.store.delete_job_rows(t.db, job_id)
            t.changes.append(Change(job_id, None, state, "deleted", f"deleted by {by}"))

    # --- frames -----------------------------------------------------------------------------

    def claim(self, server: str, job_id: int | None = None, lease_expires: float | None = None,
              nonce: tuple[str, float] | None = None, skip: Collection[int] = (),
              types: Collection[str] | None = None) -> tuple[int, int] | None:
        """Take the oldest ready frame (of ``job_id`` if given, not one in ``skip``; of a job of
        one of ``types`` if given) for ``server``: a local slot (no lease) or another server
        (leased until ``lease_expires``; :meth:`lease` is the origin's, with its limits).
        ``nonce`` (the request's, with its expiry) is recorded in the same transaction."""
        with self._tx() as t:
            if nonce is not None and not self.store.record_nonce(t.db, *nonce):
                raise Replayed("replayed request (nonce already used)")
            return self._claim(t, server, job_id, skip, types, lease_expires=lease_expires)

    def _claim(self, t: _Tx, server: str, job_id: int | None, skip: Collection[int],
               types: Collection[str] | None = None, **cols) -> tuple[int, int] | None:
        found = self.store.next_queued(t.db, job_id, skip, types)
        if found is None:
            return None
        job_id, frame_id, job_state = found
        # The hot path of every lease: the frame was selected as queued, so queued ->
        # rendering is the move; one UPDATE, one event, and the job only when it changes.
        reason = f"rendering on {server}"
        self.store.set_frame(t.db, job_id, frame_id, QUEUED, RENDERING, reason, t.now,
                             server=server, started=t.now, **cols)
        t.changes.append(Change(job_id, frame_id, QUEUED, RENDERING, reason))
        if job_state == QUEUED:
            self._job_to(t, job_id, RENDERING, f"frame {frame_id} started {reason}", old=QUEUED)
        return job_id, frame_id

    def lease(self, server: str, job_id: int, expires: float, nonce: tuple[str, float] | None = None,
              skip: Collection[int] = (), slots: int = 1, request: str | None = None) -> tuple[int, int] | None:
        """Lease a ready frame of ``job_id`` (not one in ``skip``) to another ``server`` until
        ``expires``, in one transaction with the request's ``nonce``. ``request``: the
        renderer's id for this request; asked again (its answer was lost), the frame it got is
        leased again, nothing new. A server holds at most ``slots`` leases of this server's
        jobs, gets none of a job it is block-listed for, and gets frames it failed or let run
        out only when nothing else is ready."""
        with self._tx() as t:
            if nonce is not None and not self.store.record_nonce(t.db, *nonce):
                raise Replayed("replayed request (nonce already used)")
            if request is not None:
                again = self.store.leased_for_request(t.db, job_id, server, request)
                if again is not None:
                    self.store.set_lease(t.db, job_id, again, expires)
                    return job_id, again
            blocked = self.store.blocked_reason(t.db, job_id, server)
            if blocked is not None:
                raise Conflict(f"{server} is block-listed for job {job_id}: {blocked}")
            held = self.store.leases_held(t.db, server)
            if held >= slots:
                raise Conflict(f"{server} holds {held} lease(s) here already, as many as its {slots} slot(s); "
                               "deliver or give one back first")
            cols = {"lease_expires": expires, "lease_request": request}
            failed = self.store.failed_frames(t.db, job_id, server)
            got = self._claim(t, server, job_id, [*skip, *failed], **cols) if failed else None
            return got or self._claim(t, server, job_id, skip, **cols)

    def renew(self, job_id: int, frame_id: int, server: str, expires: float,
              frame_timeout: float = float("inf"), slots: int = 1) -> float:
        """Extend ``server``'s lease to ``expires``, never past ``frame_timeout`` seconds from the
        frame's start. A lease that ran out on a frame nobody took since is given back (its
        render may still be useful), within the server's slots and unless it is block-listed.
        Returns the expiry granted."""
        with self._tx() as t:
            row = self.store.frame_in(t.db, job_id, frame_id)
            what = f"frame {frame_id} of job {job_id}"
            if row.state == QUEUED and self.store.ran_out_on(t.db, job_id, frame_id, server):
                if self.store.blocked_reason(t.db, job_id, server) is not None \
                        or self.store.leases_held(t.db, server) >= slots:
                    raise Conflict(f"{what} is not leased to {server} (its lease ran out)")
                self._frame_to(t, job_id, frame_id, RENDERING, f"rendering on {server} again: it renewed "
                               "its lease after it ran out, and nobody had taken the frame", expect=QUEUED,
                               server=server)
            elif row.state != RENDERING or row.server != server:
                raise Conflict(f"{what} is not leased to {server}")
            deadline = (row.started or t.now) + frame_timeout
            if t.now >= deadline:
                raise Conflict(f"{what} has been leased to {server} for longer than the frame timeout "
                               f"({frame_timeout:g} s); the lease is not renewed")
            expires = min(expires, deadline)
            self.store.set_lease(t.db, job_id, frame_id, expires)
            return expires

    def finish(self, job_id: int, frame_id: int, server: str, files: list[dict]) -> bool:
        """``server``, which holds the frame, rendered it. True when it was the job's last frame.
        For a job cancelled meanwhile the render is discarded and the frame goes back. A late
        result (the lease ran out, the frame is queued and nobody took it) is taken too, and
        the lease that ran out no longer counts against its renderer."""
        with self._tx() as t:
            row = self.store.frame_in(t.db, job_id, frame_id)
            if row.state == QUEUED and self.store.ran_out_on(t.db, job_id, frame_id, server):
                self._frame_to(t, job_id, frame_id, RENDERING, f"late result from {server}", expect=QUEUED,
                               server=server)
                self.store.forgive_expiry(t.db, job_id, frame_id, server)
            if self.store.job_state(t.db, job_id) == CANCELLED:
                self._frame_to(t, job_id, frame_id, QUEUED, "job cancelled; the render was discarded",
                               expect=RENDERING, holder=server, server=None, lease_expires=None)
                return False
            self._frame_to(t, job_id, frame_id, DONE, f"rendered by {server}", holder=server,
                           files=files, finished=t.now, lease_expires=None)
            self._dep_target_is(t, self.store.frame_url(job_id, frame_id), "done", "done")
            self._follow(t, job_id, f"frame {frame_id} done")
            return set(self.store.frame_states_in(t.db, job_id)) == {DONE}

    def render_failed(self, job_id: int, frame_id: int, server: str, reason: str, max_attempts: int,
                      final: bool = False, blocklist_threshold: int | None = None) -> str:
        """``server``, which holds the frame, could not render it: retry it, or, after
        ``max_attempts`` failed renders (or at once if ``final``), fail it. Returns the state
        the frame is in now. ``blocklist_threshold``: ``server`` is another server, block-listed
        for the job once it has failed or let run out that many of its frames."""
        with self._tx() as t:
            cancelled = self.store.job_state(t.db, job_id) == CANCELLED
            state = self._render_failed(t, job_id, frame_id, server, reason, max_attempts, final)
            if blocklist_threshold is not None and not cancelled:
                self._count_failure(t, job_id, frame_id, server, "failed", blocklist_threshold)
            return state

    def _count_failure(self, t: _Tx, job_id: int, frame_id: int, server: str, why: str, threshold: int) -> None:
        n = self.store.record_lease_failure(t.db, job_id, frame_id, server, why, t.now)
        if n < threshold:
            return
        reason = (f"{server} block-listed for this job: it failed or let run out {n} of its frames "
                  f"(the threshold is {threshold}); it gets none of them again")
        state = self.store.job_state(t.db, job_id)
        if self.store.block(t.db, job_id, server, reason, t.now):
            self.store.add_event(t.db, t.now, job_id, None, state, state, reason)
            t.changes.append(Change(job_id, None, state, state, reason))

    def _render_failed(self, t: _Tx, job_id: int, frame_id: int, server: str, reason: str, max_attempts: int,
                       final: bool) -> str:
        row = self.store.frame_in(t.db, job_id, frame_id)
        if row.state != RENDERING:  # the table allows failed from rendering only
            states.check_frame(row.state, FAILED, f"frame {frame_id} of job {job_id}")
        if self.store.job_state(t.db, job_id) == CANCELLED:
            self._frame_to(t, job_id, frame_id, QUEUED, "job cancelled while rendering",
                           expect=RENDERING, holder=server, server=None, lease_expires=None)
            return QUEUED
        n = row.attempts + 1
        if n < max_attempts and not final:
            why = f"attempt {n} on {server} failed: {reason}; retrying"
            self._frame_to(t, job_id, frame_id, QUEUED, why, expect=RENDERING, holder=server,
                           attempts=n, server=None, lease_expires=None)
            self._follow(t, job_id, f"frame {frame_id}: {why}")
            return QUEUED
        why = f"{reason} (on {server})"
        self._frame_to(t, job_id, frame_id, FAILED, why, holder=server, attempts=n, finished=t.now,
                       lease_expires=None)
        url = self.store.frame_url(job_id, frame_id)
        self._dep_target_is(t, url, "stuck", f"{url} failed: {why}")
        self._follow(t, job_id, f"frame {frame_id} failed: {why}")
        return FAILED

    def release(self, job_id: int, frame_id: int, server: str, reason: str) -> None:
        """``server`` gives a frame it holds back unrendered (it shut down): no attempt used."""
        with self._tx() as t:
            self._frame_to(t, job_id, frame_id, QUEUED, reason, expect=RENDERING, holder=server,
                           server=None, lease_expires=None)
            self._follow(t, job_id, f"frame {frame_id}: {reason}")

    def dependency(self, dep: str, target_state: str, reason: str) -> None:
        """What another server says of a frame that frames here wait for."""
        with self._tx() as t:
            self._dep_target_is(t, dep, target_state, reason)

    def distrust(self, name: str, server: str, reason: str, requeue_reason: str) -> list[tuple[int, int]]:
        """Wrong pixels from ``server`` (``name``): in one transaction, distrust it and requeue the frames
        of jobs under way it holds or rendered, and those made from them. Returns the frames requeued."""
        with self._tx() as t:
            self.store.set_untrusted(t.db, name, reason, t.now)
            todo = [(j, f, s, requeue_reason) for j, f, s in self.store.frames_held_by(t.db, server, (RENDERING, DONE))]
            requeued: list[tuple[int, int]] = []
            for job_id, frame_id, state, why in todo:  # todo grows: the frames made from those requeued
                if (job_id, frame_id) not in requeued:
                    self._frame_to(t, job_id, frame_id, QUEUED, why, server=None, lease_expires=None, files=[],
                                   finished=None)
                    requeued.append((job_id, frame_id))
                    url = self.store.frame_url(job_id, frame_id)
                    todo += [(j, f, s, f"re-rendered: it was made from {url}, which came from {name}")
                             for j, f, s in (self.store.made_from(t.db, url) if state == DONE else ())]
            for job_id in sorted({j for j, _ in requeued}):
                self._follow(t, job_id, requeue_reason)
        return requeued

    # --- leases and restarts ----------------------------------------------------------------

    def expire_leases(self, now: float | None = None, blocklist_threshold: int | None = None
                      ) -> list[tuple[int, int, str]]:
        """Leases that ran out: the frame is ready again for any server. No attempt is used:
        the renderer may simply have gone away. Each counts against its renderer towards the
        ``blocklist_threshold`` of the job."""
        with self._tx() as t:
            rows = self.store.rendering_frames(t.db, lease_before=t.now if now is None else now)
            self._requeue_all(t, rows, lambda s: f"the lease of {s} ran out before it delivered the frame",
                              lambda f: f"frame {f} lease ran out")
            if blocklist_threshold is not None:
                for job_id, frame_id, server in rows:
                    self._count_failure(t, job_id, frame_id, server, "expired", blocklist_threshold)
        return rows

    def extend_leases(self, until: float) -> None:
        """After this server was down, renderers could not renew: give them time to."""
        with self._tx() as t:
            self.store.extend_leases(t.db, until)

    def recover(self, server: str) -> list[tuple[int, int]]:
        """At start: frames this server was rendering when it died go back to the queue."""
        with self._tx() as t:
            rows = self.store.rendering_frames(t.db, server=server)
            self._requeue_all(t, rows, lambda s: f"{s} restarted while rendering this frame",
                              lambda f: f"frame {f} requeued after restart")
        return [(j, f) for j, f, _ in rows]
