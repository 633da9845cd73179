"""The ``distren`` command line."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .client import DEFAULT_SERVER, Client
from .errors import DistrenError, Forbidden, Unauthorized

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="distren: a federated distributed renderer (POV-Ray first).")
user_app = typer.Typer(no_args_is_help=True, help="Manage users on a server.")
app.add_typer(user_app, name="user")
peers_app = typer.Typer(no_args_is_help=True, help="Manage this server's peers.")
app.add_typer(peers_app, name="peers")
err = Console(stderr=True)
out = Console()

ServerOpt = typer.Option(None, "--server", envvar="DISTREN_SERVER",
                         help=f"The server's HTTP address (default {DEFAULT_SERVER}).")
TokenOpt = typer.Option(None, "--token", envvar="DISTREN_TOKEN", help="Your token on that server.")

TilesOpt = typer.Option(None, "--tiles", help="Render a still as CxR tiles on many servers, then stitch them.")
MovieOpt = typer.Option(False, "--movie", help="Add a frame that encodes the animation as an MP4.")
ChainOpt = typer.Option(False, "--chain", help="Each frame waits for the previous one and gets its files.")

EXIT_FAILED = 1
EXIT_TIMEOUT = 3


def _client(server: str | None, token: str | None) -> Client:
    return Client(server, token)


def _ask(server: str | None, token: str | None, call, as_json: bool):
    """The server's answer to ``call(client)``; with --json it is printed instead (None)."""
    with _client(server, token) as c:
        data = call(c)
    if as_json:
        print(json.dumps(data, indent=2))
        return None
    return data


@app.command()
def serve(
    name: str = typer.Option(..., "--name", help="This server's permanent name: distren://NAME/."),
    listen: str = typer.Option("127.0.0.1:8311", "--listen", help="HOST:PORT to listen on."),
    data: Path = typer.Option(Path("distren-data"), "--data", help="Folder for state, bundles and frames."),
    slots: Optional[int] = typer.Option(None, "--slots", min=0, help="Frames rendered at once (0: render nothing)."),
    frame_timeout: float = typer.Option(3600.0, "--frame-timeout", min=0.1, help="Seconds before a frame's render is stopped."),
    max_memory: str = typer.Option("4G", "--max-memory", help="Memory (address space) of each process of a render."),
    max_processes: int = typer.Option(256, "--max-processes", min=1, help="Processes and threads of one render."),
    max_output: str = typer.Option("64M", "--max-output", help="Output a render may print (its log keeps the last 1 MiB)."),
    max_files: int = typer.Option(1000, "--max-files", min=1, help="Files a render may write."),
    max_file_bytes: str = typer.Option("1G", "--max-file-bytes", help="Size of any one file a render writes, and of all its files together."),
    max_result_bytes: str = typer.Option("2G", "--max-result-bytes", help="What a peer's upload of one frame may "
                                         "be and unpack to."),
    peer: list[str] = typer.Option([], "--peer", help="Another server's HTTP address to peer with (repeatable)."),
    advertise: Optional[str] = typer.Option(None, "--advertise", help="The HTTP address peers reach this server at "
                                            "(default: http://LISTEN)."),
    lease_timeout: float = typer.Option(180.0, "--lease-timeout", help="Seconds a frame stays leased to another "
                                        "server without a renewal."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a connection may take to send "
                                         "its request headers before it is dropped."),
    max_connections: Optional[int] = typer.Option(None, "--max-connections", help="Open connections at most; "
                                                  "one more evicts the longest waiting for its headers "
                                                  "(default: what the open-file limit allows, up to 10000)."),
    plugin: list[str] = typer.Option([], "--plugin", help="A Python module to import that registers more render "
                                     "backends (repeatable; see docs/architecture.md)."),
):
    """Run a distren server."""
    from . import backends, httpserver
    from .api import create_app
    from .sandbox import Limits, parse_size
    from .service import DEFAULT_SLOTS, Server, Settings

    limits = Limits(memory=parse_size(max_memory, "--max-memory"), processes=max_processes, wall=frame_timeout,
                    output=parse_size(max_output, "--max-output"), files=max_files,
                    file_bytes=parse_size(max_file_bytes, "--max-file-bytes"))
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise DistrenError(f"--listen {listen!r}: use HOST:PORT, e.g. 127.0.0.1:8311")
    host = host.strip("[]")
    if advertise is None:
        if host in ("0.0.0.0", "::"):
            raise DistrenError(f"--listen {listen} listens on every address; say which one peers use with --advertise")
        advertise = f"http://{listen}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    http_limits = httpserver.limits(header_timeout, max_connections)
    for module in plugin:
        backends.load_plugin(module)
    server = Server(Settings(name=name, data=data, slots=DEFAULT_SLOTS if slots is None else slots,
                             limits=limits, advertise=advertise, peers=peer,
                             lease_timeout=lease_timeout,
                             max_result_bytes=parse_size(max_result_bytes, "--max-result-bytes")))
    server.start()
    can = ", ".join(f"{b} {v}" for b, v in backends.available().items())
    err.print(f"distren server {server.url} listening on http://{listen} with {server.settings.slots} slot(s) "
              f"rendering {can}; "
              f"admin token in {data / 'admin.token'}")
    try:
        httpserver.serve(create_app(server), host, int(port), http_limits)
    finally:
        server.stop()


