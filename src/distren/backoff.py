"""Exponential back-off per key (an origin, a peer, a job): who failed is asked again later and
later, who answers is asked at once. Nothing waits on it: callers skip a key while it backs off."""

from __future__ import annotations

import random
import threading
import time


class Backoff:
    def __init__(self, first: float, most: float):
        """``first``: the pause after one failure; it doubles with each failure in a row, up to
        ``most``."""
        self.first = first
        self.most = most
        self._until: dict[str, float] = {}
        self._fails: dict[str, int] = {}
        self._lock = threading.Lock()

    def waiting(self, key: str) -> bool:
        """True while ``key`` backs off."""
        with self._lock:
            return self._until.get(key, 0.0) > time.monotonic()

    def failed(self, key: str, at_least: float = 0.0) -> float:
        """One more failure of ``key``; returns the pause it now backs off for."""
        with self._lock:
            n = self._fails[key] = self._fails.get(key, 0) + 1
            # A little jitter, so that servers which saw one origin fail together do not all
            # come back at the same instant.
            pause = max(at_least, min(self.most, self.first * 2 ** (n - 1)) * random.uniform(0.9, 1.1))
            self._until[key] = time.monotonic() + pause
            return pause

    def pause(self, key: str, seconds: float) -> None:
        """Back off for ``seconds``, without counting a failure (nothing to do there now)."""
        with self._lock:
            self._until[key] = max(self._until.get(key, 0.0), time.monotonic() + seconds)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)
            self._until.pop(key, None)

    def failures(self, key: str) -> int:
        with self._lock:
            return self._fails.get(key, 0)
