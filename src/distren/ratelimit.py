"""A token bucket per source address, over a bounded number of sources.

Used against hello floods: each source may send ``burst`` requests at once, then one every
``1/rate`` seconds. The table holds at most ``max_sources`` addresses (the least recently seen
go first), so a flood from many addresses costs bounded memory; what bounds the harm of such a
flood is elsewhere (the pending list's bound, the bound on confirmations at once).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class PerSource:
    def __init__(self, burst: float, rate: float, max_sources: int = 10_000):
        self.burst, self.rate, self.max_sources = burst, rate, max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source -> (tokens, at)
        self._lock = threading.Lock()

    def allow(self, source: str, now: float | None = None) -> bool:
        """Take a token for ``source``; False if it has none left."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.pop(source, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            ok = tokens >= 1
            self._buckets[source] = (tokens - 1 if ok else tokens, now)
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
            return ok
