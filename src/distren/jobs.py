"""A server's own jobs: submit, cancel, retry, delete, and rebundling finished frames into the
job's result. Also the cache of each job's parsed distrenjob.xml and its bundle's hash
(:class:`JobFiles`), which every room reads.

State changes are :mod:`distren.lifecycle`'s; this module decides when to make them and does
the files around them.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import backends, bundle, jobfile, states, urls
from .errors import BundleError, Conflict, JobFileError, NotFound
from .fsutil import atomic_open, sha256_file

if TYPE_CHECKING:
    from .lifecycle import Lifecycle
    from .store import Store

log = logging.getLogger("distren.jobs")

SCENE_DIR = "scene"


class JobFiles:
    """A job's distrenjob.xml, parsed once: it never changes after submit, and parsing a job of
    20,000 frames on every lease would cost a third of a second each time. Likewise the hash of
    its bundle, which every announcement and lease names."""

    def __init__(self, store: Store):
        self.store = store
        self._jobfiles: dict[int, tuple[jobfile.JobFile, dict[int, jobfile.Frame]]] = {}
        self._bundle_sha: dict[int, str] = {}
        self._by_backend: dict[int, dict[str, list[int]]] = {}
        self._lock = threading.Lock()

    def get(self, job_id: int) -> tuple[jobfile.JobFile, dict[int, jobfile.Frame]]:
        """The job file, and its frames by id."""
        with self._lock:
            cached = self._jobfiles.get(job_id)
        if cached is None:
            jf = jobfile.loads(self.store.get_job(job_id).jobfile)
            cached = (jf, {f.id: f for f in jf.frames})
            with self._lock:
                if len(self._jobfiles) >= 64:
                    self._jobfiles.pop(next(iter(self._jobfiles)))
                self._jobfiles[job_id] = cached
        return cached

    def by_backend(self, job_id: int) -> dict[str, list[int]]:
        """The job's frame ids by the backend each needs (what a lease's ``can`` selects by),
        grouped once: every lease asks."""
        if job_id not in self._by_backend:
            jf, _ = self.get(job_id)
            out: dict[str, list[int]] = {}
            for f in jf.frames:
                out.setdefault(f.backend(jf.type), []).append(f.id)
            self._by_backend[job_id] = out
        return self._by_backend[job_id]

    def bundle_sha256(self, job_id: int) -> str:
        if job_id not in self._bundle_sha:
            self._bundle_sha[job_id] = sha256_file(self.store.seed_path(job_id))
        return self._bundle_sha[job_id]

    def forget(self, job_id: int) -> None:
        with self._lock:
            self._jobfiles.pop(job_id, None)
        self._bundle_sha.pop(job_id, None)
        self._by_backend.pop(job_id, None)


class Jobs:
    def __init__(self, url: urls.ServerURL, store: Store, life: Lifecycle, jobfiles: JobFiles,
                 announce: Callable[..., None], remote_frame_state: Callable[..., dict],
                 job_for: Callable[[int, str, bool], int], stop_renders: Callable[[int], None],
                 wake: Callable[[], None]):
        """``announce(job_id, active=True)``: tell the peers (:meth:`Peering.announce`);
        ``remote_frame_state(frame_url, where)``: ask another server of a frame;
        ``job_for(job_id, user, admin)``: the job if the user may touch it;
        ``stop_renders(job_id)``: kill this server's renders of a job's frames;
        ``wake``: there is new work for idle slots."""
        self.url = url
        self.store = store
        self.life = life
        self.jobfiles = jobfiles
        self.announce = announce
        self.remote_frame_state = remote_frame_state
        self.job_for = job_for
        self.stop_renders = stop_renders
        self.wake = wake
        self._rebundle_lock = threading.Lock()

    def submit(self, upload: Path, user: str, upload_key: str | None = None, admin: bool = False,
               priority: int = 0) -> int:
        """Validate an uploaded bundle and make it a job. Nothing is kept if it is refused."""
        if upload_key:
            existing = self.store.job_for_upload_key(user, upload_key)
            if existing is not None:
                upload.unlink(missing_ok=True)
                return existing
        staged = Path(str(upload) + ".d")
        try:
            members = bundle.list_members(upload)
            if jobfile.FILENAME not in members:
                raise BundleError(f"the bundle has no {jobfile.FILENAME} at its root; make one with `distren pack`")
            if not any(m.startswith(SCENE_DIR + "/") for m in members):
                raise BundleError(f"the bundle has no {SCENE_DIR}/ folder holding the scene; make one with `distren pack`")
            jf = jobfile.loads(bundle.read_member(upload, jobfile.FILENAME))
            jf.check_dependencies()
            self._check_foreign_deps(jf, user, admin)
            backend = backends.for_job(jf.type)
            for f in jf.frames:
                if f.type:
                    backends.get(f.type).check_frame(jf, f)
            bundle.extract(upload, staged / "unpacked")
            os.replace(staged / "unpacked" / SCENE_DIR, staged / SCENE_DIR)
            shutil.rmtree(staged / "unpacked")
            backend.check_scene(jf, staged / SCENE_DIR)
            os.replace(upload, staged / "seed.tar")
            submitter = self.url.user(user)
            job_id = self.life.create_job(
                str(submitter), jf.type, [f.id for f in jf.frames],
                lambda jid: jf.absolute(self.url.job(jid), submitter).to_xml(),
                staged, upload_key,
                lambda jid: [(f.id, str(urls.resolve_frame(d, self.url.job(jid)))) for f in jf.frames for d in f.deps],
                priority)
        finally:
            upload.unlink(missing_ok=True)
            shutil.rmtree(staged, ignore_errors=True)
        log.info("job %s submitted by %s (%d frames)", self.url.job(job_id), user, len(jf.frames))
        self.announce(job_id)
        self.wake()
        return job_id

    def _check_foreign_deps(self, jf: jobfile.JobFile, user: str, admin: bool) -> None:
        """Dependencies on other jobs must name frames that exist: here, or on a known server.
        Here, only the submitter's own jobs count (any job for an admin): a dependency's files
        land in the frame's folder, so another user's frames would be theirs to read."""
        for f in jf.frames:
            for target in jf.dependency_targets(f):
                if isinstance(target, int):
                    continue
                where = f"{jobfile.FILENAME}: frame/{f.id} depends on {target}"
                if target.server == self.url.name:
                    try:
                        self.job_for(target.job_id, user, admin)
                        self.store.frame(target.job_id, target.frame_id)
                    except NotFound:
                        raise JobFileError(f"{where}, which does not exist on this server") from None
                else:
                    self.remote_frame_state(target, where)

    def cancel(self, job_id: int, by: str) -> None:
        self.life.cancel(job_id, by)
        self.announce(job_id, active=False)
        self.stop_renders(job_id)

    def retry(self, job_id: int, frame_id: int, by: str) -> None:
        self.life.retry(job_id, frame_id, by)
        self._mark_logs(job_id, [frame_id], by)
        self.wake()

    def _mark_logs(self, job_id: int, frame_ids: list[int], by: str) -> None:
        """The log keeps every attempt; a frame's tries count those since the last retry: say
        where that is."""
        for frame_id in frame_ids:
            path = self.store.frame_log(job_id, frame_id)
            if path.exists():
                with open(path, "a") as f:
                    f.write(f"==== distren: retried by {by}; its tries count from here\n")

    def requeue(self, job_id: int, frame_ids: list[int] | None, by: str) -> None:
        was_cancelled, requeued = self.life.requeue(job_id, frame_ids, by)
        self._mark_logs(job_id, requeued, by)
        if was_cancelled:
            self.announce(job_id)  # it was withdrawn when cancelled
        if self._all_done(job_id):
            self.rebundle(job_id)  # cancelled after its last frame finished
        self.wake()

    def _all_done(self, job_id: int) -> bool:
        counts = self.store.frame_counts(job_id)
        return sum(counts.values()) == counts.get(states.DONE, 0)

    def pause(self, job_id: int, by: str) -> None:
        self.life.pause(job_id, by)

    def resume(self, job_id: int, by: str) -> None:
        self.life.resume(job_id, by)
        if self._all_done(job_id):
            self.rebundle(job_id)
        self.wake()

    def set_priority(self, job_id: int, priority: int, by: str) -> None:
        self.life.set_priority(job_id, priority, by)
        if self.store.get_job(job_id).state not in (states.DONE, states.CANCELLED):
            self.announce(job_id)  # peers order the origin's jobs by it
        self.wake()

    def delete(self, job_id: int, by: str) -> None:
        if self.store.get_job(job_id).state == states.FAILED:  # done and cancelled are withdrawn already
            self.announce(job_id, active=False)
        self.life.delete(job_id, by)
        self.jobfiles.forget(job_id)
        shutil.rmtree(self.store.job_dir(job_id), ignore_errors=True)
        log.info("job %s deleted by %s", self.url.job(job_id), by)

    def rebundle(self, job_id: int) -> None:
        """Collect every finished frame's files (not the seed) into result.tar, then mark the job
        done. Runs again at start if the server died in between."""
        with self._rebundle_lock:
            job = self.store.get_job(job_id)
            if job.state in states.FINAL_JOB_STATES:
                return
            with atomic_open(self.store.result_path(job_id)) as raw:
                self._write_result(job_id, raw)
            if not self.life.job_done(job_id):
                return
        log.info("job %s done", self.url.job(job_id))
        self.announce(job_id, active=False)

    def partial_result(self, job_id: int) -> Path:
        """What a failed or cancelled job finished, as a result tarball (the caller removes it)."""
        state = self.store.get_job(job_id).state
        if state not in (states.FAILED, states.CANCELLED):
            raise Conflict(f"{self.url.job(job_id)} is {state}: its frames can be downloaded once it is done "
                           "(or failed or cancelled)")
        if not self.store.frame_counts(job_id).get(states.DONE):
            raise Conflict(f"{self.url.job(job_id)} is {state} and has no finished frame to download")
        fd, name = tempfile.mkstemp(prefix="partial-", suffix=".tar", dir=self.store.staging_dir())
        with os.fdopen(fd, "wb") as raw:
            self._write_result(job_id, raw)
        return Path(name)

    def _write_result(self, job_id: int, raw) -> None:
        """The result tarball: distrenjob.xml naming each frame's server and files, and the files
        of every finished frame."""
        frames = self.store.frames(job_id)
        job = self.store.get_job(job_id)
        jf = jobfile.loads(job.jobfile)
        by_id = {f.frame_id: f for f in frames}
        claimed: set[str] = {jobfile.FILENAME}  # a file name two frames produce: the first frame's
        kept: dict[int, list[dict]] = {}
        for f in frames:
            files = f.files if f.state == states.DONE else []
            kept[f.frame_id] = [x for x in files if x["name"] not in claimed]
            claimed.update(x["name"] for x in files)
        finished = jf.with_frames(
            replace(f, server=by_id[f.id].server if by_id[f.id].state == states.DONE else None,
                    files=tuple(jobfile.FileEntry(x["name"], x["size"], x["sha256"]) for x in kept[f.id]))
            for f in jf.frames)
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as out:
            info = tarfile.TarInfo(jobfile.FILENAME)
            data = finished.to_xml()
            info.size = len(data)
            info.mtime = int(job.updated)  # the same tarball for the same job: its hash is stable
            out.addfile(info, io.BytesIO(data))
            for f in frames:
                names = {x["name"] for x in kept[f.frame_id]}
                if not names:
                    continue
                with tarfile.open(self.store.frame_tar(job_id, f.frame_id)) as src:
                    for m in src:
                        # Frame tarballs from before names were normalised may say ./NAME.
                        name = bundle.safe_name(m.name) if m.isfile() else ""
                        if name in names:
                            # Frame tarballs have no times (they are hashed); a downloaded frame
                            # is as old as its render.
                            m.name, m.mtime = name, int(f.finished or job.updated)
                            out.addfile(m, src.extractfile(m))
