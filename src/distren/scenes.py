"""A renderer's cache of other servers' job scenes, by content hash, and the bundles it passes on.

A job's bundle is named by its SHA-256 (signed in the origin's announcement), so one fetched for
one lease serves every later lease of the same job, and a copy from another renderer is as good
as the origin's once its hash matches: the renderer asks the origin which servers hold it and for
a grant (bundleshare.py), tries them, and fetches from the origin only when none of them gives
it. This server, in turn, serves the bundles it holds to renderers with a grant.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import bundle, bundleshare, urls
from .errors import DistrenError, NotFound, Unauthorized
from .peering import check_address

if TYPE_CHECKING:
    from .transfer import Transport

log = logging.getLogger("distren.scenes")

FETCH_PATIENCE = 600.0  # seconds a renderer keeps asking a busy origin and its holders for a bundle
PEERS_TRIED = 3  # holders asked for a bundle per round
SHA256 = re.compile(r"[0-9a-f]{64}")


class Scenes:
    def __init__(self, cache: Path, transport: Transport | None = None,
                 known_address: Callable[[str], str | None] = lambda name: None,
                 introduce: Callable[[str], str] | None = None):
        self._cache = cache
        self.transport = transport
        self.known_address = known_address
        self.introduce = introduce
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self.sends = bundleshare.Sends(bundleshare.PEER_SENDS)  # bundles passed on now (api/servers.py)

    def lock(self, key: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    def bundle_path(self, sha: str) -> Path:
        return self._cache / "bundles" / f"{sha}.tar"

    def scene(self, sha: str, fetch: Callable[[Path], None]) -> Path:
        """The unpacked scene of bundle ``sha``; ``fetch(dest)`` downloads the bundle (checking
        its hash) when it is not here yet. One fetch per bundle at a time."""
        scene = self._cache / "scenes" / sha
        with self.lock(sha):
            if not scene.is_dir():
                tar = self.bundle_path(sha)
                if not tar.exists():
                    fetch(tar)
                unpacked = self._cache / "scenes" / f".{sha}.unpacked"
                shutil.rmtree(unpacked, ignore_errors=True)
                bundle.extract(tar, unpacked)
                os.replace(unpacked / "scene", scene)
                shutil.rmtree(unpacked, ignore_errors=True)
        return scene

    # --- fetching, from a peer that holds it or the origin ------------------------------------

    def fetch(self, origin: str, address: str, job_id: int, sha: str, dest: Path) -> None:
        """Bundle ``sha`` of ``origin``'s job into ``dest``, hash-checked, from a server that
        holds it if one gives it, else from the origin. An origin busy sending it to others is
        asked again (those will soon hold it), for up to :data:`FETCH_PATIENCE`."""
        delay, deadline = 0.2, time.monotonic() + FETCH_PATIENCE
        while True:
            try:
                info = self.transport.call("GET", address, f"/fed/jobs/{job_id}/bundle/peers", retries=2,
                                           timeout=10, to=origin).json()
            except NotFound:  # an origin that does not pass bundles on: its own copy only
                info = {}
            peers = info.get("peers") if isinstance(info, dict) and isinstance(info.get("grant"), str) else None
            # A few of them, in random order: a holder that stalls costs one read timeout each.
            peers = [p for p in peers if isinstance(p, dict)] if isinstance(peers, list) else []
            for peer in random.sample(peers, min(PEERS_TRIED, len(peers))):
                if self._from_peer(peer, sha, info["grant"], dest):
                    return
            try:
                self.transport.download(address, f"/fed/jobs/{job_id}/bundle", dest, sha, retries=0, to=origin)
                return
            except DistrenError as e:
                if e.final or time.monotonic() > deadline:
                    raise
                log.info("bundle %s... not from %s now (%s); asking again in %.1f s", sha[:12], origin, e, delay)
            time.sleep(delay)
            delay = min(2.0, delay * 2)

    def _from_peer(self, peer: dict, sha: str, grant: str, dest: Path) -> bool:
        try:
            name = urls.check_server_name(str(peer.get("name")))
            address = self.known_address(name) or check_address(str(peer.get("address")))
            for attempt in range(2):
                try:
                    self.transport.download(address, f"/fed/bundles/{sha}", dest, sha, retries=0, to=name,
                                            headers={"X-Distren-Grant": grant})
                    log.info("bundle %s... fetched from %s", sha[:12], name)
                    return True
                except Unauthorized:  # it does not know us yet
                    if attempt or self.introduce is None:
                        raise
                    self.introduce(address)
        except DistrenError as e:
            log.info("bundle %s... not from %s (%s)", sha[:12], str(peer.get("name"))[:100], e)
        return False

    # --- passing one on ------------------------------------------------------------------

    def serve(self, sha: str, grant: str, sender: str, key_of: Callable[[str], str | None]) -> Path:
        """A bundle held here, for ``sender``, if ``grant`` proves its origin lets it read it."""
        if not SHA256.fullmatch(sha):
            raise DistrenError("malformed request: a bundle is named by its SHA-256 (64 lowercase hex digits)")
        bundleshare.check_grant(grant, sha, sender, key_of)  # first: a stranger learns nothing
        path = self.bundle_path(sha)
        if not path.exists():
            raise NotFound(f"bundle {sha[:12]}... is not here; fetch it from its origin")
        return path
