"""Slots: the threads that render, and what each renders next.

Each of a server's slot threads takes one frame at a time, round-robin over origins: this
server's own queue, then each origin that announced work (:mod:`distren.renderer` leases a
frame of it). How many render at once is the :class:`~distren.concurrency.Governor`'s to say:
a slot takes a permit from it before it looks for work. A frame renders in a private working folder holding a copy of the scene's small
files, the large ones mounted read-only, and the files of the frames it depends on.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import backends, bundle, jobfile, states, urls
from .concurrency import Governor
from .errors import DistrenError, JobFileError, LimitExceeded, RenderError
from .fsutil import sha256_file
from .renderer import RemoteWork

if TYPE_CHECKING:
    from .bus import Change
    from .jobs import JobFiles
    from .lifecycle import Lifecycle
    from .renderer import Renderer
    from .sandbox import Limits
    from .store import Store

log = logging.getLogger("distren.scheduling")

SHARED_MIN_BYTES = 1 << 20
LEASE_PATIENCE = 0.5  # seconds a slot waits for an origin's answer to a lease request, once a pass
DELIVERERS = 8  # finished remote frames being sent back at once


class Scheduler:
    def __init__(self, url: urls.ServerURL, store: Store, life: Lifecycle, jobfiles: JobFiles,
                 renderer: Renderer, rebundle: Callable[[int], None], data: Path, governor: Governor, limits: Limits,
                 max_attempts: int, wake: threading.Event):
        """``rebundle(job_id)``: collect a job whose last frame is done into its result;
        ``governor``: how many frames render at once (one slot thread per render it allows);
        ``data``: the server's folder (renders work in ``data/work``, ``data/outgoing``);
        ``wake``: set (by anyone) when there may be work, so idle slots look at once."""
        self.url = url
        self.store = store
        self.life = life
        self.jobfiles = jobfiles
        self.renderer = renderer
        self.rebundle = rebundle
        self.data = data
        self.governor = governor
        self.limits = limits
        self.max_attempts = max_attempts
        self._wake = wake
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._procs: dict[tuple[str, int, int], object] = {}  # (origin, job, frame) -> process
        self._procs_lock = threading.Lock()
        self._rotation = 0
        self._rotation_lock = threading.Lock()
        self._deliveries = ThreadPoolExecutor(max_workers=DELIVERERS, thread_name_prefix="deliver")

    def start(self) -> None:
        for n in range(self.governor.cap):
            t = threading.Thread(target=self._slot, name=f"slot-{n}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop taking work and kill every render; :meth:`join` waits for the slots."""
        self._stop.set()
        self._wake.set()
        self.governor.interrupt()
        self._deliveries.shutdown(wait=False, cancel_futures=True)
        self.renderer.stop()
        with self._procs_lock:
            for proc in self._procs.values():
                _kill(proc)

    def join(self) -> None:
        for t in self._threads:
            t.join(timeout=10)

    def on_change(self, change: Change) -> None:
        if change.new == states.QUEUED:  # a frame (or a job) is ready: idle slots look again
            self._wake.set()

    def rendering_now(self) -> list[str]:
        with self._procs_lock:
            return sorted(str(urls.FrameURL(o, j, f)) for o, j, f in self._procs)

    def stop_renders(self, job_id: int) -> None:
        """Kill this server's renders of one of its own jobs (it was cancelled)."""
        with self._procs_lock:
            for (origin, jid, _), proc in self._procs.items():
                if origin == self.url.name and jid == job_id:
                    _kill(proc)

    # --- picking work --------------------------------------------------------------------

    def _slot(self) -> None:
        while not self._stop.is_set():
            if not self.governor.acquire(self._stop):
                continue
            try:
                work = self._next_work()
            except Exception:
                log.exception("could not find work")
                work = None
            if work is None:
                self.governor.release(rendered=False)
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self.governor.busy()
            self._wake.set()  # there may be more work: let an idle sibling look too
            try:
                if isinstance(work, RemoteWork):
                    self._render_remote(work)
                else:
                    self._render(*work)
            finally:
                self.governor.release(rendered=True)

    def _next_work(self) -> tuple[int, int] | RemoteWork | None:
        """Round-robin over origins: this server's own queue, then each origin that announced
        work, one frame each in turn. Every origin gets a fair share of our slots, and our
        own jobs always keep theirs. No origin can hold a slot: a pass waits on a peer at most
        once, for :data:`LEASE_PATIENCE`; one that is slower is asked in the background and
        the pass goes on to the next origin."""
        origins = [self.url.name] + self.renderer.origins_with_work()
        with self._rotation_lock:
            start = self._rotation % len(origins)
        patience = LEASE_PATIENCE
        for k in range(len(origins)):
            origin = origins[(start + k) % len(origins)]
            if origin == self.url.name:
                work = self.life.claim(str(self.url), types=list(backends.available()))
            else:
                work = self.renderer.lease_from(origin, wait=patience)
                patience = 0.0
            if work is not None:
                with self._rotation_lock:
                    self._rotation = start + k + 1
                return work
        return None

    # --- rendering -----------------------------------------------------------------------

    def _render_in(self, key: tuple[str, int, int], jf: jobfile.JobFile, frame: jobfile.Frame,
                   scene_dir: Path, logpath: Path, frame_tar: Path) -> list[dict]:
        """Render one frame in a private copy of the scene; pack its files into ``frame_tar``."""
        workdir = self.data / "work" / f"{key[0]}-{key[1]}-{key[2]}-{secrets.token_hex(4)}"
        try:
            shared = prepare_workdir(scene_dir, workdir)
            logpath.parent.mkdir(parents=True, exist_ok=True)

            def track(proc):
                with self._procs_lock:
                    self._procs[key] = proc

            for name in self.place_dependencies(jf, frame, workdir):
                shared.pop(name, None)  # a dependency's file takes the place of a scene file
            backend = backends.get(frame.backend(jf.type))
            limits = replace(self.limits, threads=self.governor.threads())
            produced = backend.render(jf, frame, workdir, logpath, limits, track, shared)
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

    def place_dependencies(self, jf: jobfile.JobFile, frame: jobfile.Frame, workdir: Path) -> list[str]:
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
                tar = self.renderer.fetch_frame_files(target, urls.FrameURL(jf.job_url.server, jf.job_url.job_id,
                                                                            frame.id))
            unpacked = workdir / f".distren-dep-{secrets.token_hex(4)}"
            for name in bundle.extract(tar, unpacked):
                (workdir / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(unpacked / name, workdir / name)
                placed.append(name)
            shutil.rmtree(unpacked)
        return placed

    def _render(self, job_id: int, frame_id: int) -> None:
        try:
            jf, frames = self.jobfiles.get(job_id)
            files = self._render_in((self.url.name, job_id, frame_id), jf, frames[frame_id], self.store.scene_dir(job_id),
                                    self.store.frame_log(job_id, frame_id), self.store.frame_tar(job_id, frame_id))
            if self.life.finish(job_id, frame_id, str(self.url), files):
                self.rebundle(job_id)
        except Exception as e:  # a frame never takes its slot down with it
            self._frame_failed(job_id, frame_id, e)

    def _render_remote(self, work: RemoteWork) -> None:
        """Render a leased frame (its scene is already here, its lease kept since it was
        granted); sending it back happens off the slot, which an origin that went quiet since
        would otherwise hold for as long as the delivery retries."""
        key = (work.job.server, work.job.job_id, work.frame.id)
        out = self.data / "outgoing"
        out.mkdir(exist_ok=True)
        stem = f"{key[0]}-{key[1]}-{key[2]}-{secrets.token_hex(4)}"
        logpath, frame_tar = out / f"{stem}.log", out / f"{stem}.tar"

        def lost():
            with self._procs_lock:
                proc = self._procs.get(key)
            if proc is not None:
                _kill(proc)

        work.on_lost = lost
        error: Exception | None = None
        try:
            if work.lost.is_set():
                raise DistrenError("the origin took the lease back")
            assert work.scene_dir is not None
            self._render_in(key, work.jf, work.frame, work.scene_dir, logpath, frame_tar)
        except Exception as e:
            error = e
            if not isinstance(e, DistrenError):
                log.exception("frame %s/frame/%s: unexpected error", work.job, work.frame.id)
        try:
            self._deliveries.submit(self._send_back, work, error, logpath, frame_tar)
        except RuntimeError:  # shutting down: the lease runs out and the origin queues the frame again
            work.done.set()

    def _send_back(self, work: RemoteWork, error: Exception | None, logpath: Path, frame_tar: Path) -> None:
        try:
            if work.lost.is_set():
                return
            if error is None:
                try:
                    self.renderer.deliver(work, frame_tar, _read(logpath))
                    return
                except Exception as e:
                    error = e
            if not self._stop.is_set():
                self.renderer.report_failure(work, str(error), _read(logpath))
        except DistrenError as e:
            log.warning("could not report the failure of %s/frame/%s: %s", work.job, work.frame.id, e)
        except Exception:
            log.exception("sending back %s/frame/%s failed", work.job, work.frame.id)
        finally:
            work.done.set()
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
                self.life.render_failed(job_id, frame_id, str(self.url), msg, self.max_attempts,
                                        final=isinstance(err, (JobFileError, LimitExceeded)))
        except Exception:
            log.exception("could not record the failure of frame %s of job %s", frame_id, job_id)


def prepare_workdir(scene_dir: Path, workdir: Path) -> dict[str, Path]:
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
