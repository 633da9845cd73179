"""``distren serve`` and ``distren demo``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from ..errors import DistrenError
from .common import app, err


@app.command()
def serve(
    name: str = typer.Option(..., "--name", metavar="NAME", help="This server's permanent name: distren://NAME/."),
    listen: str = typer.Option("127.0.0.1:8311", "--listen", metavar="HOST:PORT", help="HOST:PORT to listen on."),
    data: Path = typer.Option(Path("distren-data"), "--data", metavar="DIR", help="Folder for state, bundles and frames."),
    slots: Optional[int] = typer.Option(None, "--slots", min=0, metavar="N", help="Frames rendered at once (0: render nothing; "
                                       "default: as many as keep the cores busy while memory allows, up to 8 per core)."),
    frame_timeout: float = typer.Option(3600.0, "--frame-timeout", min=0.1, help="Seconds before a frame's render is stopped."),
    max_memory: str = typer.Option("4G", "--max-memory", help="Memory (address space) of each process of a render."),
    max_processes: int = typer.Option(256, "--max-processes", min=1, help="Processes and threads of one render."),
    max_output: str = typer.Option("64M", "--max-output", help="Output a render may print (its log keeps the last 1 MiB)."),
    max_files: int = typer.Option(1000, "--max-files", min=1, help="Files a render may write."),
    max_file_bytes: str = typer.Option("1G", "--max-file-bytes", help="Size of any one file a render writes, and of all its files together."),
    max_result_bytes: str = typer.Option("2G", "--max-result-bytes", help="What a peer's upload of one frame may "
                                         "be and unpack to."),
    peer: list[str] = typer.Option([], "--peer", help="Another server's address to peer with (repeatable); "
                                   "it may make requests of this one, whatever --peering says."),
    peering: str = typer.Option("approve", "--peering", help="Who else may peer: open (any server that proves "
                                "its name and key), approve (an admin accepts each: `distren peers accept`) or "
                                "allow-list (only --allow names and --peer addresses)."),
    allow: list[str] = typer.Option([], "--allow", help="A server name accepted on its own hello under any "
                                    "--peering policy (repeatable)."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="Serve HTTPS with this certificate (chain), PEM."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="The private key of --tls-cert, PEM."),
    tls_ca: Optional[Path] = typer.Option(None, "--tls-ca", help="A CA certificate (PEM) peers' certificates may "
                                          "be signed by, besides the system's CAs."),
    advertise: Optional[str] = typer.Option(None, "--advertise", help="The address peers reach this server at "
                                            "(default: http://LISTEN, or https:// with --tls-cert)."),
    lease_timeout: float = typer.Option(20.0, "--lease-timeout", min=0.1, help="Seconds a frame stays leased to "
                                        "another server without a renewal (renewed every third of it)."),
    blocklist_threshold: int = typer.Option(3, "--blocklist-threshold", min=1, help="Frames of one job another "
                                            "server may fail or let run out before it gets none of them."),
    announce_ttl: float = typer.Option(3600.0, "--announce-ttl", min=1.0, max=86400.0, help="Seconds the "
                                       "records announcing this server's jobs live unless re-signed (it re-signs "
                                       "them when a third is left): a job whose server is gone stops being offered."),
    new_origins_per_hour: int = typer.Option(100, "--new-origins-per-hour", min=0, help="Servers unknown here "
                                             "that one peer may introduce in an hour by relaying their jobs."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a connection may take to send "
                                         "its request headers before it is dropped."),
    max_connections: Optional[int] = typer.Option(None, "--max-connections", help="Open connections at most; "
                                                  "one more evicts the longest waiting for its headers "
                                                  "(default: what the open-file limit allows, up to 10000)."),
    verify_first: int = typer.Option(3, "--verify-first", min=0, help="A new renderer's first frames, all of "
                                     "which this server checks by rendering a block of each itself."),
    verify_share: float = typer.Option(0.1, "--verify-share", min=0.0, max=1.0, help="The share of a renderer's "
                                       "later frames checked, at random (0: only its first; with "
                                       "--verify-first 0, none)."),
    plugin: list[str] = typer.Option([], "--plugin", help="A Python module to import that registers more render "
                                     "backends (repeatable; see docs/architecture.md)."),
    log_level: str = typer.Option("info", "--log-level", metavar="LEVEL",
                                  help="What the server logs: debug, info, warning or error."),
):
    """Run a distren server."""
    from .. import backends, httpserver
    from ..api import create_app
    from ..sandbox import Limits, parse_size
    from ..service import DEFAULT_SLOTS, Server, Settings

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
        advertise = f"{'https' if tls_cert else 'http'}://{listen}"
    level = logging.getLevelName(log_level.upper())
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR") or not isinstance(level, int):
        raise DistrenError(f"--log-level {log_level!r}: use debug, info, warning or error")
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # httpx logs every request it sends at INFO: a line per lease renewal and announcement, so
    # only --log-level debug shows them (httpcore's connection chatter never).
    logging.getLogger("httpx").setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
    logging.getLogger("httpcore").setLevel(max(level, logging.WARNING))
    http_limits = httpserver.limits(header_timeout, max_connections)
    httpserver.check_tls(tls_cert, tls_key)
    for module in plugin:
        backends.load_plugin(module)
    sock = httpserver.bind(host, int(port))
    server = Server(Settings(name=name, data=data, slots=DEFAULT_SLOTS if slots is None else slots, adaptive=slots is None,
                             limits=limits, advertise=advertise, peers=peer,
                             lease_timeout=lease_timeout, blocklist_threshold=blocklist_threshold,
                             verify_first=verify_first, verify_share=verify_share,
                             announce_ttl=announce_ttl, new_origins_per_hour=new_origins_per_hour,
                             peering=peering, allow=allow, tls_ca=tls_ca,
                             max_result_bytes=parse_size(max_result_bytes, "--max-result-bytes")))
    server.start()
    can = ", ".join(f"{b} {v}" for b, v in backends.available().items())
    err.print(f"distren server {server.url} listening on {'https' if tls_cert else 'http'}://{listen} with {server.settings.slots} slot(s){' at most' if server.settings.adaptive else ''} "
              f"rendering {can}; "
              f"admin token in {data / 'admin.token'}")
    try:
        httpserver.serve(create_app(server), sock, http_limits,
                         str(tls_cert) if tls_cert else None, str(tls_key) if tls_key else None)
    finally:
        server.stop()



@app.command()
def demo(output: Path = typer.Option(Path("distren-demo"), "-o", "--output", metavar="DIR",
                                    help="Where the frames and the preview go.")):
    """Start three servers on this machine that render the bundled animation together, download
    it and make a preview."""
    from ..demo import run

    run(output)

