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
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import backends, bundle, jobfile, sandbox, states, urls
from .bus import Bus, Change
from .federation import Federation, RemoteWork, check_address
from .identity import Identity
from .errors import (BundleError, Conflict, DistrenError, InvalidURL, JobFileError, LimitExceeded, NotFound, RenderError,
                     Unauthorized)
from .fsutil import atomic_open, atomic_write, sha256_file
from .lifecycle import Lifecycle
from .store import Store, no_such_job

log = logging.getLogger("distren")

MAX_ATTEMPTS = 3
SCENE_DIR = "scene"
# Measured with bench/slots.py on a 2-core machine (12 frames at 160x120): 1 slot 18.2 s, 2: 11.7 s,
# 3: 9.6 s, 4: 9.5 s, 6: 9.0 s. POV-Ray idles ~0.5 s at start and a small frame leaves cores idle,
# so overlapping processes beats one process per core.
DEFAULT_SLOTS = 2 * (os.cpu_count() or 1)


DEFAULT_LEASE_TIMEOUT = 180.0


@dataclass
class Settings:
    name: str
    data: Path
    slots: int = DEFAULT_SLOTS
    limits: sandbox.Limits = field(default_factory=sandbox.Limits)  # what one frame's render may use
    max_attempts: int = MAX_ATTEMPTS
    advertise: str = "http://127.0.0.1:8311"  # the address peers reach this server at
    peers: list[str] = field(default_factory=list)
    lease_timeout: float = DEFAULT_LEASE_TIMEOUT
    max_result_bytes: int = 2 * sandbox.GiB  # what a peer's frame upload may be and unpack to