@app.command()
def pack(
    source: Path = typer.Argument(..., help="A scene: an .ini, a .pov, or a folder holding one."),
    output: Path = typer.Option(..., "-o", "--output", help="The bundle (.tar) to write."),
    width: Optional[int] = typer.Option(None, "--width"),
    height: Optional[int] = typer.Option(None, "--height"),
    frames: Optional[str] = typer.Option(None, "--frames", help="Keep frames A-B of the INI's animation."),
    tiles: Optional[str] = TilesOpt,
    movie: bool = MovieOpt,
    chain: bool = ChainOpt,
):
    """Write a job bundle (distrenjob.xml + the scene) ready to submit."""
    from .pack import pack as do_pack

    jf = do_pack(source, output, width, height, frames, tiles, movie, chain)
    err.print(f"packed {len(jf.frames)} frame(s) at {jf.width}x{jf.height} into {output}")


@app.command()
def submit(
    source: Path = typer.Argument(..., help="A bundle (.tar) or a scene (.ini, .pov, folder)."),
    width: Optional[int] = typer.Option(None, "--width"),
    height: Optional[int] = typer.Option(None, "--height"),
    frames: Optional[str] = typer.Option(None, "--frames"),
    tiles: Optional[str] = TilesOpt,
    movie: bool = MovieOpt,
    chain: bool = ChainOpt,
    wait_: bool = typer.Option(False, "--wait", help="Show progress until the job ends."),
    server: Optional[str] = ServerOpt,
    token: Optional[str] = TokenOpt,
):
    """Submit a job; prints its URL as the last line."""
    from .pack import pack as do_pack

    with _client(server, token) as c, tempfile.TemporaryDirectory(prefix="distren-") as tmp:
        if source.suffix == ".tar" and source.is_file():
            if width or height or frames or tiles or movie or chain:
                raise DistrenError("--width/--height/--frames/--tiles/--movie/--chain apply to scenes; "
                                   "pack the bundle again to change them")
            tarball = source
        else:
            tarball = Path(tmp) / "job.tar"
            do_pack(source, tarball, width, height, frames, tiles, movie, chain)
        url = c.submit(tarball)
    print(url, flush=True)
    if wait_:
        _wait(url, None, server, token)


def _wait(url: str, timeout: float | None, server: str | None, token: str | None) -> None:
    from .progress import follow, report

    with _client(server, token) as c:
        try:
            st = follow(c, url, timeout)
        except TimeoutError as e:
            err.print(f"[yellow]timeout:[/] {e}")
            raise typer.Exit(EXIT_TIMEOUT) from None
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
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    server: Optional[str] = ServerOpt,
    token: Optional[str] = TokenOpt,
):
    """Show a job's state and each frame's."""
    st = _ask(server, token, lambda c: c.status(job), as_json)
    if st is None:
        return
    counts = ", ".join(f"{n} {s}" for s, n in st["counts"].items() if n)
    out.print(f"[bold]{st['url']}[/]  {st['state']}  ({counts})  {st['width']}x{st['height']}  by {st['submitter']}")
    if st["reason"]:
        out.print(f"  {st['reason']}")
    table = Table("frame", "state", "server", "tries", "files / reason")
    for f in st["frames"]:
        detail = " ".join(f["files"]) if f["state"] == "done" else f["reason"]
        table.add_row(str(f["id"]), f["state"], f["server"] or "", str(f["attempts"]), detail)
    out.print(table)


@app.command()
def events(
    job: str = typer.Argument(..., help="distren://NAME/job/ID"),
    as_json: bool = typer.Option(False, "--json"),
    server: Optional[str] = ServerOpt,
    token: Optional[str] = TokenOpt,
):
    """Every state change of a job and its frames, with the reason it happened."""
    import datetime

    rows = _ask(server, token, lambda c: c.events(job), as_json)
    if rows is None:
        return
    table = Table("time", "frame", "change", "reason")
    for e in rows:
        at = datetime.datetime.fromtimestamp(e["at"]).strftime("%H:%M:%S.%f")[:-3]
        frame = "job" if e["frame_id"] is None else str(e["frame_id"])
        table.add_row(at, frame, f"{e['old'] or '-'} -> {e['new']}", e["reason"])
    out.print(table)


