"""Gossip: what peers tell each other of their jobs, once they know each other (:mod:`distren.peering`).

* **Announcements.** The origin signs a small record of each live job and sends it to its
  neighbours (:mod:`distren.neighbours`: a bounded set of its peers). A server relays news (never
  what it already knew) to its own neighbours, hop by hop up to a limit, so every server learns
  of the job in about log(N) rounds. Finished or cancelled jobs are withdrawn. A record expires
  unless its origin re-signs it: a job whose origin is gone stops being offered.
* **Sync.** Every few seconds each server pulls from each neighbour what changed since its last
  pull (``GET /fed/state?since=CURSOR``), which brings a server that was down up to date.

Nothing here waits on one peer: pushes and pulls run on bounded pools, one at a time per peer,
and a peer that fails backs off. The protocol is written down in docs/protocol.md.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from . import backends, urls
from .backoff import Backoff
from .errors import Conflict, DistrenError, RemoteError, ServerUnreachable, TooManyRequests
from .identity import MAX_SKEW, verify
from .neighbours import NewOrigins, choose_neighbours, relay_hops
from .peering import check_address

if TYPE_CHECKING:
    from .jobs import JobFiles
    from .peering import Peering
    from .store import Store
    from .transfer import Transport

log = logging.getLogger("distren.gossip")

SYNC_INTERVAL = 3.0
RELAYERS = 8  # announcements being pushed at once, each to one peer
SYNCERS = 8  # peers being pulled from at once
PUSH_TIMEOUT = 5.0
STATE_TIMEOUT = 5.0
PEER_BACKOFF, MAX_PEER_BACKOFF = 3.0, 300.0  # a peer that failed is skipped this long, doubling
ANNOUNCE_TTL = 3600.0  # a record's life; its origin re-signs it when a third is left
MAX_TTL = 86400.0  # a record that claims to live longer is refused
NEW_ORIGINS_PER_HOUR = 100  # unknown origins one relaying peer may introduce in an hour
FORGET_AFTER = 86400.0  # an origin not heard of for this long is forgotten
MAINTAIN_EVERY = 30.0  # re-signing and forgetting


def announcement_text(ann: dict) -> bytes:
    """What an announcement's signature covers: every field but the signature, canonically."""
    return json.dumps({k: v for k, v in ann.items() if k != "signature"}, sort_keys=True).encode()


