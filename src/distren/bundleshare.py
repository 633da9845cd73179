"""Bundles passed on between renderers, so that a big scene leaves its origin a few times, not
once per renderer.

A bundle is named by its SHA-256, which the origin signs in the job's announcement; a copy from
anyone is as good as the origin's once its hash matches, so a hostile peer cannot substitute
content. What stays the origin's to decide is *who* may read a job's scene (need to know): only
servers holding a lease on the job. A holder cannot know that, so the origin hands a renderer
that holds a lease a **grant**: its signature over (origin, job, bundle hash, renderer, expiry).
A server that holds the bundle serves it (``GET /fed/bundles/SHA``) to a signed request from
exactly the renderer the grant names, before it expires, checked against the origin's pinned
key: the same rule as the origin's own, proven by the origin instead of looked up.

The origin sends one bundle to at most :data:`ORIGIN_SENDS` renderers at once; others are told
(``503``) to fetch it from the servers that already hold it (``GET /fed/jobs/ID/bundle/peers``:
those the origin finished sending it to) or to try again shortly. A server passes a bundle on
to at most :data:`PEER_SENDS` peers at once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from . import identity
from .errors import Busy, DistrenError, Forbidden

ORIGIN_SENDS = 2  # one bundle, sent by its origin, at once
PEER_SENDS = 4  # bundles a server passes on to peers at once
GRANT_TTL = 600.0  # seconds a grant is good for
HOLDERS = 16  # servers remembered per bundle (the latest)


def grant_text(origin: str, job_id: int, sha: str, renderer: str, expires: str) -> bytes:
    return f"distren bundle grant\n{origin}\n{job_id}\n{sha}\n{renderer}\n{expires}".encode()


def make_grant(sign, origin: str, job_id: int, sha: str, renderer: str) -> str:
    """The ``X-Distren-Grant`` header value: ``ORIGIN;JOB;EXPIRES;SIGNATURE``."""
    expires = f"{time.time() + GRANT_TTL:.3f}"
    return f"{origin};{job_id};{expires};{sign(grant_text(origin, job_id, sha, renderer, expires))}"


def check_grant(header: str, sha: str, renderer: str, key_of) -> str:
    """The origin that granted ``renderer`` bundle ``sha``, if ``header`` proves it;
    ``key_of(name)``: a pinned key or None."""
    try:
        origin, job, expires, sig = header.split(";")
        job_id, until = int(job), float(expires)
    except ValueError:
        raise DistrenError("malformed X-Distren-Grant: ORIGIN;JOB;EXPIRES;SIGNATURE from the job's origin "
                           "(GET /fed/jobs/ID/bundle/peers there)") from None
    key = key_of(origin)
    if key is None:
        raise Forbidden(f"need to know: {origin[:100]!r} is not a server known here, so its grant proves nothing")
    identity.verify(key, grant_text(origin, job_id, sha, renderer, expires), sig)
    if until < time.time():
        raise Forbidden("need to know: the grant has expired; ask the origin for another")
    return origin


class Sends:
    """Sends in flight, at most ``most`` per key."""

    def __init__(self, most: int):
        self.most = most
        self._lock = threading.Lock()
        self._n: dict[str, int] = {}

    def start(self, key: str, what: str) -> None:
        with self._lock:
            if self._n.get(key, 0) >= self.most:
                raise Busy(f"{what} is being sent to {self.most} servers already; fetch it from a server "
                           "that holds it, or try again in a moment")
            self._n[key] = self._n.get(key, 0) + 1

    def end(self, key: str) -> None:
        with self._lock:
            self._n[key] -= 1
            if not self._n[key]:
                del self._n[key]


class Holders:
    """Who the origin finished sending each bundle to (in memory: after a restart, nobody)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_sha: dict[str, OrderedDict[str, None]] = {}

    def add(self, sha: str, name: str) -> None:
        with self._lock:
            names = self._by_sha.setdefault(sha, OrderedDict())
            names[name] = None
            names.move_to_end(name)
            while len(names) > HOLDERS:
                names.popitem(last=False)

    def of(self, sha: str) -> list[str]:
        with self._lock:
            return list(reversed(self._by_sha.get(sha, {})))
