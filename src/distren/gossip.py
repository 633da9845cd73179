"""Gossip: what peers tell each other of their jobs, once they know each other (:mod:`distren.peering`).

* **Announcements.** The origin signs a small record of each new job and sends it to every peer.
  A server relays news (never what it already knew) to its own peers, so servers that are not
  directly peered still learn of the job. Finished or cancelled jobs are withdrawn.
* **Sync.** Every few seconds each server pulls its peers' state (``GET /fed/state``), which
  brings a server that was down up to date.

The protocol is written down in docs/protocol.md.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from . import backends, urls
from .errors import Conflict, DistrenError
from .identity import verify
from .peering import check_address

if TYPE_CHECKING:
    from .jobs import JobFiles
    from .peering import Peering
    from .store import Store
    from .transfer import Transport

log = logging.getLogger("distren.gossip")

SYNC_INTERVAL = 3.0


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
        self._relay = ThreadPoolExecutor(max_workers=4, thread_name_prefix="relay")

    @property
    def name(self) -> str:
        return self.identity.name

    def start(self) -> None:
        self._thread = threading.Thread(target=self._sync_loop, name="sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._relay.shutdown(wait=False, cancel_futures=True)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def add(self, address: str) -> str:
        """``distren peers add``: peer now, and learn the new peer's jobs at once."""
        name = self.peering.introduce(address)
        self.sync_once()
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
            self._relay.submit(self._push, ann, exclude=set())

    def _push(self, ann: dict, exclude: set[str]) -> None:
        for p in self.store.peers():
            if p["name"] in exclude or p["name"] == ann["origin"] and ann["origin"] != self.name:
                continue
            try:
                self.transport.call("POST", p["address"], "/fed/announce", ann, retries=1, timeout=5, to=p["name"])
            except DistrenError as e:
                log.info("could not announce %s to %s (%s); it will catch up by syncing", ann["job"], p["name"], e)

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
            self._relay.submit(self._push, ann, exclude={sender})
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

    def sync_once(self) -> None:
        self._sync_peers()
        self.after_sync()

    def _sync_peers(self) -> None:
        known = {p["address"] for p in self.store.peers()}
        for address in self.configured_peers:
            if address not in known:
                try:
                    self.peering.introduce(address)
                except Conflict as e:
                    log.error("%s", e)
                except DistrenError as e:
                    log.info("peer %s not reachable yet (%s)", address, e)
        for p in self.store.peers():
            try:
                st = self.transport.call("GET", p["address"], "/fed/state", retries=0, timeout=5, to=p["name"]).json()
            except DistrenError as e:
                log.debug("sync with %s failed: %s", p["name"], e)
                continue
            self.store.peer_heard(p["name"], int(st.get("slots") or 0), list(st.get("rendering") or []))
            for ann in st.get("announcements", []):
                try:
                    self.receive(p["name"], ann)
                except DistrenError as e:
                    log.warning("ignored an announcement from %s: %s", p["name"], e)
