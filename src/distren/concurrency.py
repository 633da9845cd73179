"""How many renders run at once: as many as keep every core busy, within memory and a cap.

A light frame's POV-Ray spends most of its life asleep (its start-up and its frontend poll in
50 ms steps: about 0.8 s of a 0.9 s frame at 32x24), so one render per core leaves the machine
mostly idle, and a fixed larger number overloads it with heavy frames. The :class:`Governor`
keeps a *target* number of renders: every :data:`WINDOW` in which slots wait for it, it reads
the machine's idle CPU (``/proc/stat``) and free memory (``/proc/meminfo``'s MemAvailable) and
raises the target by one for every :data:`IDLE_CORES` cores that stayed idle while memory allows,
lowers it (never below one render per core) when no core was idle, and drops it to one render
when memory runs short. ``--slots N`` fixes the number instead.

The machine is read, not this server's renders, so other work on it (another server, a user's
compile) holds renders back too, and a render that idles leaves room for another.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

WINDOW = 0.05  # seconds of CPU use read before the target moves by one
IDLE_CORES = 0.5  # idle cores over a window that let one more render start
BUSY_CORES = 0.1  # idle cores below which the target falls (to one render per core at least)
MIN_FREE_MEMORY = 1 << 30  # MemAvailable below which no render is added, and at half of it renders are shed
CAP_PER_CORE = 8  # renders at most, per core, by default


def cpu_times() -> tuple[float, float]:
    """(idle, total) jiffies of the whole machine since boot; iowait counts as idle."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


def memory_available() -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return MIN_FREE_MEMORY  # an old kernel: memory never holds renders back


class Governor:
    """Permits to render: a slot takes one before it looks for work, gives it back when its
    render ends (or it found none), and says when it has work (:meth:`busy`).

    ``cap``: renders at most; ``adaptive``: False runs exactly ``cap`` (``--slots N``);
    ``cpus``, ``cpu`` and ``memory``: the machine, seams for tests."""

    def __init__(self, cap: int, adaptive: bool = True, cpus: int | None = None,
                 cpu: Callable[[], tuple[float, float]] = cpu_times,
                 memory: Callable[[], int] = memory_available, window: float = WINDOW):
        self.cap = cap
        self.adaptive = adaptive
        self.cpus = max(1, cpus or os.cpu_count() or 1)
        self._cpu = cpu
        self._memory = memory
        self._window = window
        self._floor = min(cap, self.cpus)
        self.target = self._floor if adaptive else cap
        self.running = 0  # permits out
        self.rendering = 0  # permits whose slot found work
        self._cond = threading.Condition()
        self._sample: tuple[float, float, float] | None = None  # (time, idle, total) at the window's start
        self._timing = False  # a waiter wakes every window to read the machine

    def acquire(self, stop: threading.Event, patience: float = 1.0) -> bool:
        """Wait (at most ``patience`` s) for a permit; False if none came or ``stop`` is set."""
        deadline = time.monotonic() + patience
        with self._cond:
            while not stop.is_set():
                if self.adaptive and self.running > 0:
                    self._adjust()
                if self.running < self.target:
                    self.running += 1
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # One waiter reads the machine every window; the others sleep until a permit
                # is given back or the target moves.
                timing = self.adaptive and not self._timing
                self._timing = self._timing or timing
                try:
                    self._cond.wait(min(left, self._window) if timing else left)
                finally:
                    if timing:
                        self._timing = False
        return False

    def busy(self) -> None:
        """The slot holding a permit found work and renders it."""
        with self._cond:
            self.rendering += 1

    def release(self, rendered: bool) -> None:
        with self._cond:
            self.running -= 1
            if rendered:
                self.rendering -= 1
            self._cond.notify()

    def interrupt(self) -> None:
        """Wake every slot waiting for a permit (the server stops)."""
        with self._cond:
            self._cond.notify_all()

    def capacity(self) -> int:
        """The renders this server can run now: what it states to origins in lease requests."""
        with self._cond:
            return self.target

    def threads(self) -> int:
        """Threads for a render starting now: the cores the other renders leave (one at least).
        POV-Ray's pixels do not depend on its thread count."""
        with self._cond:
            return max(1, self.cpus // max(1, self.rendering))

    def _adjust(self) -> None:
        """Called with the lock held, only by slots waiting for a permit (an idle server reads
        nothing): memory at once, before any render beyond the first starts; the CPU once a
        window has passed, moving the target by one."""
        free = self._memory()
        if free < MIN_FREE_MEMORY // 2:
            self.target = 1
            return
        if free < MIN_FREE_MEMORY:
            self.target = min(self.target, self._floor)
            return
        now = time.monotonic()
        if self._sample is None:
            self._sample = (now, *self._cpu())
            return
        if now - self._sample[0] < self._window:
            return
        idle, total = self._cpu()
        t0, idle0, total0 = self._sample
        self._sample = (now, idle, total)
        if now - t0 > 4 * self._window:  # an old sample says nothing about the renders now
            return
        spent = total - total0
        idle_cores = self.cpus * (idle - idle0) / spent if spent > 0 else float(self.cpus)
        if idle_cores >= IDLE_CORES and self.rendering >= self.target:
            # One more for each half core left idle: light frames reach their number in a few
            # windows, and heavy ones, once computing, bring it back down.
            self.target = min(self.cap, self.target + int(idle_cores / IDLE_CORES))
        elif idle_cores < BUSY_CORES:
            self.target = max(self._floor, self.target - 1)
        else:
            return
        self._cond.notify_all()
