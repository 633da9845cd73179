"""The in-process event bus: every committed state change, published once, in commit order.

:mod:`distren.lifecycle` publishes after each transaction commits (never before: a subscriber
must never see a change that a rollback then takes back). Subscribers (slots waiting for work,
long polls, a dashboard) either register a callback or wait on the version counter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("distren.bus")


@dataclass(frozen=True)
class Change:
    """One frame's (``frame_id`` set) or one job's (``frame_id`` None) move, with its reason.
    ``new`` is ``"deleted"`` when a job and its frames are forgotten."""

    job_id: int
    frame_id: int | None
    old: str
    new: str
    reason: str


class Bus:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._subscribers: list[Callable[[Change], None]] = []
        self.version = 0

    def subscribe(self, fn: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``fn`` with every change from now on; returns the function that unsubscribes."""
        with self._cond:
            self._subscribers.append(fn)

        def unsubscribe() -> None:
            with self._cond:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)

        return unsubscribe

    def publish(self, changes: list[Change]) -> None:
        """One transaction's changes: one new version, then each change to each subscriber."""
        if not changes:
            return
        with self._cond:
            self.version += 1
            subscribers = list(self._subscribers)
            self._cond.notify_all()
        for change in changes:
            for fn in subscribers:
                try:
                    fn(change)
                except Exception:  # a subscriber's bug must not undo or block a committed change
                    log.exception("bus subscriber %r failed on %r", fn, change)

    def wait_for_change(self, after: int, timeout: float) -> int:
        """Block until the version differs from ``after`` (or ``timeout`` seconds pass); return
        the version then. A long poll passes the version it last saw."""
        with self._cond:
            self._cond.wait_for(lambda: self.version != after, timeout=timeout)
            return self.version