@app.command()
def jobs(server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """List the server's jobs."""
    with _client(server, token) as c:
        rows = c.jobs()
    table = Table("job", "state", "frames", "submitter")
    for j in rows:
        table.add_row(j["url"], j["state"], f"{j['done']}/{j['frames']}", j["submitter"])
    out.print(table)


@app.command()
def download(
    job: str = typer.Argument(...),
    output: Path = typer.Option(..., "-o", "--output", help="Folder to put the frames in."),
    server: Optional[str] = ServerOpt,
    token: Optional[str] = TokenOpt,
):
    """Download a finished job's frames."""
    with _client(server, token) as c:
        names = c.download(job, output)
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
def retry(frame: str = typer.Argument(..., help="distren://NAME/job/ID/frame/FID"),
          server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Queue a failed frame again."""
    with _client(server, token) as c:
        st = c.retry(frame)
    err.print(f"{frame} queued; {st['url']} is {st['state']}")


@app.command()
def log(frame: str = typer.Argument(..., help="distren://NAME/job/ID/frame/FID"),
        server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Print a frame's renderer log (every attempt)."""
    with _client(server, token) as c:
        sys.stdout.write(c.log(frame))


@app.command()
def servers(server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt,
            as_json: bool = typer.Option(False, "--json")):
    """List this server and its peers: slots, what they render now, when last heard from."""
    import time

    rows = _ask(server, token, lambda c: c.servers(), as_json)
    if rows is None:
        return
    table = Table("server", "address", "slots", "rendering now", "last heard")
    for r in rows:
        ago = "this server" if r["self"] else (f"{time.time() - r['last_heard']:.0f} s ago" if r["last_heard"] else "never")
        table.add_row(r["url"], r["address"], "" if r["slots"] is None else str(r["slots"]),
                      "\n".join(r["rendering"]) or "-", ago)
    out.print(table)


@peers_app.command("add")
def peers_add(address: str = typer.Argument(..., help="The other server's HTTP address."),
              server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Peer with another server now (admin only): both learn and pin each other's key."""
    with _client(server, token) as c:
        res = c.add_peer(address)
    err.print(f"peered with {res['peer']} at {res['address']}")


@peers_app.command("remove")
def peers_remove(name: str = typer.Argument(..., help="The peer's server name."),
                 server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Forget a peer and its pinned key (admin only), e.g. after it really changed its key."""
    with _client(server, token) as c:
        c.remove_peer(name)
    err.print(f"removed distren://{name}/")


@user_app.command("add")
def user_add(name: str = typer.Argument(...),
             admin: bool = typer.Option(False, "--admin", help="The new user may manage users and peers, and "
                                        "sees every job."),
             server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Create a user (admin only); prints the new user's token."""
    with _client(server, token) as c:
        res = c.add_user(name, admin)
    err.print(f"created {res['user']}" + (" (admin)" if res.get("admin") else ""))
    print(res["token"])


@user_app.command("list")
def user_list(server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt,
              as_json: bool = typer.Option(False, "--json")):
    """List the server's users (admin only): admin or not, revoked or not, how many jobs."""
    rows = _ask(server, token, lambda c: c.users(), as_json)
    if rows is None:
        return
    table = Table("user", "admin", "revoked", "jobs")
    for u in rows:
        table.add_row(u["name"], "yes" if u["admin"] else "", "revoked" if u["revoked"] else "", str(u["jobs"]))
    out.print(table)


@user_app.command("revoke")
def user_revoke(name: str = typer.Argument(...), server: Optional[str] = ServerOpt,
                token: Optional[str] = TokenOpt):
    """Revoke a user (admin only): their token stops working at once; their jobs go on."""
    with _client(server, token) as c:
        res = c.revoke_user(name)
    err.print(f"{res['revoked']} was revoked already" if res["already"] else f"revoked {res['revoked']}")


@app.command()
def demo(output: Path = typer.Option(Path("distren-demo"), "-o", "--output")):
    """Start a local server, render the bundled animation, download it and make a preview."""
    from .demo import run

    run(output)


# The server's answers describe the problem; what to do about it from a shell is the CLI's to say.
_ADVICE = {
    Unauthorized: "Pass --token or set DISTREN_TOKEN. A server's first admin token is in its DATA/admin.token; "
                  "`distren user add NAME` (run by an admin) makes more.",
    Forbidden: "Ask the server's admin to do this.",
}


def main() -> None:
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting with it.
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except DistrenError as e:
        err.print(f"[red]error:[/] {e}", highlight=False)
        if advice := _ADVICE.get(type(e)):
            err.print(advice, highlight=False)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        # Usage errors. Typer carries its own copy of click, so recognise them by their shape.
        show, code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise
