"""The origin's side of a lease: lending frames of this server's jobs to other servers.

A renderer with an idle slot asks for a frame. The origin leases one ready frame of a backend
the renderer can run for ``lease_timeout`` seconds and answers with a distrenjob.xml holding
that frame, naming the renderer as its server. The renderer renews the lease while it renders,
sends the log and the frame's tarball (or reports the failure); the origin checks the tarball
(:mod:`distren.uploads`, against what the frame's backend makes) and marks the frame done -
once. A reaper thread ends leases that were not renewed in time. Other servers' frames that
depend on ours ask here how our frames are, and fetch their files.

Every change of a frame's state is made by :mod:`distren.lifecycle`; the renderer's side is
:mod:`distren.renderer`; the protocol is in docs/protocol.md.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import backends, bundle, bundleshare, checkers, jobfile, states, uploads, urls
from .longpoll import Waiters
from .errors import Conflict, DistrenError, Forbidden, Gone
from .fsutil import sha256_file

if TYPE_CHECKING:
    from .jobs import JobFiles
    from .lifecycle import Lifecycle
    from .sandbox import Limits
    from .store import Store
    from .verification import Verifier

log = logging.getLogger("distren.origin")


MAX_SLOTS = 1024  # what a renderer may say it has; more is a lie, or not one server
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Origin:
    def __init__(self, url: urls.ServerURL, store: Store, life: Lifecycle, jobfiles: JobFiles,
                 lease_timeout: float, max_attempts: int, limits: Limits, max_result_bytes: int,
                 rebundle: Callable[[int], None], verifier: Verifier, blocklist_threshold: int = 3,
                 vouched: Callable[[urls.FrameURL, str, urls.FrameURL], bool] = lambda *a: False,
                 sign: Callable[[bytes], str] | None = None):
        """``limits``: what checking an upload's images in the sandbox may use, and, its wall
        time, how long a frame may stay leased; ``rebundle(job_id)``: collect a job whose last
        frame is done into its result; ``verifier``: checks a share of renderers' pixels, and
        who is trusted; ``blocklist_threshold``: frames of a job a renderer may
        fail or let run out before it gets none of them; ``vouched(frame, server, dep)``: does
        ``frame``'s origin say that ``server`` renders it and that it depends on ``dep``;
        ``sign``: signs with this server's key (grants to fetch a bundle from a peer)."""
        self.url = url
        self.store = store
        self.life = life
        self.jobfiles = jobfiles
        self.lease_timeout = lease_timeout
        self.max_attempts = max_attempts
        self.blocklist_threshold = blocklist_threshold
        self.vouched = vouched
        self.limits = limits
        self.checkers = checkers.Checkers(limits)
        self.max_result_bytes = max_result_bytes
        self.rebundle = rebundle
        self.verifier = verifier
        self._result_lock = threading.Lock()
        self._frame_sha: dict[tuple[int, int, float | None], str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.waiters = Waiters()  # lease requests waiting for work (api/servers.py)
        self.sign = sign
        self.sends = bundleshare.Sends(bundleshare.ORIGIN_SENDS)  # bundles being sent (api/servers.py)
        self.holders = bundleshare.Holders()  # who got which bundle in full
        life.bus.subscribe(self.waiters.on_change)

    def start(self) -> None:
        # Renderers could not renew while we were down: give them a full lease to do so.
        self.life.extend_leases(time.time() + self.lease_timeout)
        self._thread = threading.Thread(target=self._reaper_loop, name="reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.checkers.close()

    def _reaper_loop(self) -> None:
        last_purge = 0.0
        while not self._stop.wait(0.5):
            try:
                now = time.time()
                for job_id, frame_id, who in self.life.expire_leases(now, self.blocklist_threshold):
                    log.info("lease of %s on frame %s of job %s ran out", who, frame_id, job_id)
                if now - last_purge > 60:
                    self.store.purge_nonces(now)
                    last_purge = now
            except Exception:
                log.exception("lease reaper failed")

    # --- leases --------------------------------------------------------------------------

    def own_job(self, job_id: int):
        """A job of ours that still takes work; a finished or cancelled one is gone."""
        job = self.store.get_job(job_id)
        # A failed job is not gone: a user may retry its frames.
        if job.state in (states.DONE, states.CANCELLED):
            raise Gone(f"{self.url.job(job_id)} is {job.state}")
        return job

    def _slots_of(self, sender: str, stated: str | None = None) -> int:
        """How many leases ``sender`` may hold here: the slots it states in its ``/fed/state``
        (synced), else in its lease request, else one."""
        known = self.store.peer_slots(sender)
        if known is None and stated is not None:
            try:
                known = int(stated)
            except ValueError:
                raise DistrenError(f"malformed lease request: slots={stated[:20]!r} is not a number") from None
        return max(0, min(MAX_SLOTS, 1 if known is None else known))

    def grant_lease(self, sender: str, job_id: int, nonce: tuple[str, float] | None = None,
                    can: set[str] | None = None, request: str | None = None,
                    slots: str | None = None) -> tuple[bytes, str, float] | None:
        """A frame of ``job_id`` for ``sender``, of one of the backends it ``can`` render.
        ``request``: the renderer's id for this request (asked again, the same frame);
        ``slots``: what the request says the renderer has (its synced state wins)."""
        if request is not None and not REQUEST_ID.fullmatch(request):
            raise DistrenError("malformed lease request: request= must be 1 to 64 letters, digits, '-' or '_'")
        self.verifier.may_lease(sender)
        expires = time.time() + min(self.lease_timeout, self.limits.wall)
        renderer = str(urls.ServerURL(sender))
        by_backend = self.jobfiles.by_backend(job_id)
        skip = [fid for b, ids in by_backend.items() if can is not None and b not in can for fid in ids]
        claim = None
        if can is None or can & by_backend.keys():
            claim = self.life.lease(renderer, job_id, expires, nonce, skip, self._slots_of(sender, slots), request)
        if claim is None:
            self.own_job(job_id)  # gone or unknown: say so; otherwise nothing is ready
            return None
        jf, frames = self.jobfiles.get(job_id)
        return (jobfile.lease_xml(jf, replace(frames[claim[1]], server=renderer)),
                self.jobfiles.bundle_sha256(job_id), expires)

    def _need_to_know(self, sender: str, job_id: int, what: str) -> None:
        if not self.store.holds_lease(job_id, str(urls.ServerURL(sender))):
            raise Forbidden(f"need to know: {sender} holds no lease on {self.url.job(job_id)}, and {what} goes "
                            "only to servers rendering its frames; ask for a lease first")

    def bundle(self, sender: str, job_id: int) -> tuple[Path, str]:
        """A job's bundle for a renderer that holds a lease on it, and its hash; only while
        the job takes work."""
        self._need_to_know(sender, job_id, "its scene")  # first: a stranger learns nothing of the job
        self.own_job(job_id)
        return self.store.seed_path(job_id), self.jobfiles.bundle_sha256(job_id)

    def bundle_sent(self, sha: str, sender: str) -> None:
        """A bundle went out to ``sender`` in full: it holds it now."""
        log.info("sent bundle %s... to %s", sha[:12], sender)
        self.holders.add(sha, sender)

    def bundle_peers(self, sender: str, job_id: int) -> dict:
        """For a renderer that holds a lease on the job: the servers that hold its bundle, and
        a grant that lets it fetch the bundle from them (bundleshare.py)."""
        path, sha = self.bundle(sender, job_id)
        peers = []
        for name in self.holders.of(sha):
            pin = self.store.peer_pin(name)
            if name != sender and pin is not None:
                peers.append({"name": name, "address": pin[2]})
        grant = bundleshare.make_grant(self.sign, self.url.name, job_id, sha, sender) if self.sign else None
        return {"sha256": sha, "peers": peers, "grant": grant}

    def _leased_to(self, sender: str, job_id: int, frame_id: int, late: bool = False):
        """The frame, if ``sender`` holds it (or, ``late``, held it on a lease that ran out and
        nobody holds it now: its result is still worth taking)."""
        row = self.store.frame(job_id, frame_id)
        renderer = str(urls.ServerURL(sender))
        if row.state == states.RENDERING and row.server == renderer:
            return row
        if late and row.state == states.QUEUED and self.store.lease_ran_out(job_id, frame_id, renderer):
            return row
        raise Conflict(f"frame {frame_id} of {self.url.job(job_id)} is not leased to {sender} "
                       f"(it is {row.state}{' on ' + row.server if row.server else ''})")

    def leased_to_or_done(self, sender: str, job_id: int, frame_id: int) -> None:
        """Refuse an upload early unless it could be accepted (or is a harmless duplicate)."""
        if self.store.frame(job_id, frame_id).state != states.DONE:
            self.own_job(job_id)
            self._leased_to(sender, job_id, frame_id, late=True)

    def renew(self, sender: str, job_id: int, frame_id: int) -> float:
        self.own_job(job_id)
        return self.life.renew(job_id, frame_id, str(urls.ServerURL(sender)), time.time() + self.lease_timeout,
                               self.limits.wall, self._slots_of(sender))

    # --- what renderers send back ----------------------------------------------------------

    def _append_log(self, job_id: int, frame_id: int, text: str) -> None:
        path = self.store.frame_log(job_id, frame_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", errors="replace") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def accept_log(self, sender: str, job_id: int, frame_id: int, text: str) -> None:
        self.own_job(job_id)
        self._leased_to(sender, job_id, frame_id, late=True)
        self._append_log(job_id, frame_id, f"==== distren: log from {sender}\n{text}")

    def accept_failure(self, sender: str, job_id: int, frame_id: int, reason: str, text: str) -> None:
        self.own_job(job_id)
        self._leased_to(sender, job_id, frame_id)
        self._append_log(job_id, frame_id, f"==== distren: failed on {sender}\n{text}")
        # Checked again, with the decision, in one transaction: the lease may run out meanwhile.
        self.life.render_failed(job_id, frame_id, str(urls.ServerURL(sender)), reason, self.max_attempts,
                                blocklist_threshold=self.blocklist_threshold)

    def accept_result(self, sender: str, job_id: int, frame_id: int, tar: Path) -> str:
        """Check an uploaded frame tarball and mark the frame done. Idempotent: a frame that is
        already done stays exactly as it is. What is kept is not the upload but a tarball written
        here of exactly the files the frame makes, under their plain names."""
        row = self.store.frame(job_id, frame_id)
        if row.state == states.DONE:
            return "already done"
        self.own_job(job_id)  # a cancelled job takes no more results
        self._leased_to(sender, job_id, frame_id, late=True)
        jf, frames = self.jobfiles.get(job_id)
        frame = frames[frame_id]
        expected = backends.get(frame.backend(jf.type)).expected_files(jf, frame, self.store.scene_dir(job_id))
        staged = tar.parent / f"{tar.name}.d"
        try:
            files = uploads.check_frame_tar(tar, staged / "files", expected, frame_id, jf.width, jf.height,
                                            self.max_result_bytes,
                                            functools.partial(self.checkers.check, (job_id, sender)))
            self.verifier.check(sender, job_id, jf, frame, staged / "files",
                                functools.partial(self.checkers.compare, (job_id, sender)))
            kept = staged / "frame.tar"
            bundle.write_tar(kept, [(f["name"], staged / "files" / f["name"]) for f in files])
            with self._result_lock:
                row = self.store.frame(job_id, frame_id)
                if row.state == states.DONE:
                    return "already done"
                self._leased_to(sender, job_id, frame_id, late=True)
                dest = self.store.frame_tar(job_id, frame_id)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(kept, dest)
                last = self.life.finish(job_id, frame_id, str(urls.ServerURL(sender)), files)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        if last:
            threading.Thread(target=self.rebundle, args=(job_id,), daemon=True).start()
        return "accepted"

    # --- our frames, for other servers' frames that depend on them --------------------------

    def frame_state(self, job_id: int, frame_id: int) -> dict:
        """What a dependent needs to know of one of our frames: whether it is done (and its
        tarball's hash), or stuck and why; not who renders it, nor a running frame's story."""
        job = self.store.get_job(job_id)
        row = self.store.frame(job_id, frame_id)
        stuck = row.state in (states.FAILED, states.BLOCKED) or job.state == states.CANCELLED
        out = {"url": self.store.frame_url(job_id, frame_id), "state": row.state,
               "reason": row.reason if stuck else "", "job_state": job.state}
        if row.state == states.DONE:  # a done frame changes only by being rendered again: hash it once
            key = (job_id, frame_id, row.finished)
            if key not in self._frame_sha:
                self._frame_sha[key] = sha256_file(self.store.frame_tar(job_id, frame_id))
            out["sha256"] = self._frame_sha[key]
        return out

    def frame_files(self, sender: str, job_id: int, frame_id: int, for_frame: urls.FrameURL | None = None) -> Path:
        """A done frame's files, for a server that holds a lease on its job, or that renders
        ``for_frame``, a frame depending on it, as ``for_frame``'s origin vouches."""
        if self.store.frame(job_id, frame_id).state != states.DONE:
            raise Conflict(f"frame {frame_id} of job {job_id} is not done")
        me = urls.FrameURL(self.url.name, job_id, frame_id)
        if for_frame is None or self.store.holds_lease(job_id, str(urls.ServerURL(sender))):
            self._need_to_know(sender, job_id, "its frames' files")
        elif not self._vouched(for_frame, sender, me):
            raise Forbidden(f"need to know: {for_frame.server} does not say that {sender} renders "
                            f"{for_frame}, or that it depends on {me}")
        return self.store.frame_tar(job_id, frame_id)

    def _vouched(self, dependent: urls.FrameURL, sender: str, me: urls.FrameURL) -> bool:
        if dependent.server != self.url.name:
            return self.vouched(dependent, sender, me)
        try:  # a frame of another of our own jobs
            self.vouch(dependent.job_id, dependent.frame_id, sender, me)
            return True
        except DistrenError:
            return False

    def vouch(self, job_id: int, frame_id: int, server: str, dep: urls.FrameURL) -> dict:
        """An origin asks: does our frame depend on ``dep`` (its frame), and does ``server``
        render it now? (``server`` then may read ``dep``'s files there.)"""
        row = self.store.frame(job_id, frame_id)
        jf, frames = self.jobfiles.get(job_id)
        deps = {urls.resolve_frame(d, jf.job_url) for d in frames[frame_id].deps}
        if dep not in deps:
            raise Forbidden(f"{self.url.job(job_id)}/frame/{frame_id} does not depend on {dep}")
        if row.state != states.RENDERING or row.server != str(urls.ServerURL(server)):
            raise Forbidden(f"{self.url.job(job_id)}/frame/{frame_id} is not rendering on {server[:100]}")
        return {"vouched": True}
