"""The commands for jobs: pack, submit, wait, status, events, jobs, download, cancel, delete, log."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.table import Column, Table

from ..errors import DistrenError
from .common import (EXIT_FAILED, EXIT_TIMEOUT, ChainOpt, FramesOpt, HeightOpt, JsonOpt, MovieOpt, ServerOpt,
                     TilesOpt, TokenOpt, WidthOpt, _ask, _client, app, err, out)


@app.command()
def pack(
    source: Path = typer.Argument(..., help="A scene: an .ini, a .pov, a .blend, or a folder holding one."),
    output: Path = typer.Option(..., "-o", "--output", help="The bundle (.tar) to write."),
    width: Optional[int] = WidthOpt,
    height: Optional[int] = HeightOpt,
    frames: Optional[str] = FramesOpt,
    tiles: Optional[str] = TilesOpt,
    movie: bool = MovieOpt,
    chain: bool = ChainOpt,
):
    """Write a job bundle (distrenjob.xml + the scene) ready to submit."""
    from ..pack import pack as do_pack

    jf = do_pack(source, output, width, height, frames, tiles, movie, chain)
    err.print(f"packed {len(jf.frames)} frame(s) at {jf.width}x{jf.height} into {output}")


@app.command()
def submit(
    source: Path = typer.Argument(..., help="A bundle (.tar) or a scene (.ini, .pov, folder)."),
    width: Optional[int] = WidthOpt,
    height: Optional[int] = HeightOpt,
    frames: Optional[str] = FramesOpt,
    tiles: Optional[str] = TilesOpt,
    movie: bool = MovieOpt,
    chain: bool = ChainOpt,
    wait_: bool = typer.Option(False, "--wait", help="Show progress until the job ends."),
    priority: int = typer.Option(0, "--priority", metavar="N",
                                 help="-1000 to 1000; higher renders first (see `distren priority`)."),
    server: Optional[str] = ServerOpt,
    token: Optional[str] = TokenOpt,
):
    """Submit a job; prints its URL as the last line."""
    from ..pack import pack as do_pack

    with _client(server, token) as c, tempfile.TemporaryDirectory(prefix="distren-") as tmp:
        if source.suffix == ".tar" and source.is_file():
            if width or height or frames or tiles or movie or chain:
                raise DistrenError("--width/--height/--frames/--tiles/--movie/--chain apply to scenes; "
                                   "pack the bundle again to change them")
            tarball = source
        else:
            tarball = Path(tmp) / "job.tar"
            do_pack(source, tarball, width, height, frames, tiles, movie, chain)
        url = c.submit(tarball, priority=priority)
    print(url, flush=True)
    if wait_:
        _wait(url, None, server, token)


def _wait(url: str, timeout: float | None, server: str | None, token: str | None) -> None:
    from ..progress import follow, report

    with _client(server, token) as c:
        try:
            st = follow(c, url, timeout)
        except TimeoutError as e:
            err.print(f"[yellow]timeout:[/] {e}")
            raise typer.Exit(EXIT_TIMEOUT) from None
        except KeyboardInterrupt:
            err.print(f"stopped watching; {url} keeps running on the server. Follow it with "
                      f"`distren wait {url}` or `distren status {url}`; stop it with `distren cancel {url}`.",
                      highlight=False)
            raise typer.Exit(130) from None
    if not report(st):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def wait(
    job: str = typer.Argument(..., help="distren://NAME/job/ID"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Give up after S seconds (exit 3)."),
    server: Optional[str] = ServerOpt,
    token: Optional[str] = TokenOpt,
):
    """Wait for a job: exit 0 when done, 1 when failed or cancelled, 3 on timeout."""
    _wait(job, timeout, server, token)


@app.command()
def status(
    job: str = typer.Argument(..., help="distren://NAME/job/ID"),
    as_json: bool = JsonOpt,
    server: Optional[str] = ServerOpt,
    token: Optional[str] = TokenOpt,
):
    """Show a job's state and each frame's."""
    st = _ask(server, token, lambda c: c.status(job), as_json)
    if st is None:
        return
    counts = ", ".join(f"{n} {s}" for s, n in st["counts"].items() if n)
    prio = f"  priority {st['priority']}" if st.get("priority") else ""
    out.print(f"[bold]{st['url']}[/]  {st['state']}  ({counts})  {st['width']}x{st['height']}{prio}  by {st['submitter']}")
    if st["reason"]:
        out.print(f"  {st['reason']}")
    for b in st["blocklist"]:
        out.print(f"  block-listed: {b['server']}: {b['reason']}")
    table = Table("frame", "state", "server", "tries", Column("files / reason", overflow="fold"))
    for f in st["frames"]:
        detail = " ".join(f["files"]) if f["state"] == "done" else f["reason"]
        table.add_row(str(f["id"]), f["state"], f["server"] or "", str(f["attempts"]), detail)
    out.print(table)


@app.command()
def events(
    job: str = typer.Argument(..., help="distren://NAME/job/ID"),
    as_json: bool = JsonOpt,
    server: Optional[str] = ServerOpt,
    token: Optional[str] = TokenOpt,
):
    """Every state change of a job and its frames, with the reason it happened."""
    import datetime

    rows = _ask(server, token, lambda c: c.events(job), as_json)
    if rows is None:
        return
    table = Table("time", "frame", "change", Column("reason", overflow="fold"))  # wrapped, never cut off
    for e in rows:
        at = datetime.datetime.fromtimestamp(e["at"]).strftime("%H:%M:%S.%f")[:-3]
        frame = "job" if e["frame_id"] is None else str(e["frame_id"])
        table.add_row(at, frame, f"{e['old'] or '-'} -> {e['new']}", e["reason"])
    out.print(table)


@app.command()
def jobs(state: list[str] = typer.Option([], "--state", metavar="STATE",
                                        help="Only jobs in this state (repeatable): queued, rendering, paused, "
                                             "failed, done or cancelled."),
         user: Optional[str] = typer.Option(None, "--user", metavar="USER", help="Only jobs this user submitted."),
         as_json: bool = JsonOpt, server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """List the server's jobs (yours; an admin's: everyone's)."""
    from .. import states as st

    for s in state:
        if s not in st.JOB_STATES:
            raise DistrenError(f"--state {s!r}: one of {', '.join(st.JOB_STATES)}")
    with _client(server, token) as c:
        rows = [j for j in c.jobs() if (not state or j["state"] in state)
                and (user is None or user in (j["submitter"], j["submitter"].rsplit("/", 1)[-1]))]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("job", "state", "frames", "priority", "submitter")
    for j in rows:
        table.add_row(j["url"], j["state"], f"{j['done']}/{j['frames']}", str(j.get("priority", 0)), j["submitter"])
    out.print(table)