class Gossip:
    def __init__(self, peering: Peering, peers: list[str], store: Store, transport: Transport,
                 jobfiles: JobFiles, slots: int, rendering_now: Callable[[], list[str]],
                 wake: Callable[[], None], after_sync: Callable[[], None], *,
                 announce_ttl: float = ANNOUNCE_TTL, new_origins_per_hour: int = NEW_ORIGINS_PER_HOUR,
                 forget_after: float = FORGET_AFTER):
        """``peers``: addresses to introduce ourselves to (``serve --peer``), always neighbours;
        ``wake``: there may be new work for idle slots; ``after_sync``: run after each pass of
        pulls, on the sync thread (the renderer polls remote dependencies); ``announce_ttl``:
        how long our records live unless re-signed; ``new_origins_per_hour``: unknown origins a
        relaying peer may introduce; ``forget_after``: an origin silent this long is forgotten."""
        self.peering = peering
        self.identity = peering.identity
        self.address = peering.address
        self.configured_peers = [p.rstrip("/") for p in peers]
        self.store = store
        self.transport = transport
        self.jobfiles = jobfiles
        self.slots = slots
        self.rendering_now = rendering_now
        self.wake = wake
        self.after_sync = after_sync
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._relay = ThreadPoolExecutor(max_workers=RELAYERS, thread_name_prefix="relay")
        self._syncs = ThreadPoolExecutor(max_workers=SYNCERS, thread_name_prefix="sync")
        self._syncing: dict[str, Future] = {}  # one pull per peer at a time
        self._peers = Backoff(PEER_BACKOFF, MAX_PEER_BACKOFF)  # peers that did not answer
        self.announce_ttl = min(announce_ttl, MAX_TTL)
        self.forget_after = forget_after
        self._new_origins = NewOrigins(new_origins_per_hour)
        self._verified: OrderedDict[str, None] = OrderedDict()  # signatures of records taken already
        # peer -> its cursor in its last answer. A record missed (refused for a while) comes again
        # when its origin re-signs it, so no pass ever needs more than what changed.
        self._cursors: dict[str, int] = {}
        self._etags: dict[str, tuple[int | None, str]] = {}  # peer -> (the cursor asked with next, its answer's ETag)
        self._answers: OrderedDict[tuple[int, int], list] = OrderedDict()  # (since, cursor) -> records
        self._maintained = 0.0
        self._memo = threading.Lock()  # guards the two memories above (API and sync threads)

    @property
    def name(self) -> str:
        return self.identity.name

    def start(self) -> None:
        self._thread = threading.Thread(target=self._sync_loop, name="sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._relay.shutdown(wait=False, cancel_futures=True)
        self._syncs.shutdown(wait=False, cancel_futures=True)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def add(self, address: str) -> str:
        """``distren peers add``: peer now, and learn the new peer's jobs at once."""
        name = self.peering.introduce(address)
        self.sync_once(wait=STATE_TIMEOUT + 1)
        return name

    # --- announcements -------------------------------------------------------------------

    def _announcement(self, job_id: int, active: bool) -> dict:
        job = self.store.get_job(job_id)
        jf, _ = self.jobfiles.get(job_id)
        ann = {"job": str(urls.ServerURL(self.name).job(job_id)), "origin": self.name, "address": self.address,
               "backends": backends.needed(jf),
               "key": self.identity.public, "bundle_sha256": self.jobfiles.bundle_sha256(job_id),
               "frames": len(self.store.frames(job_id)), "created": job.created, "active": active,
               "expires": round(time.time() + self.announce_ttl, 3),
               "priority": job.priority}
        ann["signature"] = self.identity.sign(announcement_text(ann))
        return ann

    def announce(self, job_id: int, active: bool = True, again: bool = False) -> None:
        """Record our own job's announcement (or withdrawal) and push it to our neighbours
        (``again``: even if it is not news, as after a restart)."""
        ann = self._announcement(job_id, active)
        if self.store.record_announcement(ann["job"], self.name, ann, active) or again:
            self._push(ann, exclude=set(), hops=0)

    def neighbours(self) -> list[dict]:
        """The peers we relay to and pull from: bounded, however many we know."""
        peers = self.store.peers()
        return choose_neighbours(self.name, peers, self.configured_peers,
                                 resting=[p["name"] for p in peers if self._peers.waiting(p["name"])])

    def _push(self, ann: dict, exclude: set[str], hops: int) -> None:
        """Send ``ann`` to each neighbour, each on a relay thread of its own: a peer that does
        not answer delays no other."""
        for p in self.neighbours():
            if p["name"] in exclude or p["name"] == ann["origin"] and ann["origin"] != self.name:
                continue
            if self._peers.waiting(p["name"]):
                continue  # it failed lately: it catches up by syncing when it is back
            try:
                self._relay.submit(self._push_one, ann, p["name"], p["address"], hops)
            except RuntimeError:
                return  # shutting down

    def _push_one(self, ann: dict, name: str, address: str, hops: int) -> None:
        try:
            self.transport.call("POST", address, f"/fed/announce?hops={hops}", ann, retries=1,
                                timeout=PUSH_TIMEOUT, to=name)
        except DistrenError as e:
            log.info("could not announce %s to %s (%s); it will catch up by syncing", ann["job"], name, e)
            if isinstance(e, (ServerUnreachable, RemoteError)):
                self._peers.failed(name)

    def receive(self, sender: str, ann: dict, hops: int = 0) -> bool:
        """An announcement from ``sender`` (maybe relayed, ``hops`` from its origin). Verify,
        record, relay if news."""
        try:
            job = urls.parse_job(str(ann["job"]))
            origin = urls.check_server_name(str(ann["origin"]))
            key, address, sig = str(ann["key"]), str(ann["address"]), str(ann["signature"])
            active = bool(ann["active"])
        except (KeyError, TypeError):
            raise DistrenError("an announcement needs job, origin, address, key, active and signature") from None
        if job.server != origin:
            raise DistrenError(f"announcement of {job} claims origin {origin!r}")
        check_address(address)
        if active and not _live(ann, job):
            return False  # expired: its origin did not re-sign it in time
        with self._memo:
            taken = sig in self._verified
        if origin == self.name or taken:
            return False  # our own job echoed back, or a record taken already
        verify(key, announcement_text(ann), sig)
        pinned = self.store.peer_key(origin)
        if pinned is None and sender != origin and not self._new_origins.allow(sender):
            raise TooManyRequests(f"{sender} has introduced {self._new_origins.per_hour} unknown origins in "
                                  f"the last hour, the most one peer may; {origin!r} is not taken now")
        if pinned is None:
            # Never pinned from a record: the origin is asked at its own address first.
            self.peering.check_origin(origin, address, key)
        elif pinned != key:
            raise Conflict(f"announcement of {job} carries a key for {origin!r} that differs from the pinned one")
        news = self.store.record_announcement(str(job), origin, {k: v for k, v in ann.items()}, active)
        with self._memo:
            self._verified[sig] = None
            while len(self._verified) > 100_000:
                self._verified.popitem(last=False)
        if news:
            log.info("%s %s (via %s)", "announced" if active else "withdrawn", job, sender)
            onward = relay_hops(hops)
            if onward is not None:
                self._push(ann, exclude={sender}, hops=onward)
            self.wake()
        return news

    # --- state and sync ------------------------------------------------------------------

    def state(self, sender: str, since: str | int | None = None) -> dict:
        """``GET /fed/state`` for a peer, which is heard from by asking: the records changed
        since ``since`` (its cursor from our last answer; none or 0: all live records and the
        latest withdrawals), and the cursor to ask with next time."""
        self.store.peer_heard(sender)
        try:
            after = max(0, int(since or 0))
        except ValueError:
            raise DistrenError(f"malformed request: since={str(since)[:30]!r} is not a cursor from an answer") from None
        cursor, records = self._changes(after)
        if after > cursor:  # a cursor from before this server's database was new: start again
            cursor, records = self._changes(0)
        return {"name": self.name, "slots": self.slots, "backends": backends.available(),
                "rendering": self.rendering_now(), "cursor": cursor, "announcements": records}

    def _changes(self, since: int) -> tuple[int, list]:
        """Answers are kept by (since, cursor): every peer up to date asks the same question,
        and a new server's whole pull is parsed once per change, not once per asker."""
        cursor, texts = self.store.announcement_changes(since)
        key = (since, cursor)
        with self._memo:
            records = self._answers.get(key)
        if records is None:
            records = [json.loads(t) for t in texts]
            with self._memo:
                self._answers[key] = records
                while len(self._answers) > 32:
                    self._answers.popitem(last=False)
        return cursor, records

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
                if time.monotonic() - self._maintained > min(MAINTAIN_EVERY, self.announce_ttl / 6):
                    self._maintained = time.monotonic()
                    self.maintain()
            except Exception:
                log.exception("sync with peers failed")
            self._stop.wait(SYNC_INTERVAL)

    def maintain(self, now: float | None = None) -> None:
        """Re-sign our live jobs' records before a third of their life is left; forget the
        origins that have been silent too long."""
        now = time.time() if now is None else now
        for ann in self.store.announcements(active_only=False):
            if ann.get("origin") != self.name or not ann.get("active"):
                continue
            expires = ann.get("expires")
            if isinstance(expires, (int, float)) and expires - now > self.announce_ttl * 2 / 3:
                continue
            try:
                fresh = self._announcement(urls.parse_job(ann["job"]).job_id, True)
            except DistrenError as e:  # the job is gone (deleted): let its record run out
                log.info("not re-signing %s: %s", ann["job"], e)
                continue
            self.store.record_announcement(fresh["job"], self.name, fresh, True)
        for origin in self.store.forget_silent_origins(now - self.forget_after, keep=self.name):
            log.info("forgot %s: no news of it for %.0f hours", origin, self.forget_after / 3600)

    def sync_once(self, wait: float = SYNC_INTERVAL) -> None:
        """One pass: hellos to the configured peers not known yet, and a pull from each
        neighbour, all at once on the sync threads. The pass waits at most ``wait`` seconds for
        them; a peer that takes longer is not asked again until its pull is over."""
        known = {p["address"] for p in self.store.peers()}
        pulls = [self._start(f"hello {a}", self._hello, a) for a in self.configured_peers if a not in known]
        futures = [f for f in pulls if f is not None]
        concurrent.futures.wait(futures, timeout=wait)
        pulls = [self._start(p["name"], self._pull, p["name"], p["address"])
                 for p in self.neighbours() if not self._peers.waiting(p["name"])]
        concurrent.futures.wait([f for f in pulls if f is not None], timeout=wait)
        self.after_sync()

    def _start(self, key: str, fn, *args) -> Future | None:
        """``fn(*args)`` on a sync thread, unless the last one for ``key`` is still running."""
        running = self._syncing.get(key)
        if running is not None and not running.done():
            return None
        try:
            f = self._syncing[key] = self._syncs.submit(fn, *args)
        except RuntimeError:  # shutting down
            return None
        return f

    def _hello(self, address: str) -> None:
        try:
            self.peering.introduce(address)
        except Conflict as e:
            log.error("%s", e)
        except DistrenError as e:
            log.info("peer %s not reachable yet (%s)", address, e)

    def _pull(self, name: str, address: str) -> None:
        cursor = self._cursors.get(name, 0)
        # The answer to the same question last time: unchanged, the peer answers 304 and no body.
        etag = self._etags.get(name, (None, ""))
        try:
            resp = self.transport.call("GET", address, f"/fed/state?since={cursor}", retries=0, timeout=STATE_TIMEOUT,
                                       to=name, headers={"If-None-Match": etag[1]} if etag[0] == cursor else None)
            if resp.status_code == 304:
                self._peers.succeeded(name)
                self.store.peer_heard(name)
                return
            st = resp.json()
        except (DistrenError, ValueError) as e:
            log.debug("sync with %s failed: %s", name, e)
            self._peers.failed(name)
            return
        self._peers.succeeded(name)
        self._etags[name] = (_int(st.get("cursor"), 1 << 62) if isinstance(st, dict) else None,
                             resp.headers.get("ETag", ""))
        if not isinstance(st, dict):
            return
        self.store.peer_heard(name, _int(st.get("slots")), _strings(st.get("rendering")))
        self.take(name, st.get("announcements"))
        self._cursors[name] = _int(st.get("cursor"), 1 << 62)

    def take(self, sender: str, records) -> int:
        """Records pulled from ``sender``; returns how many were news."""
        news = 0
        for ann in records if isinstance(records, list) else []:
            try:
                news += self.receive(sender, ann) if isinstance(ann, dict) else 0
            except DistrenError as e:
                log.warning("ignored an announcement from %s: %s", sender, e)
            except Exception:
                log.exception("an announcement from %s", sender)
        return news


def _live(ann: dict, job: urls.JobURL) -> bool:
    """An active record lives until its ``expires``, which may not be far ahead."""
    expires = ann.get("expires")
    if not isinstance(expires, (int, float)) or isinstance(expires, bool) or not math.isfinite(expires):
        raise DistrenError(f"announcement of {job}: expires must be a time (epoch seconds); "
                           "an origin re-signs its live jobs' records before they expire")
    now = time.time()
    if expires > now + MAX_TTL + MAX_SKEW:
        raise DistrenError(f"announcement of {job} expires more than {MAX_TTL / 3600:.0f} hours ahead; "
                           "an origin re-signs its live jobs' records instead")
    return expires > now


def _int(v, most: int = 1 << 31) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < most else 0


def _strings(v) -> list[str]:
    return [x for x in v if isinstance(x, str)][:1000] if isinstance(v, list) else []
