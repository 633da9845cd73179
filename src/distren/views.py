"""Read-only answers for clients: a job's status, the job list, the servers, a frame's log, a
finished job's result. Nothing here changes state."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import states, urls
from .errors import Conflict

if TYPE_CHECKING:
    from .jobs import JobFiles
    from .store import Store


class Views:
    def __init__(self, url: urls.ServerURL, store: Store, jobfiles: JobFiles, advertise: str, slots: int,
                 rendering_now: Callable[[], list[str]], trust: Callable[[str], str]):
        """``trust(name)``: how this server regards a renderer, in words."""
        self.url = url
        self.store = store
        self.jobfiles = jobfiles
        self.advertise = advertise
        self.slots = slots
        self.rendering_now = rendering_now
        self.trust = trust

    def status(self, job_id: int) -> dict:
        job = self.store.get_job(job_id)
        jf, by_id = self.jobfiles.get(job_id)
        frames = self.store.frames(job_id)
        counts = {s: 0 for s in states.FRAME_STATES}
        for f in frames:
            counts[f.state] += 1
        job_url = self.url.job(job_id)
        return {
            "url": str(job_url),
            "id": job_id,
            "state": job.state,
            "priority": job.priority,
            "reason": job.reason,
            "submitter": job.submitter,
            "type": job.type,
            "width": jf.width,
            "height": jf.height,
            "created": job.created,
            "updated": job.updated,
            "counts": counts,
            "blocklist": self.store.blocklist(job_id),
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
            out.append({"url": str(self.url.job(job.id)), "id": job.id, "state": job.state,
                        "priority": job.priority, "reason": job.reason, "submitter": job.submitter, "created": job.created,
                        "frames": sum(counts.values()), "done": counts.get(states.DONE, 0)})
        return out

    def servers(self) -> list[dict]:
        me = {"name": self.url.name, "url": str(self.url), "address": self.advertise,
              "slots": self.slots, "rendering": self.rendering_now(), "last_heard": time.time(),
              "self": True, "trust": "-"}
        return [me] + [{"name": p["name"], "url": str(urls.ServerURL(p["name"])), "address": p["address"],
                        "slots": p["slots"], "rendering": p["rendering"], "last_heard": p["last_heard"],
                        "self": False, "trust": self.trust(p["name"])} for p in self.store.peers()]

    def result(self, job_id: int) -> Path:
        job = self.store.get_job(job_id)
        if job.state != states.DONE:
            raise Conflict(f"{self.url.job(job_id)} is {job.state}, not done; `distren wait` for it first")
        return self.store.result_path(job_id)

    def frame_log(self, job_id: int, frame_id: int) -> str:
        self.store.frame(job_id, frame_id)
        path = self.store.frame_log(job_id, frame_id)
        return path.read_text(errors="replace") if path.exists() else ""

    def events(self, job_id: int, after: int) -> list[dict]:
        return [e.__dict__ for e in self.store.events(job_id, after)]
