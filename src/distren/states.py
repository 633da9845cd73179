"""The frame and job state machine.

Every change of a frame's or a job's state is made by :mod:`distren.lifecycle`, checked against
these tables and recorded by the store with a human-readable reason, so "why is my frame queued again?"
always has an answer in ``distren status`` and the event log.

Frames: queued -> rendering -> done
                  rendering -> queued  (a retry, a lost lease, a restart, a cancelled render)
                  rendering -> failed  (out of attempts; the reason is the renderer's message)
                  failed    -> queued  (retried by a user)
                  done      -> queued  (its renderer was caught returning wrong pixels: rendered again)
        queued -> blocked -> queued        (a frame it depends on failed / was retried)
Jobs:   queued -> rendering -> done        (jobs follow their frames, see job_state_for; done
                                           only once the result is rebundled)
        rendering -> queued                (its frames went back to the queue: a restart)
        queued -> done                     (every frame was done before a restart)
        queued -> failed -> queued         (a frame ran out of attempts; a user retried it)
        rendering -> failed -> rendering
        queued -> cancelled, rendering -> cancelled, failed -> cancelled  (the user's call)
        queued -> paused, rendering -> paused, failed -> paused  (the user's call: frames under way
                                           finish, no new one starts, here or on a peer)
        paused -> queued, paused -> rendering, paused -> failed  (resumed: the state its frames imply)
        paused -> done, paused -> cancelled  (its last frames finished while paused; the user's call)
        cancelled -> queued, cancelled -> rendering, cancelled -> failed  (requeued by the user)
The tests read these arrows, so this picture and the tables below cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import Conflict

QUEUED, RENDERING, DONE, FAILED, CANCELLED = "queued", "rendering", "done", "failed", "cancelled"
BLOCKED, PAUSED = "blocked", "paused"

FRAME_STATES = (QUEUED, RENDERING, DONE, FAILED, BLOCKED)
JOB_STATES = (QUEUED, RENDERING, DONE, FAILED, CANCELLED, PAUSED)
FINAL_JOB_STATES = (DONE, FAILED, CANCELLED)

FRAME_TRANSITIONS: Mapping[str, frozenset[str]] = {
    QUEUED: frozenset({RENDERING, BLOCKED}),
    RENDERING: frozenset({DONE, QUEUED, FAILED}),
    FAILED: frozenset({QUEUED}),
    BLOCKED: frozenset({QUEUED}),
    DONE: frozenset({QUEUED}),
}

JOB_TRANSITIONS: Mapping[str, frozenset[str]] = {
    QUEUED: frozenset({RENDERING, DONE, FAILED, CANCELLED, PAUSED}),
    RENDERING: frozenset({QUEUED, DONE, FAILED, CANCELLED, PAUSED}),
    FAILED: frozenset({QUEUED, RENDERING, CANCELLED, PAUSED}),
    PAUSED: frozenset({QUEUED, RENDERING, FAILED, DONE, CANCELLED}),
    DONE: frozenset(),
    CANCELLED: frozenset({QUEUED, RENDERING, FAILED}),
}


def check_frame(old: str, new: str, what: str = "frame") -> None:
    if new not in FRAME_TRANSITIONS.get(old, ()):
        raise Conflict(f"{what} is {old}; it cannot become {new}")


def check_job(old: str, new: str, what: str = "job") -> None:
    if new not in JOB_TRANSITIONS.get(old, ()):
        raise Conflict(f"{what} is {old}; it cannot become {new}")


def job_state_for(counts: Mapping[str, int]) -> str:
    """A (not cancelled) job's state from how many of its frames are in each state."""
    total = sum(counts.values())
    done = counts.get(DONE, 0)
    if total and done == total:
        return DONE
    if counts.get(RENDERING, 0) or (done and counts.get(QUEUED, 0)):
        return RENDERING
    stuck = counts.get(FAILED, 0) + counts.get(BLOCKED, 0)
    if stuck and not counts.get(QUEUED, 0):
        return FAILED
    if stuck:
        return RENDERING
    return QUEUED
