"""Read-only answers for the dashboard's pages (:mod:`distren.api.people`): what :mod:`distren.views`
answers clients, shaped for people: progress, elapsed and remaining time, which server holds
each frame, online or not. Nothing here changes state; every answer is plain data for a template
(which escapes it) and for the live updates."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import backends, images, states, urls

if TYPE_CHECKING:
    from .jobs import JobFiles
    from .store import JobRow, Store

# A peer is shown online while it was heard from this recently: the sync thread pulls every peer's
# state every few seconds (gossip.SYNC_INTERVAL), so three missed pulls and then some.
ONLINE_WITHIN = 15.0
MAX_EVENTS = 200  # the newest events a job's page shows
MAX_JOBS = 200  # the newest jobs the jobs page lists (`distren jobs` lists them all)
NAME_CHARS = 80  # of a job's name as listed


def job_name(settings: dict[str, str], jtype: str) -> str:
    """What a person calls a job: the scene it renders (from the job's own file: hostile text,
    escaped where it is shown, and cut short here)."""
    name = settings.get("ini") or settings.get("scene") or jtype
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 3] + "..."


def short(server: str | None) -> str:
    """``distren://alpha/`` as people say it: ``alpha``."""
    return (server or "").removeprefix(urls.SCHEME).rstrip("/")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def timing(job: JobRow, done: int, total: int, now: float) -> tuple[float, float | None]:
    """Elapsed seconds, and the remaining ones at the rate so far (None while nothing is done,
    and for a job that will not go on)."""
    final = job.state in states.FINAL_JOB_STATES
    elapsed = (job.updated if final else now) - job.created
    if final or done == 0 or done >= total:
        return elapsed, (0.0 if job.state == states.DONE else None)
    return elapsed, elapsed / done * (total - done)


def image_of(files: list[dict]) -> dict | None:
    """The frame's image the dashboard shows (the first one Pillow decodes), or None."""
    return next((f for f in files if Path(f["name"]).suffix.lower() in images.SUFFIXES), None)


MOVIE_SUFFIXES = {".mp4", ".webm", ".mkv", ".mov", ".avi"}


def movie_of(files: list[dict]) -> dict | None:
    return next((f for f in files if Path(f["name"]).suffix.lower() in MOVIE_SUFFIXES), None)


