"""The renderer's side of a lease: rendering frames of other servers' jobs.

A renderer with an idle slot asks an origin that announced work for a frame (:meth:`lease_from`).
The origin answers with a distrenjob.xml holding that frame, naming the renderer as its server.
The renderer fetches the job's bundle once per content hash, renews the lease while it renders,
then sends the frame's log and tarball (or reports the failure). It also asks other servers how
the frames its own jobs depend on are, and fetches their files once they are done.

The origin's side is :mod:`distren.origin`; the protocol is in docs/protocol.md.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import backends, jobfile, states, urls
from .backoff import Backoff
from .errors import Conflict, DistrenError, Forbidden, Gone, NotFound, ServerUnreachable, Unauthorized
from .scenes import Scenes

if TYPE_CHECKING:
    from .lifecycle import Lifecycle
    from .store import Store
    from .transfer import Transport

log = logging.getLogger("distren.renderer")

IDLE_JOB_BACKOFF = 1.0
DOWN_ORIGIN_BACKOFF = 3.0  # doubled with each failure in a row...
MAX_ORIGIN_BACKOFF = 300.0  # ...up to this
REFUSED_BACKOFF = 5.0  # an origin that refuses us for now (e.g. we await approval by its admin)
LONG_POLL, LONG_POLL_SLACK = 20.0, 5.0  # an idle asker waits at the origin (+ slack on the wire)
ASKERS = 16  # lease questions in flight at once, each to a different origin
MAX_LOG_BYTES = 128 * 1024  # JSON escaping may grow it; signed bodies stay under 1 MiB


def _tail(text: str, limit: int = MAX_LOG_BYTES) -> str:
    """The end of a log, at most ``limit`` bytes of UTF-8."""
    return text.encode()[-limit:].decode(errors="ignore")


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
    lost: threading.Event = field(default_factory=threading.Event)  # the origin took it back
    done: threading.Event = field(default_factory=threading.Event)  # delivered or given up: stop renewing
    on_lost: Callable[[], None] | None = None  # set by the slot that renders it: stop the render

    def kill(self) -> None:
        if self.on_lost is not None:
            self.on_lost()

    @property
    def frame(self) -> jobfile.Frame:
        return self.jf.frames[0]

    @property
    def path(self) -> str:
        return f"/fed/jobs/{self.job.job_id}/frames/{self.frame.id}"


class Renderer:
    def __init__(self, name: str, store: Store, life: Lifecycle, transport: Transport, cache: Path,
                 known_address: Callable[[str], str | None], introduce: Callable[[str], str],
                 wake: Callable[[], None], slots: int | Callable[[], int] = 1):
        """``known_address``: where a peer says it is now; ``introduce``: say hello to an
        address (an origin that does not know us yet); ``wake``: a dependency is done;
        ``slots``: the renders we can run now (a number, or asked each time), which cap the
        leases an origin grants us."""
        self.name = name
        self.slots = slots if callable(slots) else lambda: slots
        self.store = store
        self.life = life
        self.transport = transport
        self.known_address = known_address
        self.introduce = introduce
        self.wake = wake
        self._cache = cache
        self.scenes = Scenes(cache, transport, known_address, introduce)
        self._origins = Backoff(DOWN_ORIGIN_BACKOFF, MAX_ORIGIN_BACKOFF)  # origins that failed to answer
        self._jobs = Backoff(IDLE_JOB_BACKOFF, IDLE_JOB_BACKOFF)  # jobs with no frame for us just now
        self._asks: dict[str, Future] = {}
        self._asks_lock = threading.Lock()
        self._askers = ThreadPoolExecutor(max_workers=ASKERS, thread_name_prefix="lease")

    # --- asking for a lease ----------------------------------------------------------------

    def _by_priority(self) -> list[dict]:
        """The announced jobs, highest priority first (clamped to what an origin may set), the
        earliest heard of among equals."""
        def priority(a):
            return max(-1000, min(1000, p)) if type(p := a.get("priority")) is int else 0  # not a bool
        return sorted(self.store.announcements(), key=lambda a: -priority(a))

    def origins_with_work(self) -> list[str]:
        seen: dict[str, None] = {}
        for ann in self._by_priority():
            if ann["origin"] != self.name and self._can_render(ann):
                seen.setdefault(ann["origin"])
        return list(seen)

    def lease_from(self, origin: str, wait: float = 0.0) -> RemoteWork | None:
        """A frame of ``origin``'s announced jobs (by priority, then oldest), if it has one for us now.

        The question goes to the origin on an asker thread, never on the slot: the slot waits
        at most ``wait`` seconds for the answer, then goes on to other origins (an origin that is
        paused, dead or a tarpit costs a slot that much once, then backs off, longer each time it
        fails). An answer that comes later waits for the next slot that comes to this origin (it
        wakes the idle ones). One question per origin at a time."""
        if self._origins.waiting(origin):
            return None
        with self._asks_lock:
            ask = self._asks.get(origin)
            if ask is None:
                ask = self._asks[origin] = self._askers.submit(self._ask, origin)
                ask.add_done_callback(lambda _: self.wake())
            elif not ask.done():
                return None  # still asking (a slow origin): no slot waits on it twice
        try:
            work = ask.result(timeout=wait)
        except FutureTimeout:
            return None
        with self._asks_lock:
            if self._asks.get(origin) is not ask:
                return None  # another slot took this answer
            del self._asks[origin]
        if work is not None and work.lost.is_set():  # it waited, renewed, but the origin took it back
            work.done.set()
            return None
        return work

    def stop(self) -> None:
        self._askers.shutdown(wait=False, cancel_futures=True)

    def _ask(self, origin: str) -> RemoteWork | None:
        """On an asker thread: a lease from ``origin``, and its scene ready to render."""
        try:
            work = self._lease_any(origin)
        except Exception:
            log.exception("asking %s for a lease failed", origin)
            self._origins.failed(origin)
            return None
        if work is None:
            return None
        # The lease is kept from the moment it is granted, and the scene fetched here, so that a
        # slot only ever gets work it can render at once.
        threading.Thread(target=self.keep_lease, args=(work, work.done, work.kill), daemon=True,
                         name=f"renew-{work.job.server}-{work.job.job_id}-{work.frame.id}").start()
        try:
            work.scene_dir = self.scene_for(work)
        except Exception as e:
            if not isinstance(e, DistrenError):
                log.exception("fetching the scene of %s failed", work.job)
            if not work.lost.is_set():
                try:
                    self.report_failure(work, f"fetching the scene failed: {e}", "", retries=2)
                except DistrenError as e2:
                    log.warning("could not report the failure of %s/frame/%s: %s", work.job, work.frame.id, e2)
            work.done.set()
            self._origins.failed(origin)
            return None
        self._prefetch(work.jf, work.frame)
        return work

    def _prefetch(self, jf: jobfile.JobFile, frame: jobfile.Frame) -> None:
        """The files of the frames ``frame`` depends on that live on other servers, fetched here
        (off the slot) into the cache the slot reads them from."""
        mine = urls.FrameURL(jf.job_url.server, jf.job_url.job_id, frame.id)
        for dep in frame.deps:
            target = urls.resolve_frame(dep, jf.job_url)
            if target.server == self.name:
                continue
            try:
                self.fetch_frame_files(target, mine)
            except DistrenError as e:  # the slot tries again, and fails the frame if it must
                log.info("could not fetch %s ahead of its render: %s", target, e)

    def _lease_any(self, origin: str) -> RemoteWork | None:
        # Where the origin says it is now (its hello) beats where it was when it announced.
        known = self.known_address(origin)
        anns = [ann for ann in self._by_priority()
                if ann["origin"] == origin and not self._jobs.waiting(ann["job"]) and self._can_render(ann)]
        for n, ann in enumerate(anns):
            job = urls.parse_job(ann["job"])
            address = known or ann["address"]
            wait = LONG_POLL if n == len(anns) - 1 else 0.0  # the last one waits there for work
            try:
                work, woken = self._lease_waiting(address, job, wait)
            except (Gone, NotFound):  # finished, cancelled or deleted: never ask again
                self._origins.succeeded(origin)
                self.store.forget_announcement(ann["job"])
                continue
            except Conflict as e:
                self._origins.succeeded(origin)
                log.info("origin %s refused a lease on %s (%s)", origin, job, e)
                self._jobs.pause(ann["job"], IDLE_JOB_BACKOFF)
                continue
            except Unauthorized:
                try:  # the origin may not know us yet: introduce ourselves, then ask again
                    self.introduce(address)
                    work, woken = self._lease_waiting(address, job)
                except DistrenError as e:
                    log.info("origin %s refused a lease (%s)", origin, e)
                    self._origins.failed(origin)
                    return None
            except Forbidden as e:  # e.g. we await approval by its admin: ask again later, not at once
                log.info("origin %s refused a lease (%s)", origin, e)
                self._origins.pause(origin, REFUSED_BACKOFF)
                return None
            except DistrenError as e:
                log.info("origin %s unreachable (%s); asking again in %.0f s", origin, e,
                         self._origins.failed(origin))
                return None
            self._origins.succeeded(origin)
            if work is not None:
                return work
            if woken:  # something changed at the origin: its jobs are worth asking again now
                for other in anns:
                    self._jobs.succeeded(other["job"])
            else:
                self._jobs.pause(ann["job"], IDLE_JOB_BACKOFF)
        return None

    @staticmethod
    def _can_render(ann: dict) -> bool:
        needs = ann.get("backends")
        return isinstance(needs, list) and any(b in backends.available() for b in needs)

    def _lease(self, address: str, job: urls.JobURL) -> RemoteWork | None:
        return self._lease_waiting(address, job)[0]

    def _lease_waiting(self, address: str, job: urls.JobURL, wait: float = 0.0) -> tuple[RemoteWork | None, bool]:
        """A lease of a frame of ``job``, or None; and whether the origin, asked to ``wait`` for
        work, was woken by a change (then its other jobs may have work now)."""
        # What this server can render and its slots go with the request (signed, in the query):
        # the origin grants only frames of those backends, and at most that many. The request
        # id makes asking again safe: a retry whose first answer was lost gets the same frame.
        sha = self._announced_bundle(job)
        can = ",".join(backends.available())
        path = f"/fed/jobs/{job.job_id}/lease?can={can}&slots={self.slots()}&request={secrets.token_hex(16)}"
        if wait:
            path += f"&wait={wait:g}"
        # A hung origin costs this asker (never a slot) wait + LONG_POLL_SLACK, twice at most.
        resp = self.transport.call("POST", address, path, retries=1 if wait else 2,
                                   timeout=wait + LONG_POLL_SLACK if wait else 10, to=job.server)
        if resp.status_code == 204:
            return None, resp.headers.get("X-Distren-Woken") == "1"
        jf = jobfile.loads(resp.content)
        expires = resp.headers.get("X-Distren-Lease-Expires")
        if jf.name != str(job) or len(jf.frames) != 1 or not expires:
            raise DistrenError(f"{address} answered a lease for {job} with something else than one frame of it")
        try:  # the lease's length by the origin's clock, turned into an expiry on ours
            now = resp.headers.get("X-Distren-Now")
            granted = float(expires) - (float(now) if now else time.time())
        except ValueError:
            raise DistrenError(f"{address} answered a lease with a malformed expiry {expires!r}") from None
        return RemoteWork(job.server, address, job, jf, sha, time.time() + granted), False

    def _announced_bundle(self, job: urls.JobURL) -> str:
        """The bundle's hash as the origin signed it in its announcement (the lease answer's
        header is not signed, so it is not what a downloaded scene is checked against)."""
        for ann in self.store.announcements():
            if ann.get("job") == str(job) and isinstance(ann.get("bundle_sha256"), str):
                return ann["bundle_sha256"]
        raise DistrenError(f"no signed announcement of {job} here: its scene cannot be checked")

    # --- while rendering -------------------------------------------------------------------

    def scene_for(self, work: RemoteWork) -> Path:
        """The job's scene, fetched once per bundle (cached by content hash) and verified."""
        return self.scenes.scene(work.bundle_sha256, lambda tar: self.scenes.fetch(
            work.origin, work.address, work.job.job_id, work.bundle_sha256, tar))

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

    def report_failure(self, work: RemoteWork, reason: str, log_text: str, retries: int = 30) -> None:
        self.transport.call("POST", work.address, work.path + "/failed",
                            {"reason": reason[:4096], "log": _tail(log_text)}, retries=retries, to=work.origin)

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
                                       retries=retries, timeout=5, to=target.server).json()
        except NotFound:
            raise NotFound(f"{prefix}{target} does not exist on {target.server}") from None
        except DistrenError as e:
            raise ServerUnreachable(f"{prefix}cannot check {target}: {e}") from None

    def _address(self, name: str) -> str:
        address = self.known_address(name)
        if address is None:
            raise NotFound(f"no known server {name!r}")
        return address

    def fetch_frame_files(self, target: urls.FrameURL, for_frame: urls.FrameURL | None = None) -> Path:
        """A finished frame's tarball from the server that holds it; cached (a done frame never
        changes and ids are never reused, so its URL names its content for good). ``for_frame``:
        the frame depending on it that we render, which its origin vouches for (need to know)."""
        path = self._cache / "frames" / target.server / f"{target.job_id}-{target.frame_id}.tar"
        query = "" if for_frame is None else (f"?for_server={for_frame.server}&for_job={for_frame.job_id}"
                                              f"&for_frame={for_frame.frame_id}")
        with self.scenes.lock(str(target)):
            if not path.exists():
                state = self.remote_frame_state(target)
                if state.get("state") != states.DONE:
                    raise DistrenError(f"dependency {target} is {state.get('state')}, not done")
                self.transport.download(self._address(target.server),
                                        f"/fed/jobs/{target.job_id}/frames/{target.frame_id}/files{query}", path,
                                        state.get("sha256"), to=target.server)
        return path

    def vouched(self, dependent: urls.FrameURL, server: str, dep: urls.FrameURL) -> bool:
        """Ask ``dependent``'s origin whether ``server`` renders it and it depends on ``dep``
        (a frame of ours), so that ``server`` may read ``dep``'s files here."""
        address = self.known_address(dependent.server)
        if address is None:
            return False
        try:
            self.transport.call("GET", address, f"/fed/jobs/{dependent.job_id}/frames/{dependent.frame_id}/vouch"
                                f"?server={server}&job={dep.job_id}&frame={dep.frame_id}", retries=0, timeout=5,
                                to=dependent.server)
            return True
        except DistrenError as e:
            log.info("%s does not vouch for %s reading %s: %s", dependent.server, server, dep, e)
            return False

    def poll_remote_deps(self) -> None:
        """How the other servers' frames our frames wait for are (on the sync thread)."""
        for dep in self.store.remote_deps_pending():
            target = urls.parse_frame(dep)
            if self._origins.waiting(target.server):
                continue  # it did not answer: one wait per back-off, not one per frame of it
            try:
                st = self.remote_frame_state(target, retries=0)
            except DistrenError as e:
                log.debug("cannot check %s: %s", dep, e)
                if isinstance(e, ServerUnreachable):
                    self._origins.failed(target.server)
                continue
            state = st.get("state")
            if state == states.DONE:
                self.life.dependency(dep, "done", "done")
                self.wake()
            elif state in (states.FAILED, states.BLOCKED) or st.get("job_state") == states.CANCELLED:
                self.life.dependency(dep, "stuck", f"{dep} {state}: {st.get('reason', '')}")
            else:
                self.life.dependency(dep, "waiting", "")
