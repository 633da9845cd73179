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

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import backends, bundle, jobfile, states, uploads, urls
from .errors import Conflict, Gone
from .fsutil import sha256_file

if TYPE_CHECKING:
    from .jobs import JobFiles
    from .lifecycle import Lifecycle
    from .sandbox import Limits
    from .store import Store

log = logging.getLogger("distren.origin")


class Origin:
    def __init__(self, url: urls.ServerURL, store: Store, life: Lifecycle, jobfiles: JobFiles,
                 lease_timeout: float, max_attempts: int, limits: Limits, max_result_bytes: int,
                 rebundle: Callable[[int], None]):
        """``limits``: what checking an upload's images in the sandbox may use;
        ``rebundle(job_id)``: collect a job whose last frame is done into its result."""
        self.url = url
        self.store = store
        self.life = life
        self.jobfiles = jobfiles
        self.lease_timeout = lease_timeout
        self.max_attempts = max_attempts
        self.limits = limits
        self.max_result_bytes = max_result_bytes
        self.rebundle = rebundle
        self._result_lock = threading.Lock()
        self._frame_sha: dict[tuple[int, int], str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # Renderers could not renew while we were down: give them a full lease to do so.
        self.life.extend_leases(time.time() + self.lease_timeout)
        self._thread = threading.Thread(target=self._reaper_loop, name="reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

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

    # --- leases --------------------------------------------------------------------------

    def own_job(self, job_id: int):
        """A job of ours that still takes work; a finished or cancelled one is gone."""
        job = self.store.get_job(job_id)
        # A failed job is not gone: a user may retry its frames.
        if job.state in (states.DONE, states.CANCELLED):
            raise Gone(f"{self.url.job(job_id)} is {job.state}")
        return job

    def grant_lease(self, sender: str, job_id: int, nonce: tuple[str, float] | None = None,
                    can: set[str] | None = None) -> tuple[bytes, str, float] | None:
        """A frame of ``job_id`` for ``sender``, of one of the backends it ``can`` render."""
        expires = time.time() + self.lease_timeout
        renderer = str(urls.ServerURL(sender))
        by_backend = self.jobfiles.by_backend(job_id)
        skip = [fid for b, ids in by_backend.items() if can is not None and b not in can for fid in ids]
        claim = None
        if can is None or can & by_backend.keys():
            claim = self.life.claim(renderer, job_id, lease_expires=expires, nonce=nonce, skip=skip)
        if claim is None:
            self.own_job(job_id)  # gone or unknown: say so; otherwise nothing is ready
            return None
        jf, frames = self.jobfiles.get(job_id)
        return (jobfile.lease_xml(jf, replace(frames[claim[1]], server=renderer)),
                self.jobfiles.bundle_sha256(job_id), expires)

    def bundle(self, job_id: int) -> tuple[Path, str]:
        """A job's bundle for a renderer to fetch, and its hash; only while it takes work."""
        self.own_job(job_id)
        return self.store.seed_path(job_id), self.jobfiles.bundle_sha256(job_id)

    def _leased_to(self, sender: str, job_id: int, frame_id: int):
        row = self.store.frame(job_id, frame_id)
        if row.state != states.RENDERING or row.server != str(urls.ServerURL(sender)):
            raise Conflict(f"frame {frame_id} of {self.url.job(job_id)} is not leased to {sender} "
                           f"(it is {row.state}{' on ' + row.server if row.server else ''})")
        return row

    def leased_to_or_done(self, sender: str, job_id: int, frame_id: int) -> None:
        """Refuse an upload early unless it could be accepted (or is a harmless duplicate)."""
        if self.store.frame(job_id, frame_id).state != states.DONE:
            self.own_job(job_id)
            self._leased_to(sender, job_id, frame_id)

    def renew(self, sender: str, job_id: int, frame_id: int) -> float:
        self.own_job(job_id)
        expires = time.time() + self.lease_timeout
        self.life.renew(job_id, frame_id, str(urls.ServerURL(sender)), expires)
        return expires

    # --- what renderers send back ----------------------------------------------------------

    def _append_log(self, job_id: int, frame_id: int, text: str) -> None:
        path = self.store.frame_log(job_id, frame_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", errors="replace") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def accept_log(self, sender: str, job_id: int, frame_id: int, text: str) -> None:
        self.own_job(job_id)
        self._leased_to(sender, job_id, frame_id)
        self._append_log(job_id, frame_id, f"==== distren: log from {sender}\n{text}")

    def accept_failure(self, sender: str, job_id: int, frame_id: int, reason: str, text: str) -> None:
        self.own_job(job_id)
        self._leased_to(sender, job_id, frame_id)
        self._append_log(job_id, frame_id, f"==== distren: failed on {sender}\n{text}")
        # Checked again, with the decision, in one transaction: the lease may run out meanwhile.
        self.life.render_failed(job_id, frame_id, str(urls.ServerURL(sender)), reason, self.max_attempts)

    def accept_result(self, sender: str, job_id: int, frame_id: int, tar: Path) -> str:
        """Check an uploaded frame tarball and mark the frame done. Idempotent: a frame that is
        already done stays exactly as it is. What is kept is not the upload but a tarball written
        here of exactly the files the frame makes, under their plain names."""
        row = self.store.frame(job_id, frame_id)
        if row.state == states.DONE:
            return "already done"
        self.own_job(job_id)  # a cancelled job takes no more results
        self._leased_to(sender, job_id, frame_id)
        jf, frames = self.jobfiles.get(job_id)
        frame = frames[frame_id]
        expected = backends.get(frame.backend(jf.type)).expected_files(jf, frame, self.store.scene_dir(job_id))
        staged = tar.parent / f"{tar.name}.d"
        try:
            files = uploads.check_frame_tar(tar, staged / "files", expected, frame_id, jf.width, jf.height,
                                            self.max_result_bytes, self.limits)
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
            threading.Thread(target=self.rebundle, args=(job_id,), daemon=True).start()
        return "accepted"

    # --- our frames, for other servers' frames that depend on them --------------------------

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

    def frame_files(self, job_id: int, frame_id: int) -> Path:
        if self.store.frame(job_id, frame_id).state != states.DONE:
            raise Conflict(f"frame {frame_id} of job {job_id} is not done")
        return self.store.frame_tar(job_id, frame_id)
