"""The server's work, independent of HTTP: accepting jobs, rendering frames in slots, retries,
rebundling finished frames, cancelling. The HTTP API (:mod:`distren.api`) is a thin layer on top.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import shutil
import signal
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import backends, bundle, jobfile, sandbox, states, urls
from .errors import BundleError, Conflict, DistrenError, JobFileError, NotFound, RenderError
from .fsutil import atomic_open, atomic_write, sha256_file
from .store import Store

log = logging.getLogger("distren")

MAX_ATTEMPTS = 3
SCENE_DIR = "scene"
# Measured with bench/slots.py on a 2-core machine (12 frames at 160x120): 1 slot 18.2 s, 2: 11.7 s,
# 3: 9.6 s, 4: 9.5 s, 6: 9.0 s. POV-Ray idles ~0.5 s at start and a small frame leaves cores idle,
# so overlapping processes beats one process per core.
DEFAULT_SLOTS = 2 * (os.cpu_count() or 1)


@dataclass
class Settings:
    name: str
    data: Path
    slots: int = DEFAULT_SLOTS
    frame_timeout: float = 3600.0
    max_attempts: int = MAX_ATTEMPTS


class Server:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = urls.ServerURL(urls.check_server_name(settings.name))
        self.store = Store(settings.data)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._procs: dict[tuple[int, int], object] = {}
        self._procs_lock = threading.Lock()
        self._rebundle_lock = threading.Lock()

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        name = self.store.get_meta("name")
        if name is None:
            self.store.set_meta("name", self.url.name)
        elif name != self.url.name:
            raise DistrenError(
                f"{self.settings.data} belongs to server {name!r}, not {self.url.name!r}: a server's name "
                f"never changes (its job URLs would break). Start it with --name {name} or use another --data."
            )
        if self.settings.slots > 0:
            sandbox.check()
        self.ensure_admin()
        for job_id, frame_id in self.store.recover(str(self.url)):
            log.info("requeued frame %s of job %s after restart", frame_id, job_id)
        shutil.rmtree(self.settings.data / "work", ignore_errors=True)
        shutil.rmtree(self.settings.data / "incoming", ignore_errors=True)
        for job_id in self.store.jobs_awaiting_rebundle():
            self._rebundle(job_id)
        for n in range(self.settings.slots):
            t = threading.Thread(target=self._slot, name=f"slot-{n}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._procs_lock:
            for proc in self._procs.values():
                _kill(proc)
        for t in self._threads:
            t.join(timeout=10)
        self.store.close()

    def ensure_admin(self) -> None:
        if self.store.has_users():
            return
        token = secrets.token_urlsafe(32)
        # The file first: if we die before the user row exists, the next start makes a new one.
        atomic_write(self.settings.data / "admin.token", token.encode() + b"\n", mode=0o600)
        self.store.add_user("admin", admin=True, token=token)

    # --- users ---------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> tuple[str, bool]:
        from .errors import Unauthorized

        if not token:
            raise Unauthorized(
                "no token: pass --token or set DISTREN_TOKEN (a server's first admin token is in "
                "its DATA/admin.token; `distren user add NAME` makes more)"
            )
        user = self.store.user_for_token(token)
        if user is None:
            raise Unauthorized("the token is not valid on this server; check --token / DISTREN_TOKEN")
        return user

    def add_user(self, name: str) -> str:
        return self.store.add_user(urls.check_user_name(name))

    # --- jobs ----------------------------------------------------------------------------

    def job_url(self, job_id: int) -> urls.JobURL:
        return self.url.job(job_id)

    def local_job_id(self, url_or_id: str) -> int:
        if url_or_id.isdigit():
            return int(url_or_id)
        job = urls.parse_job(url_or_id)
        if job.server != self.url.name:
            raise NotFound(f"{job} belongs to server {job.server!r}; this is {self.url}")
        return job.job_id

    def submit(self, upload: Path, user: str, upload_key: str | None = None) -> int:
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
            if any(f.deps for f in jf.frames):
                raise JobFileError(
                    f"{jobfile.FILENAME}: frame dependencies (<dep>) are not scheduled by this server yet; "
                    "remove the <dep> elements or submit the frames as separate jobs"
                )
            backend = backends.get(jf.type)
            bundle.extract(upload, staged / "unpacked")
            os.replace(staged / "unpacked" / SCENE_DIR, staged / SCENE_DIR)
            shutil.rmtree(staged / "unpacked")
            backend.check_scene(jf, staged / SCENE_DIR)
            os.replace(upload, staged / "seed.tar")
            submitter = self.url.user(user)
            job_id = self.store.create_job(
                str(submitter), jf.type, [f.id for f in jf.frames],
                lambda jid: jf.absolute(self.job_url(jid), submitter).to_xml(),
                staged, upload_key)
        finally:
            upload.unlink(missing_ok=True)
            shutil.rmtree(staged, ignore_errors=True)
        log.info("job %s submitted by %s (%d frames)", self.job_url(job_id), user, len(jf.frames))
        self._wake.set()
        return job_id

    def status(self, job_id: int) -> dict:
        job = self.store.get_job(job_id)
        jf = jobfile.loads(job.jobfile)
        frames = self.store.frames(job_id)
        counts = {s: 0 for s in states.FRAME_STATES}
        for f in frames:
            counts[f.state] += 1
        job_url = self.job_url(job_id)
        return {
            "url": str(job_url),
            "id": job_id,
            "state": job.state,
            "reason": job.reason,
            "submitter": job.submitter,
            "type": job.type,
            "width": jf.width,
            "height": jf.height,
            "created": job.created,
            "updated": job.updated,
            "counts": counts,
            "frames": [
                {
                    "url": str(job_url.frame(f.frame_id)),
                    "id": f.frame_id,
                    "state": f.state,
                    "reason": f.reason,
                    "server": f.server,
                    "attempts": f.attempts,
                    "files": [x["name"] for x in f.files],
                }
                for f in frames
            ],
        }

    def jobs(self) -> list[dict]:
        out = []
        for job in self.store.list_jobs():
            counts = self.store.frame_counts(job.id)
            out.append({"url": str(self.job_url(job.id)), "id": job.id, "state": job.state,
                        "reason": job.reason, "submitter": job.submitter, "created": job.created,
                        "frames": sum(counts.values()), "done": counts.get(states.DONE, 0)})
        return out

    def cancel(self, job_id: int, by: str) -> None:
        self.store.cancel_job(job_id, by)
        with self._procs_lock:
            for (jid, _), proc in self._procs.items():
                if jid == job_id:
                    _kill(proc)

    def retry(self, job_id: int, frame_id: int, by: str) -> None:
        self.store.retry_frame(job_id, frame_id, by)
        self._wake.set()

    def delete(self, job_id: int, by: str) -> None:
        self.store.delete_job(job_id)
        shutil.rmtree(self.store.job_dir(job_id), ignore_errors=True)
        log.info("job %s deleted by %s", self.job_url(job_id), by)

    def result(self, job_id: int) -> Path:
        job = self.store.get_job(job_id)
        if job.state != states.DONE:
            raise Conflict(f"{self.job_url(job_id)} is {job.state}, not done; `distren wait` for it first")
        return self.store.result_path(job_id)

    def frame_log(self, job_id: int, frame_id: int) -> str:
        self.store.frame(job_id, frame_id)
        path = self.store.frame_log(job_id, frame_id)
        return path.read_text(errors="replace") if path.exists() else ""

    # --- rendering -----------------------------------------------------------------------

    def _slot(self) -> None:
        while not self._stop.is_set():
            try:
                claim = self.store.claim_frame(str(self.url))
            except Exception:
                log.exception("could not claim a frame")
                claim = None
            if claim is None:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._wake.set()  # there may be more work: let an idle sibling look too
            self._render(*claim)

    def _render(self, job_id: int, frame_id: int) -> None:
        workdir = self.settings.data / "work" / f"{job_id}-{frame_id}-{secrets.token_hex(4)}"
        try:
            job = self.store.get_job(job_id)
            jf = jobfile.loads(job.jobfile)
            frame = jf.frame(frame_id)
            backend = backends.get(jf.type)
            shutil.copytree(self.store.scene_dir(job_id), workdir)
            logpath = self.store.frame_log(job_id, frame_id)
            logpath.parent.mkdir(parents=True, exist_ok=True)

            def track(proc):
                with self._procs_lock:
                    self._procs[(job_id, frame_id)] = proc

            produced = backend.render(jf, frame, workdir, logpath, self.settings.frame_timeout, track)
            files = self._pack_frame(job_id, frame_id, workdir, produced)
            if self.store.get_job(job_id).state == states.CANCELLED:
                self.store.requeue_frame(job_id, frame_id, "job cancelled; the render was discarded")
                return
            if self.store.finish_frame(job_id, frame_id, str(self.url), files):
                self._rebundle(job_id)
        except Exception as e:  # a frame never takes its slot down with it
            self._frame_failed(job_id, frame_id, e)
        finally:
            with self._procs_lock:
                self._procs.pop((job_id, frame_id), None)
            shutil.rmtree(workdir, ignore_errors=True)

    def _frame_failed(self, job_id: int, frame_id: int, err: Exception) -> None:
        if not isinstance(err, DistrenError):
            log.exception("frame %s of job %s: unexpected error", frame_id, job_id)
        msg = str(err) if isinstance(err, DistrenError) else f"internal error: {type(err).__name__}: {err}"
        try:
            if self._stop.is_set():
                self.store.requeue_frame(job_id, frame_id, f"{self.url} shut down while rendering")
                return
            if self.store.get_job(job_id).state == states.CANCELLED:
                self.store.requeue_frame(job_id, frame_id, "job cancelled while rendering")
                return
            attempts = self.store.frame(job_id, frame_id).attempts
            if attempts < self.settings.max_attempts and not isinstance(err, JobFileError):
                self.store.requeue_frame(job_id, frame_id, f"attempt {attempts} failed: {msg}; retrying")
            else:
                self.store.fail_frame(job_id, frame_id, msg)
        except Exception:
            log.exception("could not record the failure of frame %s of job %s", frame_id, job_id)

    def _pack_frame(self, job_id: int, frame_id: int, workdir: Path, produced: list[str]) -> list[dict]:
        files = [{"name": n, "size": (workdir / n).stat().st_size, "sha256": sha256_file(workdir / n)}
                 for n in produced]
        bundle.write_tar(self.store.frame_tar(job_id, frame_id), [(n, workdir / n) for n in produced])
        return files

    def _rebundle(self, job_id: int) -> None:
        """Collect every finished frame's files (not the seed) into result.tar, then mark the job
        done. Runs again at start if the server died in between."""
        with self._rebundle_lock:
            job = self.store.get_job(job_id)
            if job.state in states.FINAL_JOB_STATES:
                return
            frames = self.store.frames(job_id)
            jf = jobfile.loads(job.jobfile)
            by_id = {f.frame_id: f for f in frames}
            finished = jf.with_frames(
                jobfile.Frame(f.id, f.deps, by_id[f.id].server,
                              tuple(jobfile.FileEntry(x["name"], x["size"], x["sha256"]) for x in by_id[f.id].files))
                for f in jf.frames)
            with atomic_open(self.store.result_path(job_id)) as raw:
                with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as out:
                    info = tarfile.TarInfo(jobfile.FILENAME)
                    data = finished.to_xml()
                    info.size = len(data)
                    out.addfile(info, io.BytesIO(data))
                    for f in frames:
                        with tarfile.open(self.store.frame_tar(job_id, f.frame_id)) as src:
                            for m in src:
                                if m.isfile():
                                    out.addfile(m, src.extractfile(m))
            self.store.mark_job_done(job_id)
        log.info("job %s done", self.job_url(job_id))


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
