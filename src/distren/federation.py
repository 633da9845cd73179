"""Federation: servers that introduce themselves, announce jobs, lease frames and send results.

The protocol is written down in docs/protocol.md; this module is both of its sides.

* **Peering.** ``hello`` carries a server's name, address and Ed25519 key, signed with that key.
  Both sides pin what they learn on first contact; a later change of key is refused.
* **Announcements.** The origin signs a small record of each new job and sends it to every peer.
  A server relays news (never what it already knew) to its own peers, so servers that are not
  directly peered still learn of the job. Every few seconds each server pulls its peers' state,
  which brings a server that was down up to date. Finished or cancelled jobs are withdrawn.
* **Leases.** A renderer with an idle slot asks an origin for a frame. The origin leases one
  ready frame for ``lease_timeout`` seconds and answers with a distrenjob.xml holding that frame,
  naming the renderer as its server. The renderer renews the lease while it renders, uploads the
  frame's tarball, and the origin checks it and marks the frame done - once.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import os
import shutil
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import backends, bundle, images, jobfile, sandbox, states, urls
from .errors import (BundleError, Conflict, DistrenError, Gone, NotFound, ServerUnreachable, SignatureError,
                     Unauthorized)
from .identity import MAX_SKEW, Identity, parse_time, verify
from .fsutil import sha256_file
from .transfer import Transport

if TYPE_CHECKING:
    from .service import Server

log = logging.getLogger("distren.federation")

SYNC_INTERVAL = 3.0
IDLE_JOB_BACKOFF = 1.0
DOWN_ORIGIN_BACKOFF = 3.0
MAX_LOG_BYTES = 128 * 1024  # JSON escaping may grow it; signed bodies stay under 1 MiB


def check_address(address: str) -> str:
    """A peer's address is dialled automatically: accept only plain http(s)://HOST[:PORT]."""
    if not re.fullmatch(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", address):
        raise DistrenError(f"invalid server address {address!r}: expected http(s)://HOST[:PORT]")
    return address


def _tail(text: str, limit: int = MAX_LOG_BYTES) -> str:
    """The end of a log, at most ``limit`` bytes of UTF-8."""
    return text.encode()[-limit:].decode(errors="ignore")


def _hello_text(name: str, address: str, key: str, ts: str) -> bytes:
    return f"distren-hello\n{name}\n{address}\n{key}\n{ts}".encode()


def _announcement_text(ann: dict) -> bytes:
    return json.dumps({k: v for k, v in ann.items() if k != "signature"}, sort_keys=True).encode()


@dataclass
class RemoteWork:
    """A frame leased from another server."""

    origin: str
    address: str
    job: urls.JobURL
    jf: jobfile.JobFile
    bundle_sha256: str
    expires: float  # on this server's clock
    scene_dir: Path | None = None
    lost: threading.Event = field(default_factory=threading.Event)

    @property
    def frame(self) -> jobfile.Frame:
        return self.jf.frames[0]

    @property
    def path(self) -> str:
        return f"/fed/jobs/{self.job.job_id}/frames/{self.frame.id}"


class Federation:
    def __init__(self, server: Server, identity: Identity, advertise: str, lease_timeout: float,
                 peers: list[str]):
        self.server = server
        self.store = server.store
        self.life = server.life
        self.identity = identity
        self.address = advertise.rstrip("/")
        self.lease_timeout = lease_timeout
        self.configured_peers = [p.rstrip("/") for p in peers]
        self.transport = Transport(identity)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._relay = ThreadPoolExecutor(max_workers=4, thread_name_prefix="relay")
        self._backoff: dict[str, float] = {}
        self._backoff_lock = threading.Lock()
        self._result_lock = threading.Lock()
        self._cache_locks: dict[str, threading.Lock] = {}
        self._cache = server.settings.data / "cache"
        self._frame_sha: dict[tuple[int, int], str] = {}

    @property
    def name(self) -> str:
        return self.identity.name

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        # Renderers could not renew while we were down: give them a full lease to do so.
        self.life.extend_leases(time.time() + self.lease_timeout)
        for target in (self._sync_loop, self._reaper_loop):
            t = threading.Thread(target=target, name=target.__name__, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._relay.shutdown(wait=False, cancel_futures=True)
        for t in self._threads:
            t.join(timeout=5)
        self.transport.close()

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception:
                log.exception("sync with peers failed")
            self._stop.wait(SYNC_INTERVAL)

    def _reaper_loop(self) -> None:
        last_purge = 0.0
        while not self._stop.wait(0.5):
            try:
                now = time.time()
                for job_id, frame_id, who in self.life.expire_leases(now):
                    log.info("lease of %s on frame %s of job %s ran out", who, frame_id, job_id)
                if now - last_purge > 60:
                    self.store.purge_nonces(now)
                    last_purge = now
            except Exception:
                log.exception("lease reaper failed")

    # --- peering -------------------------------------------------------------------------

    def hello(self) -> dict:
        ts = f"{time.time():.3f}"
        return {"name": self.name, "address": self.address, "key": self.identity.public, "time": ts,
                "backends": backends.available(),
                "signature": self.identity.sign(_hello_text(self.name, self.address, self.identity.public, ts))}

    def _check_hello(self, body: dict) -> tuple[str, str, str]:
        try:
            name = urls.check_server_name(str(body["name"]))
            address, key, ts, sig = (str(body[k]) for k in ("address", "key", "time", "signature"))
        except (KeyError, TypeError):
            raise DistrenError("a hello needs name, address, key, time and signature") from None
        check_address(address)
        if abs(time.time() - parse_time(ts, "hello time")) > MAX_SKEW:
            raise SignatureError("hello is too old or from the future; check both clocks")
        verify(key, _hello_text(str(body["name"]), address, key, ts), sig)
        if name == self.name:
            raise Conflict(f"that server is named {name!r} too; server names must be unique")
        return name, address, key

    def accept_hello(self, body: dict) -> dict:
        name, address, key = self._check_hello(body)
        if self.store.pin_peer(name, address, key):
            log.info("new peer %s at %s", name, address)
        self.server.wake()
        return self.hello()

    def introduce(self, address: str) -> str:
        """Say hello to the server at ``address``; pin it. Returns its name."""
        address = check_address(address.rstrip("/"))
        try:
            resp = self.transport.http.post(address + "/fed/hello", json=self.hello())
        except Exception as e:
            raise ServerUnreachable(f"cannot reach {address}: {type(e).__name__}: {e}") from None
        if resp.status_code >= 400:
            try:
                msg = resp.json().get("error", resp.text)
            except ValueError:
                msg = resp.text
            raise (Conflict if resp.status_code == 409 else DistrenError)(f"{address} refused our hello: {msg}")
        name, _, key = self._check_hello(resp.json())
        self.store.pin_peer(name, address, key)
        return name

    def _known_address(self, name: str) -> str | None:
        return next((p["address"] for p in self.store.peers() if p["name"] == name), None)

    def _address(self, name: str) -> str:
        address = self._known_address(name)
        if address is None:
            raise NotFound(f"no known server {name!r}")
        return address

    # --- announcements -------------------------------------------------------------------

    def _announcement(self, job_id: int, active: bool) -> dict:
        job = self.store.get_job(job_id)
        jf, _ = self.server.jobfile(job_id)
        ann = {"job": str(self.server.job_url(job_id)), "origin": self.name, "address": self.address,
               "backends": backends.needed(jf),
               "key": self.identity.public, "bundle_sha256": self.server.bundle_sha256(job_id),
               "frames": len(self.store.frames(job_id)), "created": job.created, "active": active}
        ann["signature"] = self.identity.sign(_announcement_text(ann))
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
        verify(key, _announcement_text(ann), sig)
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
            self.server.wake()
        return news

    def state(self) -> dict:
        # Every live job, and the latest withdrawals; only records as their origin signed them.
        live = [a for a in self.store.announcements(active_only=True) if a["active"]]
        gone = [a for a in self.store.announcements(active_only=False) if not a["active"]][-1000:]
        return {"name": self.name, "slots": self.server.settings.slots, "backends": backends.available(),
                "rendering": self.server.rendering_now(), "announcements": live + gone}

    def sync_once(self) -> None:
        self._sync_peers()
        self.poll_remote_deps()

    def _sync_peers(self) -> None:
        known = {p["address"] for p in self.store.peers()}
        for address in self.configured_peers:
            if address not in known:
                try:
                    self.introduce(address)
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

    # --- renderer side -------------------------------------------------------------------

    def origins_with_work(self) -> list[str]:
        seen: dict[str, None] = {}
        for ann in self.store.announcements():
            if ann["origin"] != self.name and self._can_render(ann):
                seen.setdefault(ann["origin"])
        return list(seen)

    def _backing_off(self, key: str) -> bool:
        with self._backoff_lock:
            return self._backoff.get(key, 0) > time.monotonic()

    def _back_off(self, key: str, seconds: float) -> None:
        with self._backoff_lock:
            self._backoff[key] = time.monotonic() + seconds

    def lease_from(self, origin: str) -> RemoteWork | None:
        """Ask ``origin`` for a frame of its announced jobs, oldest job first."""
        if self._backing_off(origin):
            return None
        # Where the origin says it is now (its hello) beats where it was when it announced.
        known = self._known_address(origin)
        for ann in self.store.announcements():
            if ann["origin"] != origin or self._backing_off(ann["job"]) or not self._can_render(ann):
                continue
            job = urls.parse_job(ann["job"])
            address = known or ann["address"]
            try:
                work = self._lease(address, job)
            except (Gone, NotFound):  # finished, cancelled or deleted: never ask again
                self.store.forget_announcement(ann["job"])
                continue
            except Conflict as e:
                log.info("origin %s refused a lease on %s (%s)", origin, job, e)
                self._back_off(ann["job"], IDLE_JOB_BACKOFF)
                continue
            except Unauthorized:
                try:  # the origin may not know us yet: introduce ourselves, then ask again
                    self.introduce(address)
                    work = self._lease(address, job)
                except DistrenError as e:
                    log.info("origin %s refused a lease (%s)", origin, e)
                    self._back_off(origin, DOWN_ORIGIN_BACKOFF)
                    return None
            except DistrenError as e:
                log.info("origin %s unreachable (%s)", origin, e)
                self._back_off(origin, DOWN_ORIGIN_BACKOFF)
                return None
            if work is None:
                self._back_off(ann["job"], IDLE_JOB_BACKOFF)
                continue
            return work
        return None

    @staticmethod
    def _can_render(ann: dict) -> bool:
        needs = ann.get("backends")
        return isinstance(needs, list) and any(b in backends.available() for b in needs)

    def _lease(self, address: str, job: urls.JobURL) -> RemoteWork | None:
        # What this server can render goes with the request (signed, in the query): the origin
        # grants only frames of those backends.
        can = ",".join(backends.available())
        resp = self.transport.call("POST", address, f"/fed/jobs/{job.job_id}/lease?can={can}", retries=0,
                                   timeout=10, to=job.server)
        if resp.status_code == 204:
            return None
        jf = jobfile.loads(resp.content)
        sha, expires = resp.headers.get("X-Distren-Bundle-SHA256"), resp.headers.get("X-Distren-Lease-Expires")
        if jf.name != str(job) or len(jf.frames) != 1 or not sha or not expires:
            raise DistrenError(f"{address} answered a lease for {job} with something else than one frame of it")
        try:  # the lease's length by the origin's clock, turned into an expiry on ours
            now = resp.headers.get("X-Distren-Now")
            granted = float(expires) - (float(now) if now else time.time())
        except ValueError:
            raise DistrenError(f"{address} answered a lease with a malformed expiry {expires!r}") from None
        return RemoteWork(job.server, address, job, jf, sha, time.time() + granted)

    def scene_for(self, work: RemoteWork) -> Path:
        """The job's scene, fetched once per bundle (cached by content hash) and verified."""
        sha = work.bundle_sha256
        scene = self._cache / "scenes" / sha
        with self._cache_locks.setdefault(sha, threading.Lock()):
            if not scene.is_dir():
                tar = self._cache / "bundles" / f"{sha}.tar"
                if not tar.exists():
                    self.transport.download(work.address, f"/fed/jobs/{work.job.job_id}/bundle", tar, sha,
                                            to=work.origin)
                unpacked = self._cache / "scenes" / f".{sha}.unpacked"
                shutil.rmtree(unpacked, ignore_errors=True)
                bundle.extract(tar, unpacked)
                os.replace(unpacked / "scene", scene)
                shutil.rmtree(unpacked, ignore_errors=True)
        return scene

    def keep_lease(self, work: RemoteWork, done: threading.Event, on_lost) -> None:
        """Renew ``work``'s lease until ``done``; call ``on_lost`` if the origin says it is gone."""
        # The origin's lease timeout rules, not ours: renew at a third of what it granted.
        interval = max(0.2, (work.expires - time.time()) / 3)
        while not done.wait(interval):
            try:
                resp = self.transport.call("POST", work.address, work.path + "/renew", retries=0, timeout=5,
                                           to=work.origin)
                # What the origin granted, measured on our clock (clocks may differ).
                interval = max(0.2, self._granted(resp) / 3)
            except (Conflict, Gone, NotFound, Unauthorized) as e:
                log.warning("lost the lease on %s/frame/%s: %s", work.job, work.frame.id, e)
                work.lost.set()
                on_lost()
                return
            except (DistrenError, ValueError, KeyError):
                pass  # origin down (or a garbled answer): keep rendering; it extends leases when back

    @staticmethod
    def _granted(resp) -> float:
        """Seconds of lease the origin granted: its expiry less its own clock (X-Distren-Now)."""
        expires = float(resp.json()["expires"])
        sent = resp.headers.get("X-Distren-Now")
        return expires - (float(sent) if sent else time.time())

    def deliver(self, work: RemoteWork, frame_tar: Path, log_text: str) -> None:
        self.transport.call("POST", work.address, work.path + "/log", {"log": _tail(log_text)},
                            retries=30, to=work.origin)
        self.transport.upload(work.address, work.path + "/result", frame_tar, to=work.origin)

    def report_failure(self, work: RemoteWork, reason: str, log_text: str) -> None:
        self.transport.call("POST", work.address, work.path + "/failed",
                            {"reason": reason[:4096], "log": _tail(log_text)}, retries=30, to=work.origin)

    # --- dependencies on other servers' frames ---------------------------------------------

    def remote_frame_state(self, target: urls.FrameURL, where: str = "", retries: int = 1) -> dict:
        """Ask a frame's origin how it is; refuse frames and servers that do not exist."""
        prefix = f"{where}: " if where else ""
        if self.store.peer_key(target.server) is None:
            raise NotFound(f"{prefix}server {target.server!r} is not known here; peer with it first "
                           "(`distren peers add URL`)")
        address = self._address(target.server)
        try:
            return self.transport.call("GET", address, f"/fed/jobs/{target.job_id}/frames/{target.frame_id}",
                                       retries=retries, timeout=10, to=target.server).json()
        except NotFound:
            raise NotFound(f"{prefix}{target} does not exist on {target.server}") from None
        except DistrenError as e:
            raise ServerUnreachable(f"{prefix}cannot check {target}: {e}") from None

    def fetch_frame_files(self, target: urls.FrameURL) -> Path:
        """A finished frame's tarball from the server that holds it; cached (a done frame never
        changes and ids are never reused, so its URL names its content for good)."""
        path = self._cache / "frames" / target.server / f"{target.job_id}-{target.frame_id}.tar"
        with self._cache_locks.setdefault(str(target), threading.Lock()):
            if not path.exists():
                state = self.remote_frame_state(target)
                if state.get("state") != states.DONE:
                    raise DistrenError(f"dependency {target} is {state.get('state')}, not done")
                self.transport.download(self._address(target.server),
                                        f"/fed/jobs/{target.job_id}/frames/{target.frame_id}/files", path,
                                        state.get("sha256"), to=target.server)
        return path

    def poll_remote_deps(self) -> None:
        for dep in self.store.remote_deps_pending():
            try:
                st = self.remote_frame_state(urls.parse_frame(dep), retries=0)
            except DistrenError as e:
                log.debug("cannot check %s: %s", dep, e)
                continue
            state = st.get("state")
            if state == states.DONE:
                self.life.dependency(dep, "done", "done")
                self.server.wake()
            elif state in (states.FAILED, states.BLOCKED) or st.get("job_state") == states.CANCELLED:
                self.life.dependency(dep, "stuck", f"{dep} {state}: {st.get('reason', '')}")
            else:
                self.life.dependency(dep, "waiting", "")

    def frame_state(self, job_id: int, frame_id: int) -> dict:
        job = self.store.get_job(job_id)
        row = self.store.frame(job_id, frame_id)
        out = {"url": self.store.frame_url(job_id, frame_id), "state": row.state, "reason": row.reason,
               "job_state": job.state, "server": row.server}
        if row.state == states.DONE:  # a done frame never changes: hash its tarball once
            key = (job_id, frame_id)
            if key not in self._frame_sha:
                self._frame_sha[key] = sha256_file(self.store.frame_tar(job_id, frame_id))
            out["sha256"] = self._frame_sha[key]
        return out

    # --- origin side ---------------------------------------------------------------------

    def _own_job(self, job_id: int):
        job = self.store.get_job(job_id)
        # A failed job is not gone: a user may retry its frames.
        if job.state in (states.DONE, states.CANCELLED):
            raise Gone(f"{self.server.job_url(job_id)} is {job.state}")
        return job

    def grant_lease(self, sender: str, job_id: int, nonce: tuple[str, float] | None = None,
                    can: set[str] | None = None) -> tuple[bytes, str, float] | None:
        """A frame of ``job_id`` for ``sender``, of one of the backends it ``can`` render."""
        expires = time.time() + self.lease_timeout
        renderer = str(urls.ServerURL(sender))
        by_backend = self._frames_by_backend(job_id)
        skip = [fid for b, ids in by_backend.items() if can is not None and b not in can for fid in ids]
        claim = None
        if can is None or can & by_backend.keys():
            claim = self.life.claim(renderer, job_id, lease_expires=expires, nonce=nonce, skip=skip)
        if claim is None:
            self._own_job(job_id)  # gone or unknown: say so; otherwise nothing is ready
            return None
        jf, frames = self.server.jobfile(job_id)
        return (jobfile.lease_xml(jf, replace(frames[claim[1]], server=renderer)),
                self.server.bundle_sha256(job_id), expires)

    @functools.lru_cache(maxsize=64)  # noqa: B019 (one Federation per server, jobs never change)
    def _frames_by_backend(self, job_id: int) -> dict[str, tuple[int, ...]]:
        jf, _ = self.server.jobfile(job_id)
        out: dict[str, list[int]] = {}
        for f in jf.frames:
            out.setdefault(f.backend(jf.type), []).append(f.id)
        return {b: tuple(ids) for b, ids in out.items()}

    def _leased_to(self, sender: str, job_id: int, frame_id: int):
        row = self.store.frame(job_id, frame_id)
        if row.state != states.RENDERING or row.server != str(urls.ServerURL(sender)):
            raise Conflict(f"frame {frame_id} of {self.server.job_url(job_id)} is not leased to {sender} "
                           f"(it is {row.state}{' on ' + row.server if row.server else ''})")
        return row

    def leased_to_or_done(self, sender: str, job_id: int, frame_id: int) -> None:
        """Refuse an upload early unless it could be accepted (or is a harmless duplicate)."""
        if self.store.frame(job_id, frame_id).state != states.DONE:
            self._own_job(job_id)
            self._leased_to(sender, job_id, frame_id)

    def renew(self, sender: str, job_id: int, frame_id: int) -> float:
        self._own_job(job_id)
        expires = time.time() + self.lease_timeout
        self.life.renew(job_id, frame_id, str(urls.ServerURL(sender)), expires)
        return expires

    def accept_log(self, sender: str, job_id: int, frame_id: int, text: str) -> None:
        self._own_job(job_id)
        self._leased_to(sender, job_id, frame_id)
        self.server.append_log(job_id, frame_id, f"==== distren: log from {sender}\n{text}")

    def accept_failure(self, sender: str, job_id: int, frame_id: int, reason: str, text: str) -> None:
        self._own_job(job_id)
        self._leased_to(sender, job_id, frame_id)
        self.server.append_log(job_id, frame_id, f"==== distren: failed on {sender}\n{text}")
        # Checked again, with the decision, in one transaction: the lease may run out meanwhile.
        self.life.render_failed(job_id, frame_id, str(urls.ServerURL(sender)), reason,
                                self.server.settings.max_attempts)

    def accept_result(self, sender: str, job_id: int, frame_id: int, tar: Path) -> str:
        """Check an uploaded frame tarball and mark the frame done. Idempotent: a frame that is
        already done stays exactly as it is. What is kept is not the upload but a tarball written
        here of exactly the files the frame makes, under their plain names."""
        row = self.store.frame(job_id, frame_id)
        if row.state == states.DONE:
            return "already done"
        self._own_job(job_id)  # a cancelled job takes no more results
        self._leased_to(sender, job_id, frame_id)
        jf, frames = self.server.jobfile(job_id)
        staged = tar.parent / f"{tar.name}.d"
        try:
            files = self.check_frame_tar(jf, frames[frame_id], job_id, tar, staged / "files")
            kept = staged / "frame.tar"
            bundle.write_tar(kept, [(f["name"], staged / "files" / f["name"]) for f in files])
            with self._result_lock:
                row = self.store.frame(job_id, frame_id)
                if row.state == states.DONE:
                    return "already done"
                self._leased_to(sender, job_id, frame_id)
                dest = self.store.frame_tar(job_id, frame_id)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(kept, dest)
                last = self.life.finish(job_id, frame_id, str(urls.ServerURL(sender)), files)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        if last:
            threading.Thread(target=self.server.rebundle, args=(job_id,), daemon=True).start()
        return "accepted"

    def check_frame_tar(self, jf: jobfile.JobFile, frame: jobfile.Frame, job_id: int, tar: Path,
                        unpack_to: Path) -> list[dict]:
        """Unpack a peer's frame tarball into ``unpack_to`` and check it: exactly the files the
        frame's backend makes (no other frame's, nothing else), none larger than it can be, all
        of them within --max-result-bytes (by the headers before anything is written, and by
        the bytes while writing), every image decoded whole in the sandbox. Returns the files."""
        backend = backends.get(frame.backend(jf.type))
        expected = backend.expected_files(jf, frame, self.store.scene_dir(job_id))
        limit = self.server.settings.max_result_bytes
        only = {n: min(limit, largest_file(n, jf.width, jf.height, limit)) for n in expected}
        names = bundle.extract(tar, unpack_to, bundle.Limits(members=1000, total_bytes=limit, only=only),
                               where="frame tarball")
        missing = [n for n in expected if n not in names]
        if missing:
            raise BundleError(f"frame tarball: lacks {', '.join(missing)}, which frame/{frame.id} makes")
        self.check_images(unpack_to, [n for n in expected if Path(n).suffix.lower() in images.SUFFIXES],
                          jf.width, jf.height)
        return [{"name": n, "size": (unpack_to / n).stat().st_size, "sha256": sha256_file(unpack_to / n)}
                for n in expected]

    def check_images(self, folder: Path, names: list[str], width: int, height: int) -> None:
        """Decode each image completely, in the sandbox (decoding is parsing hostile data), with
        the files mounted read-only into an otherwise empty working folder."""
        if not names:
            return
        sandbox.check()  # an origin with --slots 0 may have none: then it takes no images (503)
        work = folder.parent / f"{folder.name}.check"
        log = folder.parent / f"{folder.name}.check.log"
        work.mkdir()
        for n in names:  # mount points for the read-only files
            (work / n).parent.mkdir(parents=True, exist_ok=True)
            (work / n).touch()
        argv, binds = sandbox.python_command("distren.images", [str(width), str(height), *names])
        limits = replace(self.server.settings.limits, wall=min(self.server.settings.limits.wall, 600.0))
        out = sandbox.run(argv, work, limits, log, shared={n: folder / n for n in names}, binds=binds)
        if out.ok:
            return
        said = [ln.removeprefix("distren-image-error: ") for ln in out.tail.splitlines()
                if ln.startswith("distren-image-error: ")]
        if said:
            raise images.ImageError(f"frame tarball: {said[-1]}")
        why = out.reason or f"exit {out.returncode}: {out.tail.strip()[-300:]}"
        raise images.ImageError(f"frame tarball: its images could not be checked ({why})")


IMAGE_BYTES_PER_PIXEL = 16  # EXR, float RGBA, uncompressed: the largest an image POV-Ray writes can be
IMAGE_FORMATS = images.SUFFIXES | {".exr", ".hdr"}


def largest_file(name: str, width: int, height: int, limit: int) -> int:
    """The largest a file of a frame can be: an image of the job's size has a bound (so a
    small compressed upload cannot unpack to gigabytes under an image's name); a movie has
    only the server's --max-result-bytes."""
    if Path(name).suffix.lower() in IMAGE_FORMATS:
        return IMAGE_BYTES_PER_PIXEL * width * height + 8 * height + (1 << 20)
    return limit
