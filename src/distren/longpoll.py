"""Lease requests that wait for work (the origin's long poll).

A renderer with an idle slot asks for a frame with ``wait=S``: when none is ready, the origin
holds the request open until a frame may have become ready, or ``S`` seconds pass, instead of
answering 204 at once and being asked again a second later. A thousand idle renderers then
cost the origin one request each per wait, not one each per second.

A waiter holds no thread: it is a future on the event loop. The bus publishes from whatever
thread committed the change; :meth:`Waiters.on_change` bumps a generation and, once per burst of
changes, hands the loop one call that settles the futures concerned. What wakes whom:

* a frame becoming ``queued`` (a new job, a retry, a lease that ran out): every waiter, since
  any of them may now get a frame of some job of ours (a woken renderer that gets none is
  answered 204 and asks its origin's jobs again);
* a job ending (done, failed, cancelled, deleted): that job's waiters (they are answered its end).

A frame going to ``rendering`` (a lease, the busiest change of all) wakes nobody: otherwise
every grant would make every waiter ask again.

The generation closes the race between a grant that found nothing (in a worker thread) and the
wait that follows it on the loop: a change in between is seen, and the waiter does not sleep.
"""

from __future__ import annotations

import asyncio
import threading

from .bus import Change
from .states import QUEUED, RENDERING

MAX_WAIT = 60.0  # seconds an origin holds a lease request at most, whatever the renderer asks


class Waiters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[asyncio.Future, int] = {}  # future -> the job it waits on (loop only)
        self._wake_all = False  # a wake of everyone is on its way to the loop
        self._wake_jobs: set[int] = set()
        self.generation = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def on_change(self, change: Change) -> None:
        """A bus subscriber (any thread)."""
        if change.new == QUEUED:
            job = None
        elif change.frame_id is None and change.new != RENDERING:
            job = change.job_id
        else:
            return
        with self._lock:
            self.generation += 1
            loop = self._loop
            if loop is None:  # nobody has ever waited
                return
            call = not self._wake_all and not self._wake_jobs
            if job is None:
                self._wake_all = True
            else:
                self._wake_jobs.add(job)
        if call:
            try:
                loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed: the server is stopping
                pass

    def _wake(self) -> None:
        with self._lock:
            everyone, jobs = self._wake_all, self._wake_jobs
            self._wake_all, self._wake_jobs = False, set()
        for fut, job in list(self._waiting.items()):
            if (everyone or job in jobs) and not fut.done():
                fut.set_result(None)

    async def wait(self, job_id: int, generation: int, timeout: float) -> bool:
        """Wait (on the event loop) until a change since ``generation`` may concern a lease of
        ``job_id``, or ``timeout`` seconds pass. True if woken, False if the time ran out."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            self._loop = loop
            if self.generation != generation:
                return True
            self._waiting[fut] = job_id
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._waiting.pop(fut, None)
