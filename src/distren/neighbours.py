"""The rules that keep gossip's cost flat as the federation grows, apart from any I/O so that
bench/gossip_sim.py runs them for thousands of servers.

* A server knows many servers, but relays to and syncs with only its **neighbours**: the peers
  its admin configured, then up to :data:`FANOUT` others, picked by a hash of the two names. Each
  server's pick looks random and differs from its peers' picks, so neighbourhoods form a random
  graph, in which news spreads to N servers in about log(N) relay rounds.
* Relayed news carries its **hops** from the origin and stops at :data:`HOP_LIMIT`.
* A relaying peer may introduce only so many **unknown origins** an hour (each costs a check).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable

FANOUT = 8
HOP_LIMIT = 16  # well over log2(N) for any N this will see: a bound, not the usual path


def choose_neighbours(me: str, peers: Iterable[dict], configured: Iterable[str] = (), k: int = FANOUT,
                      resting: Iterable[str] = ()) -> list[dict]:
    """``peers``: rows with ``name`` and ``address``. Every configured address is a neighbour,
    then others up to ``k`` in all, those ``resting`` (backing off) last."""
    configured, resting = set(configured), set(resting)
    peers = [p for p in peers if p["name"] != me]
    chosen = sorted((p for p in peers if p["address"] in configured), key=lambda p: p["name"])
    rest = sorted((p for p in peers if p["address"] not in configured),
                  key=lambda p: (p["name"] in resting, hashlib.sha256(f"{me}\n{p['name']}".encode()).digest()))
    return chosen + rest[:max(0, k - len(chosen))]


def relay_hops(hops: int) -> int | None:
    """The hop count to relay news received at ``hops`` with, or None if it goes no further."""
    return hops + 1 if 0 <= hops < HOP_LIMIT - 1 else None


class NewOrigins:
    """How many unknown origins each relaying peer introduced in the last hour, bounded."""

    def __init__(self, per_hour: int, max_peers: int = 10_000):
        self.per_hour = per_hour
        self.max_peers = max_peers
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, peer: str, now: float | None = None) -> bool:
        """Count one more from ``peer``; False (not counted) past the bound."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._seen.pop(peer, None) or deque()
            while times and times[0] <= now - 3600:
                times.popleft()
            ok = len(times) < self.per_hour
            if ok:
                times.append(now)
            self._seen[peer] = times
            while len(self._seen) > self.max_peers:
                self._seen.popitem(last=False)
            return ok