class Server:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = urls.ServerURL(urls.check_server_name(settings.name))
        self.store = Store(settings.data)
        self.bus = Bus()
        self.life = Lifecycle(self.store, self.bus)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._procs: dict[tuple[str, int, int], object] = {}  # (origin, job, frame) -> process
        self._procs_lock = threading.Lock()
        self._rebundle_lock = threading.Lock()
        self._rotation = 0
        self._rotation_lock = threading.Lock()
        self._bundle_sha: dict[int, str] = {}
        self._jobfiles: dict[int, tuple[jobfile.JobFile, dict[int, jobfile.Frame]]] = {}
        self._jobfiles_lock = threading.Lock()
        check_address(settings.advertise)
        self.identity = Identity.load_or_create(self.url.name, settings.data / "server.key")
        self.federation = Federation(self, self.identity, settings.advertise, settings.lease_timeout,
                                     settings.peers)
        self.bus.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        if change.new == states.QUEUED:  # a frame (or a job) is ready: idle slots look again
            self._wake.set()

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
        for job_id, frame_id in self.life.recover(str(self.url)):
            log.info("requeued frame %s of job %s after restart", frame_id, job_id)
        shutil.rmtree(self.settings.data / "work", ignore_errors=True)
        shutil.rmtree(self.settings.data / "incoming", ignore_errors=True)
        shutil.rmtree(self.settings.data / "outgoing", ignore_errors=True)
        for job_id in self.store.jobs_awaiting_rebundle():
            self.rebundle(job_id)
        self.federation.start()
        for job in self.store.list_jobs():  # peers may have missed these while we were down
            if job.state not in (states.DONE, states.CANCELLED):
                self.federation.announce(job.id, again=True)
        for n in range(self.settings.slots):
            t = threading.Thread(target=self._slot, name=f"slot-{n}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.federation.stop()
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
        """The user a token belongs to, and whether they are an admin. Asked on every request,
        so a revoked token stops working at once."""
        if not token:
            raise Unauthorized("no token: this request needs a user's (Authorization: Bearer TOKEN)")
        user = self.store.user_for_token(token)
        if user is None:
            raise Unauthorized("the token is not valid on this server (wrong, or its user was revoked)")
        return user

    def add_user(self, name: str, admin: bool = False) -> str:
        if len(name) > 64:  # checked first: the name is not repeated back whole
            raise InvalidURL(f"user name of {len(name)} characters is too long: use at most 64 letters, "
                             "digits, '_', '.' or '-'")
        return self.store.add_user(urls.check_user_name(name), admin=admin)

    def revoke_user(self, name: str) -> bool:
        """The user's token stops working now. Their jobs are left as they are (an admin may
        still cancel them): revoking a person should not throw away work others wait for."""
        revoked = self.store.revoke_user(name)
        if revoked:
            log.info("user %s revoked", self.url.user(name))
        return revoked

    def users(self) -> list[dict]:
        counts = self.store.jobs_per_submitter()
        return [{"name": u["name"], "url": str(self.url.user(u["name"])), "admin": u["admin"],
                 "revoked": u["revoked"] is not None, "created": u["created"],
                 "jobs": counts.get(str(self.url.user(u["name"])), 0)} for u in self.store.users()]

    def job_for(self, job_id: int, user: str, admin: bool) -> int:
        """``job_id`` if ``user`` may see and touch that job: their own, or any for an admin.
        Another user's job is answered exactly like one that does not exist, so that its
        existence is not told either."""
        if not 0 <= job_id <= urls.MAX_ID:
            raise no_such_job(job_id)
        job = self.store.get_job(job_id)
        if not admin and job.submitter != str(self.url.user(user)):
            raise no_such_job(job_id)
        return job_id

    # --- jobs ----------------------------------------------------------------------------

    def job_url(self, job_id: int) -> urls.JobURL:
        return self.url.job(job_id)

    def submit(self, upload: Path, user: str, upload_key: str | None = None, admin: bool = False) -> int:
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
                lambda jid: jf.absolute(self.job_url(jid), submitter).to_xml(),
                staged, upload_key,
                lambda jid: [(f.id, str(urls.resolve_frame(d, self.job_url(jid)))) for f in jf.frames for d in f.deps])
        finally:
            upload.unlink(missing_ok=True)
            shutil.rmtree(staged, ignore_errors=True)
        log.info("job %s submitted by %s (%d frames)", self.job_url(job_id), user, len(jf.frames))
        self.federation.announce(job_id)
        self._wake.set()
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
                    self.federation.remote_frame_state(target, where)

    def wake(self) -> None:
        self._wake.set()

    def jobfile(self, job_id: int) -> tuple[jobfile.JobFile, dict[int, jobfile.Frame]]:
        """A job's distrenjob.xml, parsed once: it never changes after submit, and parsing a
        job of 20,000 frames on every lease would cost a third of a second each time."""
        with self._jobfiles_lock:
            cached = self._jobfiles.get(job_id)
        if cached is None:
            jf = jobfile.loads(self.store.get_job(job_id).jobfile)
            cached = (jf, {f.id: f for f in jf.frames})
            with self._jobfiles_lock:
                if len(self._jobfiles) >= 64:
                    self._jobfiles.pop(next(iter(self._jobfiles)))
                self._jobfiles[job_id] = cached
        return cached

    def bundle_sha256(self, job_id: int) -> str:
        if job_id not in self._bundle_sha:
            self._bundle_sha[job_id] = sha256_file(self.store.seed_path(job_id))
        return self._bundle_sha[job_id]

    def rendering_now(self) -> list[str]:
        with self._procs_lock:
            return sorted(str(urls.FrameURL(o, j, f)) for o, j, f in self._procs)

    def append_log(self, job_id: int, frame_id: int, text: str) -> None:
        path = self.store.frame_log(job_id, frame_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", errors="replace") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def servers(self) -> list[dict]:
        me = {"name": self.url.name, "url": str(self.url), "address": self.settings.advertise,
              "slots": self.settings.slots, "rendering": self.rendering_now(), "last_heard": time.time(),
              "self": True}
        return [me] + [{"name": p["name"], "url": str(urls.ServerURL(p["name"])), "address": p["address"],
                        "slots": p["slots"], "rendering": p["rendering"], "last_heard": p["last_heard"],
                        "self": False} for p in self.store.peers()]

    def remove_peer(self, name: str) -> None:
        self.store.remove_peer(urls.check_server_name(name))

    def add_peer(self, address: str) -> str:
        name = self.federation.introduce(address)
        self.federation.sync_once()
        return name

    def status(self, job_id: int) -> dict:
        job = self.store.get_job(job_id)
        jf, by_id = self.jobfile(job_id)
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
                    "type": by_id[f.frame_id].backend(jf.type),
                    "deps": [str(urls.resolve_frame(d, job_url)) for d in by_id[f.frame_id].deps],
                }
                for f in frames
            ],
        }

    def jobs(self, user: str, admin: bool) -> list[dict]:
        """The jobs ``user`` may see: their own, or every job for an admin."""
        out = []
        for job in self.store.list_jobs(None if admin else str(self.url.user(user))):
            counts = self.store.frame_counts(job.id)
            out.append({"url": str(self.job_url(job.id)), "id": job.id, "state": job.state,
                        "reason": job.reason, "submitter": job.submitter, "created": job.created,
                        "frames": sum(counts.values()), "done": counts.get(states.DONE, 0)})
        return out

    def cancel(self, job_id: int, by: str) -> None:
        self.life.cancel(job_id, by)
        self.federation.announce(job_id, active=False)
        with self._procs_lock:
            for (origin, jid, _), proc in self._procs.items():
                if origin == self.url.name and jid == job_id:
                    _kill(proc)

    def retry(self, job_id: int, frame_id: int, by: str) -> None:
        self.life.retry(job_id, frame_id, by)

    def delete(self, job_id: int, by: str) -> None:
        if self.store.get_job(job_id).state == states.FAILED:  # done and cancelled are withdrawn already
            self.federation.announce(job_id, active=False)
        self.life.delete(job_id, by)
        self._bundle_sha.pop(job_id, None)
        with self._jobfiles_lock:
            self._jobfiles.pop(job_id, None)
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
                work = self._next_work()
            except Exception:
                log.exception("could not find work")
                work = None
            if work is None:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._wake.set()  # there may be more work: let an idle sibling look too
            if isinstance(work, RemoteWork):
                self._render_remote(work)
            else:
                self._render(*work)

    def _next_work(self) -> tuple[int, int] | RemoteWork | None:
        """Round-robin over origins: this server's own queue, then each origin that announced
        work, one frame each in turn. Every origin gets a fair share of our slots, and our
        own jobs always keep theirs."""
        origins = [self.url.name] + self.federation.origins_with_work()
        with self._rotation_lock:
            start = self._rotation % len(origins)
        for k in range(len(origins)):
            origin = origins[(start + k) % len(origins)]
            if origin == self.url.name:
                work = self.life.claim(str(self.url), types=list(backends.available()))
            else:
                work = self.federation.lease_from(origin)
            if work is not None:
                with self._rotation_lock:
                    self._rotation = start + k + 1
                return work
        return None

    def _render_in(self, key: tuple[str, int, int], jf: jobfile.JobFile, frame: jobfile.Frame,
                   scene_dir: Path, logpath: Path, frame_tar: Path) -> list[dict]:
        """Render one frame in a private copy of the scene; pack its files into ``frame_tar``."""
        workdir = self.settings.data / "work" / f"{key[0]}-{key[1]}-{key[2]}-{secrets.token_hex(4)}"
        try:
            shared = _prepare_workdir(scene_dir, workdir)
            logpath.parent.mkdir(parents=True, exist_ok=True)

            def track(proc):
                with self._procs_lock:
                    self._procs[key] = proc

            for name in self._place_dependencies(jf, frame, workdir):
                shared.pop(name, None)  # a dependency's file takes the place of a scene file
            backend = backends.get(frame.backend(jf.type))
            produced = backend.render(jf, frame, workdir, logpath, self.settings.limits, track, shared)
            # Only the files the frame makes are kept, named as from the untouched scene (the
            # render may have rewritten its own copy of the INI); whatever else the scene wrote
            # is left behind with the working folder.
            keep = set(backend.expected_files(jf, frame, scene_dir))
            produced = [n for n in produced if n in keep]
            files = [{"name": n, "size": (workdir / n).stat().st_size, "sha256": sha256_file(workdir / n)}
                     for n in produced]
            bundle.write_tar(frame_tar, [(n, workdir / n) for n in produced])
            return files
        finally:
            with self._procs_lock:
                self._procs.pop(key, None)
            shutil.rmtree(workdir, ignore_errors=True)

    def _place_dependencies(self, jf: jobfile.JobFile, frame: jobfile.Frame, workdir: Path) -> list[str]:
        """Put the files of the frames this one depends on into its working folder, under
        their own names, so that the scene (or the stitcher) can read them. Returns the names."""
        placed: list[str] = []
        for dep in frame.deps:
            target = urls.resolve_frame(dep, jf.job_url)
            if target.server == self.url.name:
                tar = self.store.frame_tar(target.job_id, target.frame_id)
                if self.store.frame(target.job_id, target.frame_id).state != states.DONE or not tar.exists():
                    raise RenderError(f"dependency {target} is not done yet")
            else:
                tar = self.federation.fetch_frame_files(target)
            unpacked = workdir / f".distren-dep-{secrets.token_hex(4)}"
            for name in bundle.extract(tar, unpacked):
                (workdir / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(unpacked / name, workdir / name)
                placed.append(name)
            shutil.rmtree(unpacked)
        return placed

    def _render(self, job_id: int, frame_id: int) -> None:
        try:
            jf, frames = self.jobfile(job_id)
            files = self._render_in((self.url.name, job_id, frame_id), jf, frames[frame_id], self.store.scene_dir(job_id),
                                    self.store.frame_log(job_id, frame_id), self.store.frame_tar(job_id, frame_id))
            if self.life.finish(job_id, frame_id, str(self.url), files):
                self.rebundle(job_id)
        except Exception as e:  # a frame never takes its slot down with it
            self._frame_failed(job_id, frame_id, e)

    def _render_remote(self, work: RemoteWork) -> None:
        key = (work.job.server, work.job.job_id, work.frame.id)
        out = self.settings.data / "outgoing"
        out.mkdir(exist_ok=True)
        stem = f"{key[0]}-{key[1]}-{key[2]}-{secrets.token_hex(4)}"
        logpath, frame_tar = out / f"{stem}.log", out / f"{stem}.tar"
        done = threading.Event()

        def lost():
            with self._procs_lock:
                proc = self._procs.get(key)
            if proc is not None:
                _kill(proc)

        renewer = threading.Thread(target=self.federation.keep_lease, args=(work, done, lost), daemon=True)
        renewer.start()
        try:
            scene = self.federation.scene_for(work)
            self._render_in(key, work.jf, work.frame, scene, logpath, frame_tar)
            if not work.lost.is_set():
                self.federation.deliver(work, frame_tar, _read(logpath))
        except Exception as e:
            if not isinstance(e, DistrenError):
                log.exception("frame %s/frame/%s: unexpected error", work.job, work.frame.id)
            if not work.lost.is_set() and not self._stop.is_set():
                try:
                    self.federation.report_failure(work, str(e), _read(logpath))
                except DistrenError as e2:
                    log.warning("could not report the failure of %s/frame/%s: %s", work.job, work.frame.id, e2)
        finally:
            done.set()
            logpath.unlink(missing_ok=True)
            frame_tar.unlink(missing_ok=True)

    def _frame_failed(self, job_id: int, frame_id: int, err: Exception) -> None:
        if not isinstance(err, DistrenError):
            log.exception("frame %s of job %s: unexpected error", frame_id, job_id)
        # An unexpected error's words may hold this server's paths: they go to its log, not the reason.
        msg = str(err) if isinstance(err, DistrenError) else f"internal error ({type(err).__name__}); see the server's log"
        try:
            if self._stop.is_set():  # killed by the shutdown, not by the frame
                self.life.release(job_id, frame_id, str(self.url), f"{self.url} shut down while rendering")
            else:
                self.life.render_failed(job_id, frame_id, str(self.url), msg, self.settings.max_attempts,
                                        final=isinstance(err, (JobFileError, LimitExceeded)))
        except Exception:
            log.exception("could not record the failure of frame %s of job %s", frame_id, job_id)

    def rebundle(self, job_id: int) -> None:
        """Collect every finished frame's files (not the seed) into result.tar, then mark the job
        done. Runs again at start if the server died in between."""
        with self._rebundle_lock:
            job = self.store.get_job(job_id)
            if job.state in states.FINAL_JOB_STATES:
                return
            frames = self.store.frames(job_id)
            jf = jobfile.loads(job.jobfile)
            by_id = {f.frame_id: f for f in frames}
            claimed: set[str] = {jobfile.FILENAME}  # a file name two frames produce: the first frame's
            kept: dict[int, list[dict]] = {}
            for f in frames:
                kept[f.frame_id] = [x for x in f.files if x["name"] not in claimed]
                claimed.update(x["name"] for x in f.files)
            finished = jf.with_frames(
                replace(f, server=by_id[f.id].server,
                        files=tuple(jobfile.FileEntry(x["name"], x["size"], x["sha256"]) for x in kept[f.id]))
                for f in jf.frames)
            with atomic_open(self.store.result_path(job_id)) as raw:
                with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as out:
                    info = tarfile.TarInfo(jobfile.FILENAME)
                    data = finished.to_xml()
                    info.size = len(data)
                    out.addfile(info, io.BytesIO(data))
                    for f in frames:
                        names = {x["name"] for x in kept[f.frame_id]}
                        with tarfile.open(self.store.frame_tar(job_id, f.frame_id)) as src:
                            for m in src:
                                # Frame tarballs from before names were normalised may say ./NAME.
                                name = bundle.safe_name(m.name) if m.isfile() else ""
                                if name in names:
                                    m.name = name
                                    out.addfile(m, src.extractfile(m))
            self.life.job_done(job_id)
        log.info("job %s done", self.job_url(job_id))
        self.federation.announce(job_id, active=False)


SHARED_MIN_BYTES = 1 << 20


def _prepare_workdir(scene_dir: Path, workdir: Path) -> dict[str, Path]:
    """A frame's working folder: a copy of the scene's small files, and an empty placeholder
    for each large one (textures, meshes), which the sandbox mounts read-only in its place.
    Copying a 1 GB scene for every frame would cost more than many frames take to render."""
    shared: dict[str, Path] = {}
    for name, src in bundle.tree_members(scene_dir):
        dest = workdir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.stat().st_size >= SHARED_MIN_BYTES:
            dest.touch()
            shared[name] = src
        else:
            shutil.copy2(src, dest)
    workdir.mkdir(parents=True, exist_ok=True)
    return shared


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
