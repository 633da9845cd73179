"""Steering a job under way: priority, pause, resume, retry (owner or admin, as for cancel)."""

from __future__ import annotations

from typing import Optional

import typer

from .. import urls
from ..errors import DistrenError
from .common import ServerOpt, TokenOpt, _client, app, err

JobArg = typer.Argument(..., help="The job: distren://NAME/job/ID (or its bare ID).")


def _said(st: dict) -> str:
    return f"{st['url']} is {st['state']}" + (f" at priority {st['priority']}" if st.get("priority") else "")


@app.command()
def priority(job: str = JobArg,
             value: int = typer.Argument(..., metavar="N", help="Higher renders first; 0 is the default, "
                                         "from -1000 to 1000."),
             server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Set a job's priority: of the jobs with frames waiting, the highest's start first, here and
    on the peers that help render them."""
    with _client(server, token) as c:
        err.print(_said(c.set_priority(job, value)), highlight=False)


@app.command()
def pause(job: str = JobArg, server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Pause a job: frames under way finish, no new one starts (here or on a peer) until resumed."""
    with _client(server, token) as c:
        err.print(_said(c.pause(job)), highlight=False)


@app.command()
def resume(job: str = JobArg, server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Resume a paused job."""
    with _client(server, token) as c:
        err.print(_said(c.resume(job)), highlight=False)


def parse_frame_list(spec: str) -> list[int]:
    """``3``, ``2-5``, ``1,4,7-9``: frame ids."""
    out: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        a, dash, b = part.partition("-")
        if not a.isdigit() or (dash and not b.isdigit()):
            raise DistrenError(f"--frames {spec!r}: list frame ids and ranges, e.g. 3 or 2-5 or 1,4,7-9")
        lo, hi = int(a), int(b) if dash else int(a)
        if lo > hi or hi - lo > urls.MAX_ID or hi > urls.MAX_ID:
            raise DistrenError(f"--frames {spec!r}: {part} is not a range of frame ids")
        if len(out) + hi - lo > 100_000:
            raise DistrenError(f"--frames {spec!r}: at most 100000 frames at once")
        out.update(range(lo, hi + 1))
    return sorted(out)


@app.command()
def retry(target: list[str] = typer.Argument(..., metavar="JOB|FRAME...",
                                             help="A job (distren://NAME/job/ID) or frames of one job "
                                                  "(distren://NAME/job/ID/frame/FID)."),
          frames: Optional[str] = typer.Option(None, "--frames", metavar="LIST",
                                               help="Only these frames of the job, e.g. 2-5 or 1,4,7-9."),
          server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Requeue a failed or cancelled job: its failed frames (or the ones named) render again with
    fresh attempts, and a cancelled job is live again."""
    jobs, ids = set(), []
    for t in target:
        if "/frame/" in t:
            f = urls.parse_frame(t)
            jobs.add(str(f.job))
            ids.append(f.frame_id)
        else:
            jobs.add(t if t.isdigit() else str(urls.parse_job(t)))
    if len(jobs) != 1:
        raise DistrenError("retry one job at a time: every frame named must be of the same job")
    if frames is not None:
        if ids:
            raise DistrenError("name frames either as frame URLs or with --frames, not both")
        ids = parse_frame_list(frames)
    with _client(server, token) as c:
        st = c.requeue(jobs.pop(), ids or None)
    queued = [f for f in st["frames"] if f["state"] == "queued"]
    err.print(f"{_said(st)}; {len(queued)} frame(s) queued", highlight=False)
