"""The user's moves of the lifecycle: priority, pause and resume, requeue and retry. Part of
:class:`~distren.lifecycle.Lifecycle` (a mixin, in a file of its own to keep lifecycle.py under
400 lines): the same transactions, checks, recorded reasons and published changes."""

from __future__ import annotations

from collections.abc import Collection

from .bus import Change
from .errors import Conflict, DistrenError
from .states import CANCELLED, DONE, FAILED, PAUSED, QUEUED, RENDERING

MIN_PRIORITY, MAX_PRIORITY = -1000, 1000


def check_priority(priority: object) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise DistrenError(f"priority: a whole number from {MIN_PRIORITY} to {MAX_PRIORITY} (higher renders first)")


class Steering:
    # Uses Lifecycle's _tx, _job_to, _frame_to, _follow, _implied, _dep_target_is and store.

    def _same_state(self, t, job_id: int, reason: str) -> None:
        """A change to a job that keeps its state (its priority, its block-list): an event from
        and to that state, published like any other."""
        state = self.store.job_state(t.db, job_id)
        self.store.record_job_event(t.db, job_id, state, reason, t.now)
        t.changes.append(Change(job_id, None, state, state, reason))

    def pause(self, job_id: int, by: str) -> None:
        """No new frame of the job starts, here or on a peer (both claim only from live jobs);
        frames under way finish and are kept."""
        with self._tx() as t:
            state = self.store.job_state(t.db, job_id)
            if state == PAUSED:
                raise Conflict(f"job {job_id} is paused already; `distren resume` it")
            self._job_to(t, job_id, PAUSED, f"paused by {by}", old=state)

    def resume(self, job_id: int, by: str) -> None:
        with self._tx() as t:
            state = self.store.job_state(t.db, job_id)
            if state != PAUSED:
                raise Conflict(f"job {job_id} is {state}, not paused; nothing to resume")
            self._job_to(t, job_id, self._implied(t, job_id), f"resumed by {by}", old=state)

    def set_priority(self, job_id: int, priority: int, by: str) -> None:
        """Higher first: of the jobs with a frame ready, this server renders and leases the
        highest's first. Recorded as an event that keeps the job's state."""
        check_priority(priority)
        with self._tx() as t:
            state = self.store.job_state(t.db, job_id)
            if state == DONE:
                raise Conflict(f"job {job_id} is done; its priority no longer matters")
            old = self.store.set_priority(t.db, job_id, priority)
            if old == priority:
                return
            self._same_state(t, job_id, f"priority {old} -> {priority}, set by {by}")

    def requeue(self, job_id: int, frame_ids: Collection[int] | None, by: str) -> tuple[bool, list[int]]:
        """A user's second chance: the given failed frames (all of them if None) go back to the
        queue with their attempts starting again, and a cancelled job is live again. Returns
        whether the job was cancelled (its announcement is to be renewed) and the frames
        requeued."""
        with self._tx() as t:
            state = self.store.job_state(t.db, job_id)
            if state == DONE:
                raise Conflict(f"job {job_id} is done; there is nothing to requeue")
            frames = {f.frame_id: f for f in self.store.frames_in(t.db, job_id)}
            if frame_ids is None:
                wanted = sorted(i for i, f in frames.items() if f.state == FAILED)
            else:
                wanted = sorted(set(frame_ids))
                for i in wanted:
                    if i not in frames:
                        raise Conflict(f"job {job_id} has no frame {i}")
                    if frames[i].state == DONE:
                        raise Conflict(f"frame {i} of job {job_id} is done; there is nothing to requeue")
            if state != CANCELLED and not any(frames[i].state == FAILED for i in wanted):
                for i in wanted:
                    if stuck := self.store.stuck_deps(t.db, job_id, i):
                        raise Conflict(f"frame {i} of job {job_id} is blocked by {', '.join(stuck)}; retry that instead")
                raise Conflict(f"job {job_id} is {state} and has no failed frame to requeue"
                               + (f" among frames {', '.join(map(str, wanted))}" if frame_ids is not None else ""))
            reason = f"requeued by {by}"
            if state == CANCELLED:
                # Undo what cancelling told the frames that wait for this job's.
                for i, f in frames.items():
                    if f.state in (QUEUED, RENDERING):
                        self._dep_target_is(t, self.store.frame_url(job_id, i), "waiting", reason)
            requeued = [i for i in wanted if frames[i].state == FAILED]
            if requeued and self.store.clear_blocklist(t.db, job_id):  # as retry: maybe the job's own fault
                self._same_state(t, job_id, f"block-list cleared: requeued by {by}")
            for i in requeued:
                stuck = self.store.stuck_deps(t.db, job_id, i)
                if stuck:
                    raise Conflict(f"frame {i} of job {job_id} is blocked by {', '.join(stuck)}; retry that instead")
                self._frame_to(t, job_id, i, QUEUED, f"retried by {by}", expect=FAILED, attempts=0, server=None)
                self._dep_target_is(t, self.store.frame_url(job_id, i), "waiting", f"retried by {by}")
            if state == CANCELLED:
                self._job_to(t, job_id, self._implied(t, job_id), reason, old=state)
            else:
                self._follow(t, job_id, f"{len(requeued)} frame(s) {reason}")
            return state == CANCELLED, requeued

    def retry(self, job_id: int, frame_id: int, by: str) -> None:
        """A user's second chance for a failed frame: its attempts start again, and the job's
        block-list is cleared (its renderers may have failed for the job's own fault)."""
        with self._tx() as t:
            if self.store.job_state(t.db, job_id) == CANCELLED:
                raise Conflict(f"job {job_id} is cancelled; `distren retry` the job to requeue it")
            stuck = self.store.stuck_deps(t.db, job_id, frame_id)
            if stuck:
                raise Conflict(f"frame {frame_id} of job {job_id} is blocked by {', '.join(stuck)}; retry that instead")
            self._frame_to(t, job_id, frame_id, QUEUED, f"retried by {by}", expect=FAILED, attempts=0, server=None)
            if self.store.clear_blocklist(t.db, job_id):  # the failures may have been the job's own
                state = self.store.job_state(t.db, job_id)
                self.store.add_event(t.db, t.now, job_id, None, state, state, f"block-list cleared: retried by {by}")
            self._dep_target_is(t, self.store.frame_url(job_id, frame_id), "waiting", f"retried by {by}")
            self._follow(t, job_id, f"frame {frame_id} retried by {by}")