class Dashboard:
    def __init__(self, url: urls.ServerURL, store: Store, jobfiles: JobFiles, advertise: str, slots: int,
                 rendering_now: Callable[[], list[str]]):
        self.url = url
        self.store = store
        self.jobfiles = jobfiles
        self.advertise = advertise
        self.slots = slots
        self.rendering_now = rendering_now
        # A job's name and size never change; parsing its distrenjob.xml (20,000 frames: a third
        # of a second) on every live update of the jobs page would, so they are kept here.
        self._names: dict[int, tuple[str, str]] = {}

    def _name_and_size(self, job: JobRow) -> tuple[str, str]:
        got = self._names.get(job.id)
        if got is None:
            jf, _ = self.jobfiles.get(job.id)
            got = (job_name(jf.settings, job.type), f"{jf.width}x{jf.height}")
            if len(self._names) >= 10 * MAX_JOBS:
                self._names.clear()
            self._names[job.id] = got
        return got

    def jobs(self, user: str, admin: bool, state: str | None = None, owner: str | None = None) -> dict:
        """The jobs ``user`` may see (their own; every job for an admin), filtered, newest first,
        and the owners there are to filter by."""
        now = time.time()
        rows = self.store.list_jobs(None if admin else str(self.url.user(user)))
        owners = sorted({j.submitter for j in rows})
        chosen = [j for j in reversed(rows) if (not state or j.state == state) and (not owner or j.submitter == owner)]
        return {"jobs": [self.job_summary(job, now) for job in chosen[:MAX_JOBS]], "owners": owners,
                "hidden": max(0, len(chosen) - MAX_JOBS), "peer_jobs": self.peer_jobs() if admin else []}

    def job_summary(self, job: JobRow, now: float) -> dict:
        counts = self.store.frame_counts(job.id)
        total, done = sum(counts.values()), counts.get(states.DONE, 0)
        elapsed, remaining = timing(job, done, total, now)
        name, size = self._name_and_size(job)
        return {"id": job.id, "url": str(self.url.job(job.id)), "name": name,
                "owner": job.submitter, "origin": self.url.name, "state": job.state, "reason": job.reason,
                "done": done, "total": total, "counts": counts, "priority": job.priority,
                "percent": round(100 * done / total) if total else 0,
                "elapsed": duration(elapsed), "remaining": duration(remaining),
                "size": size}

    def peer_jobs(self) -> list[dict]:
        """Other servers' jobs this server can help render (from their announcements), with the
        frames of each it renders now."""
        mine = str(self.url)
        rendering: dict[str, list[str]] = {}
        for frame in self.rendering_now():
            if not frame.startswith(mine):
                rendering.setdefault(frame.rsplit("/frame/", 1)[0], []).append(frame)
        can = set(backends.available())
        out = []
        for ann in self.store.announcements():
            if ann.get("origin") == self.url.name or not isinstance(ann.get("job"), str):
                continue
            needs = ann.get("backends") if isinstance(ann.get("backends"), list) else []
            if not can.intersection(map(str, needs)) and ann["job"] not in rendering:
                continue
            out.append({"url": ann["job"], "origin": str(ann.get("origin")), "address": str(ann.get("address", "")),
                        "total": ann.get("frames") if isinstance(ann.get("frames"), int) else None,
                        "rendering": rendering.get(ann["job"], [])})
        return out

    def job(self, job_id: int) -> dict:
        """A job's page: its summary, every frame (state, server, its image), the movie and the
        bundle when there are, and the newest events with their reasons."""
        job = self.store.get_job(job_id)
        summary = self.job_summary(job, time.time())
        frames, movie = [], None
        for f in self.store.frames(job_id):
            image = image_of(f.files) if f.state == states.DONE else None
            if f.state == states.DONE and movie is None:
                movie = movie_of(f.files)
            frames.append({"id": f.frame_id, "state": f.state, "server": short(f.server), "reason": f.reason,
                           "attempts": f.attempts,
                           "image": image["sha256"][:16] if image else None})
        events = self.store.events(job_id)
        shown = events[-MAX_EVENTS:]
        return {**summary, "frames": frames, "movie": movie,
                "result": job.state == states.DONE and self.store.result_path(job_id).exists(),
                # a failed or cancelled job's finished frames download too
                "partial": job.state in (states.FAILED, states.CANCELLED) and summary["done"] > 0,
                "events": [{"at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at)),
                            "what": f"frame {e.frame_id}" if e.frame_id is not None else "job",
                            "old": e.old, "new": e.new, "reason": e.reason} for e in reversed(shown)],
                "events_hidden": len(events) - len(shown)}

    def frame(self, job_id: int, frame_id: int) -> dict:
        f = self.store.frame(job_id, frame_id)
        image = image_of(f.files) if f.state == states.DONE else None
        return {"job": job_id, "id": frame_id, "url": str(self.url.job(job_id).frame(frame_id)),
                "state": f.state, "server": short(f.server), "reason": f.reason, "attempts": f.attempts,
                "files": [x["name"] for x in f.files], "image": image["sha256"][:16] if image else None}

    def servers(self) -> list[dict]:
        now = time.time()
        me = {"name": self.url.name, "url": str(self.url), "address": self.advertise, "slots": self.slots,
              "backends": ", ".join(f"{k} {v}" for k, v in backends.available().items()),
              "rendering": self.rendering_now(), "heard": "now", "online": True, "self": True, "trust": ""}
        out = [me]
        for p in self.store.peers():
            heard = p.get("last_heard")
            out.append({"name": p["name"], "url": str(urls.ServerURL(p["name"])), "address": p["address"],
                        "slots": p["slots"] if p["slots"] is not None else "-",
                        "backends": ", ".join(map(str, p["backends"])) if p.get("backends") else "-",
                        "rendering": list(p["rendering"]),
                        "heard": f"{duration(now - heard)} ago" if heard else "never",
                        "online": bool(heard and now - heard <= ONLINE_WITHIN), "self": False,
                        "trust": str(p.get("trust") or "")})
        return out
