"""Frames' images as the dashboard shows them: a thumbnail and a view no larger than a screen,
made once, cached on disk beside the job (``jobs/ID/previews/``), keyed by the image's hash so a
re-rendered frame gets new ones.

Images come from renders of untrusted scenes and from peers: they are decoded only in the
sandbox (:mod:`distren.thumbnails`), a batch of a job's frames per run, one run at a time, in
the caller's worker thread. What comes back is only served, never decoded again here."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tarfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import sandbox, states
from .dashboard import image_of, movie_of
from .errors import Busy, NotFound

if TYPE_CHECKING:
    from .jobs import JobFiles
    from .store import Store

log = logging.getLogger("distren.previews")

THUMB, VIEW = 160, 1600  # the largest side of each, in pixels
SIDES = (THUMB, VIEW)
BATCH = 48  # frames per sandboxed run
MAX_PNG = {THUMB: 4 << 20, VIEW: 64 << 20}  # what a made PNG may be (the sandbox's output is untrusted too)
WAIT = 60.0  # seconds a request waits for another request's batch before answering "busy"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Previews:
    def __init__(self, store: Store, jobfiles: JobFiles, limits: sandbox.Limits):
        self.store = store
        self.jobfiles = jobfiles
        self.limits = replace(limits, wall=min(limits.wall, 120.0))
        self._lock = threading.Lock()  # one batch at a time: previews are the least urgent work

    def _cached(self, job_id: int, frame_id: int, sha: str, side: int) -> Path:
        return self.store.job_dir(job_id) / "previews" / f"{frame_id}-{sha[:16]}.{side}.png"

    def _failed(self, job_id: int, frame_id: int, sha: str) -> Path:
        """Says why a frame's image gave no preview: it is not tried again."""
        return self.store.job_dir(job_id) / "previews" / f"{frame_id}-{sha[:16]}.failed"

    def path(self, job_id: int, frame_id: int, side: int) -> Path:
        """The PNG of a done frame's image at most ``side`` pixels wide and high; made (with the
        job's other frames that have none yet) if it is not there yet."""
        if side not in SIDES:
            raise NotFound(f"no preview of {side} pixels; there are {', '.join(map(str, SIDES))}")
        frame = self.store.frame(job_id, frame_id)
        image = image_of(frame.files) if frame.state == states.DONE else None
        if image is None:
            raise NotFound(f"frame {frame_id} of job {job_id} has no image to show (yet)")
        cached = self._cached(job_id, frame_id, image["sha256"], side)
        if cached.exists():
            return cached
        failed = self._failed(job_id, frame_id, image["sha256"])
        if not failed.exists():
            if not self._lock.acquire(timeout=WAIT):
                raise Busy("the server is busy making previews; try again in a moment")
            try:
                if not cached.exists():
                    self._batch(job_id, frame_id)
            finally:
                self._lock.release()
        if cached.exists():
            return cached
        why = failed.read_text(errors="replace").strip() if failed.exists() else "it could not be made"
        raise NotFound(f"no preview of frame {frame_id}: {why}")

    def movie(self, job_id: int) -> tuple[Path, str]:
        """A done job's movie (the first done frame that made one), copied out of its frame's
        tarball once; and the type it is served as (what browsers cannot play is a download)."""
        for f in self.store.frames(job_id):
            movie = movie_of(f.files) if f.state == states.DONE else None
            if movie is None:
                continue
            suffix = Path(movie["name"]).suffix.lower()
            path = self.store.job_dir(job_id) / "previews" / f"movie-{movie['sha256'][:16]}{suffix}"
            if not path.exists():
                path.parent.mkdir(exist_ok=True)
                tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
                try:
                    _copy_member(self.store.frame_tar(job_id, f.frame_id), movie["name"], tmp, movie["size"])
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
            return path, MOVIE_TYPES.get(suffix, "application/octet-stream")
        raise NotFound(f"job {job_id} has no movie (yet)")

    def _batch(self, job_id: int, first: int) -> None:
        """Previews of ``first`` and the job's next done frames that have none, in one run."""
        jf, _ = self.jobfiles.get(job_id)
        todo: list[tuple[int, dict]] = []
        for f in sorted(self.store.frames(job_id), key=lambda f: (f.frame_id != first, f.frame_id)):
            image = image_of(f.files) if f.state == states.DONE else None
            if image is None or self._cached(job_id, f.frame_id, image["sha256"], THUMB).exists():
                continue
            if self._failed(job_id, f.frame_id, image["sha256"]).exists():
                continue
            todo.append((f.frame_id, image))
            if len(todo) >= BATCH:
                break
        if not todo:
            return
        sandbox.check()
        work = self.store.root / "work" / f"previews-{secrets.token_hex(6)}"
        work.mkdir(parents=True)
        out_dir = self.store.job_dir(job_id) / "previews"
        out_dir.mkdir(exist_ok=True)
        try:
            names = {}
            for frame_id, image in todo:
                name = f"{frame_id}{Path(image['name']).suffix.lower()}"
                try:
                    _copy_member(self.store.frame_tar(job_id, frame_id), image["name"], work / name, image["size"])
                except (OSError, KeyError, tarfile.TarError, NotFound) as e:  # retried, or deleted meanwhile
                    log.info("no preview of frame %s of job %s: %s", frame_id, job_id, e)
                    continue
                names[frame_id] = name
            todo = [(f, image) for f, image in todo if f in names]
            if not todo:
                return
            argv, binds = sandbox.python_command(
                "distren.thumbnails", [str(jf.width), str(jf.height), *map(str, SIDES), "--", *names.values()])
            out = sandbox.run(argv, work, self.limits, work.parent / f"{work.name}.log", binds=binds)
            said = {}
            for line in out.tail.splitlines():
                if line.startswith("distren-thumbnail-error: "):
                    name, _, why = line.removeprefix("distren-thumbnail-error: ").partition(": ")
                    said[name] = why
            for frame_id, image in todo:
                made = [work / f"{names[frame_id]}.{side}.png" for side in SIDES]
                if all(_plausible(p, side) for p, side in zip(made, SIDES)):
                    for p, side in zip(made, SIDES):
                        os.replace(p, self._cached(job_id, frame_id, image["sha256"], side))
                elif out.ok or names[frame_id] in said:  # this image's own fault: do not try again
                    why = said.get(names[frame_id], "the image did not decode")
                    self._failed(job_id, frame_id, image["sha256"]).write_text(why[:300] + "\n")
                else:
                    log.warning("previews of job %s: the sandboxed run failed (%s)", job_id, out.reason or out.returncode)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            (work.parent / f"{work.name}.log").unlink(missing_ok=True)


MOVIE_TYPES = {".mp4": "video/mp4", ".webm": "video/webm"}


def _copy_member(tar: Path, name: str, dest: Path, size: int) -> None:
    """A frame's file out of the frame's tarball (which this server wrote), at most ``size`` bytes."""
    with tarfile.open(tar) as tf:
        src = tf.extractfile(tf.getmember(name))
        if src is None:
            raise NotFound(f"{name} is not a file in its frame")
        with src, open(dest, "wb") as f:
            while size > 0 and (chunk := src.read(min(size, 1 << 20))):
                f.write(chunk)
                size -= len(chunk)


def _plausible(path: Path, side: int) -> bool:
    """A PNG of a bounded size (not decoded: browsers do that, never this server)."""
    try:
        if path.stat().st_size > MAX_PNG[side]:
            return False
        with open(path, "rb") as f:
            return f.read(8) == PNG_MAGIC
    except OSError:
        return False