@app.command()
def download(
    job: str = typer.Argument(...),
    output: Path = typer.Option(..., "-o", "--output", help="Folder to put the frames in."),
    server: Optional[str] = ServerOpt,
    token: Optional[str] = TokenOpt,
):
    """Download a finished job's frames; of a failed or cancelled job, the frames it finished."""
    with _client(server, token) as c:
        st = c.status(job)
        names = c.download(job, output)
    if st["state"] in ("failed", "cancelled"):
        err.print(f"{st['url']} is {st['state']}: {st['counts'].get('done', 0)} of {len(st['frames'])} frame(s) "
                  f"finished", highlight=False)
    err.print(f"{len(names)} file(s) in {output}")


@app.command()
def cancel(job: str = typer.Argument(...), server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Cancel a job: nothing more of it is rendered."""
    with _client(server, token) as c:
        st = c.cancel(job)
    err.print(f"{st['url']} {st['state']}")


@app.command()
def delete(job: str = typer.Argument(...), server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Delete a finished, failed or cancelled job and its files. Its id is never used again."""
    with _client(server, token) as c:
        c.delete(job)
    err.print(f"deleted {job}")


@app.command()
def log(frame: str = typer.Argument(..., help="distren://NAME/job/ID/frame/FID"),
        server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Print a frame's renderer log (every attempt)."""
    from .. import urls

    with _client(server, token) as c:
        text = c.log(frame)
        if not text:
            f = urls.parse_frame(frame)
            row = next(x for x in c.status(str(f.job))["frames"] if x["id"] == f.frame_id)
    if not text:
        err.print(f"{frame} has no log yet: no render of it has ended (it is {row['state']})", highlight=False)
        return
    sys.stdout.write(text)
