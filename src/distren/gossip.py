"""Gossip: what peers tell each other of their jobs, once they know each other (:mod:`distren.peering`).

* **Announcements.** The origin signs a small record of each new job and sends it to every peer.
  A server relays news (never what it already knew) to its own peers, so servers that are not
  directly peered still learn of the job. Finished or cancelled jobs are withdrawn.
* **Sync.** Every few seconds each server pulls its peers' state (``GET /fed/state``), which
  brings a server that was down up to date.

The protocol is written down in docs/protocol.md.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from . import backends, urls
from .backoff import Backoff
from .errors import Conflict, DistrenError, RemoteError, ServerUnreachable
from .identity import verify
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


def announcement_text(ann: dict) -> bytes:
    """What an announcement's signature covers: every field but the signature, canonically."""
    return json.dumps({k: v for k, v in ann.items() if k != "signature"}, sort_keys=True).encode()


class Gossip:
    def __init__(self, peering: Peering, peers: list[str], store: Store, transport: Transport,
                 jobfiles: JobFiles, slots: int, rendering_now: Callable[[], list[str]],
                 wake: Callable[[], None], after_sync: Callable[[], None]):
        """``peers``: addresses to introduce ourselves to (``serve --peer``); ``wake``: there may
        be new work for idle slots; ``after_sync``: run after each pull of the peers' state, on
        the sync thread (the renderer polls remote dependencies)."""
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
               "frames": len(self.store.frames(job_id)), "created": job.created, "active": active}
        ann["signature"] = self.identity.sign(announcement_text(ann))
        return ann

    def announce(self, job_id: int, active: bool = True, again: bool = False) -> None:
        """Record our own job's announcement (or withdrawal) and push it to every peer
        (``again``: even if it is not news, as after a restart)."""
        ann = self._announcement(job_id, active)
        if self.store.record_announcement(ann["job"], self.name, ann, active) or again:
            self._push(ann, exclude=set())

    def _push(self, ann: dict, exclude: set[str]) -> None:
        """Send ``ann`` to each peer, each on a relay thread of its own: a peer that does not
        answer delays no other."""
        for p in self.store.peers():
            if p["name"] in exclude or p["name"] == ann["origin"] and ann["origin"] != self.name:
                continue
            if self._peers.waiting(p["name"]):
                continue  # it failed lately: it catches up by syncing when it is back
            try:
                self._relay.submit(self._push_one, ann, p["name"], p["address"])
            except RuntimeError:
                return  # shutting down

    def _push_one(self, ann: dict, name: str, address: str) -> None:
        try:
            self.transport.call("POST", address, "/fed/announce", ann, retries=1, timeout=PUSH_TIMEOUT, to=name)
        except DistrenError as e:
            log.info("could not announce %s to %s (%s); it will catch up by syncing", ann["job"], name, e)
            if isinstance(e, (ServerUnreachable, RemoteError)):
                self._peers.failed(name)

    def receive(self, sender: str, ann: dict) -> bool:
        """An announcement from ``sender`` (maybe relayed). Verify, record, relay if news."""
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
        if origin == self.name:
            return False  # our own job, echoed back
        verify(key, announcement_text(ann), sig)
        pinned = self.store.peer_key(origin)
        if pinned is None:
            # First we hear of this origin, through a peer we trust: pin it (trust on first use).
            self.store.pin_peer(origin, address, key)
        elif pinned != key:
            raise Conflict(f"announcement of {job} carries a key for {origin!r} that differs from the pinned one")
        news = self.store.record_announcement(str(job), origin, {k: v for k, v in ann.items()}, active)
        if news:
            log.info("%s %s (via %s)", "announced" if active else "withdrawn", job, sender)
            self._push(ann, exclude={sender})
            self.wake()
        return news

    # --- state and sync ------------------------------------------------------------------

    def state(self, sender: str) -> dict:
        """``GET /fed/state`` for a peer, which is heard from by asking."""
        self.store.peer_heard(sender)
        # Every live job, and the latest withdrawals; only records as their origin signed them.
        live = [a for a in self.store.announcements(active_only=True) if a["active"]]
        gone = [a for a in self.store.announcements(active_only=False) if not a["active"]][-1000:]
        return {"name": self.name, "slots": self.slots, "backends": backends.available(),
                "rendering": self.rendering_now(), "announcements": live + gone}

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception:
                log.exception("sync with peers failed")
            self._stop.wait(SYNC_INTERVAL)

    def sync_once(self, wait: float = SYNC_INTERVAL) -> None:
        """One pass: hellos to the configured peers not known yet, and a pull of each peer's
        state, all at once on the sync threads. The pass waits at most ``wait`` seconds for
        them; a peer that takes longer is not asked again until its pull is over."""
        known = {p["address"] for p in self.store.peers()}
        pulls = [self._start(f"hello {a}", self._hello, a) for a in self.configured_peers if a not in known]
        futures = [f for f in pulls if f is not None]
        concurrent.futures.wait(futures, timeout=wait)
        pulls = [self._start(p["name"], self._pull, p["name"], p["address"])
                 for p in self.store.peers() if not self._peers.waiting(p["name"])]
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
        try:
            st = self.transport.call("GET", address, "/fed/state", retries=0, timeout=STATE_TIMEOUT, to=name).json()
        except (DistrenError, ValueError) as e:
            log.debug("sync with %s failed: %s", name, e)
            self._peers.failed(name)
            return
        self._peers.succeeded(name)
        if not isinstance(st, dict):
            return
        self.store.peer_heard(name, _int(st.get("slots")), _strings(st.get("rendering")))
        for ann in st.get("announcements") or []:
            try:
                self.receive(name, ann)
            except DistrenError as e:
                log.warning("ignored an announcement from %s: %s", name, e)
            except Exception:
                log.exception("an announcement from %s", name)


def _int(v) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 31 else 0


def _strings(v) -> list[str]:
    return [x for x in v if isinstance(x, str)][:1000] if isinstance(v, list) else []
