"""The HTTP server: uvicorn, plus the two defences against slow clients it lacks.

uvicorn closes idle keep-alive connections, but a client that sends half a request line and
then nothing keeps its connection, and its file descriptor, for ever: 1,100 such sockets on a
server with 1,024 descriptors left every new client with "connection reset". So:

* a connection whose request headers are not complete ``header_timeout`` seconds after it
  opened (or after its previous response) is dropped;
* at most ``max_connections`` are open. One more evicts the connection that has waited
  longest for its headers (never one whose request is under way), so a flood of slow clients
  cannot lock out the next one; if every connection is mid-request, the newcomer is dropped;
* the descriptor limit is raised to the hard limit at start, and ``max_connections`` must fit
  under it with room for the server's own files.

Slow *bodies* (an upload that trickles) are not bounded here: a request whose headers are
complete is authenticated and counted as work; the upload routes bound their size.
"""

from __future__ import annotations

import errno
import logging
import resource
import ssl
import socket
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import DistrenError

log = logging.getLogger("distren.http")

DEFAULT_HEADER_TIMEOUT = 10.0
# Seconds a stopping server waits for requests still under way before cancelling them: a
# dashboard's live stream (server-sent events) never ends by itself, and one left open in a
# browser would otherwise keep the server from ever exiting.
SHUTDOWN_GRACE = 3.0
# Descriptors kept for the server itself: SQLite and its WAL, frame logs and tarballs being
# written, renderers' pipes, connections to peers (up to 64).
FD_RESERVE = 256
MAX_DEFAULT_CONNECTIONS = 10_000


def raise_fd_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:  # e.g. above the kernel's nr_open
        log.warning("could not raise the file descriptor limit from %d to %d: %s", soft, target, e)
        return soft
    return target


def connection_limit(requested: int | None, fds: int) -> int:
    """The connection bound: ``requested``, or what the descriptor limit allows."""
    room = fds - FD_RESERVE
    if requested is None:
        return max(1, min(MAX_DEFAULT_CONNECTIONS, room))
    if requested < 1:
        raise DistrenError(f"--max-connections {requested}: use at least 1")
    if requested > room:
        raise DistrenError(
            f"--max-connections {requested} does not fit this process's limit of {fds} open files "
            f"({FD_RESERVE} are kept for the server's own files): use at most {max(room, 0)}, or raise "
            "the hard limit (ulimit -Hn, LimitNOFILE= in systemd)")
    return requested


def guarded_protocol(header_timeout: float, max_connections: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a header deadline and a bound on open connections."""
    # Connections waiting for request headers, longest first (insertion order), and all
    # connections not yet being closed (what counts against the bound: a closing transport
    # gives its descriptor back within a loop turn).
    waiting: OrderedDict[Guarded, None] = OrderedDict()
    live: set[Guarded] = set()

    class Guarded(HttpToolsProtocol):
        _deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            live.add(self)
            self._await_headers()
            if len(live) > max_connections:
                oldest = next(iter(waiting))  # this one at worst: it is waiting too
                oldest._drop("the server is at --max-connections")

        def _await_headers(self) -> None:
            self._stop_waiting()
            waiting[self] = None
            self._deadline = self.loop.call_later(header_timeout, self._drop, "no complete request headers in time")

        def _stop_waiting(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            waiting.pop(self, None)

        def _drop(self, why: str) -> None:
            self._stop_waiting()
            live.discard(self)
            # abort, not close: close would wait to flush what a client that is not reading
            # never takes.
            if not self.transport.is_closing():
                log.debug("dropping %s: %s", self.client, why)
                self.transport.abort()

        def on_headers_complete(self) -> None:
            self._stop_waiting()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # Wait for the next request's headers, unless the connection is ending or a
            # pipelined request (headers complete already) has just started.
            if not self.transport.is_closing() and self.cycle.response_complete:
                self._await_headers()

        def shutdown(self) -> None:
            # The server is stopping. An idle connection is aborted: closing a TLS one would wait
            # (30 s) for the client's close_notify, and an idle pooled client never sends it.
            if self.cycle is None or self.cycle.response_complete:
                self._drop("the server is stopping")
            else:
                super().shutdown()

        def connection_lost(self, exc) -> None:
            self._stop_waiting()
            live.discard(self)
            super().connection_lost(exc)

    return Guarded


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    max_connections: int
    fds: int


def limits(header_timeout: float = DEFAULT_HEADER_TIMEOUT, max_connections: int | None = None) -> Limits:
    """Check the options and raise the descriptor limit: before the server starts, so a bad
    option stops nothing half-started."""
    if not header_timeout > 0:
        raise DistrenError(f"--header-timeout {header_timeout}: use a number of seconds above 0")
    fds = raise_fd_limit()
    return Limits(header_timeout, connection_limit(max_connections, fds), fds)


def check_tls(cert: Path | None, key: Path | None) -> None:
    """--tls-cert and --tls-key go together and must load, before anything starts."""
    if (cert is None) != (key is None):
        raise DistrenError("--tls-cert and --tls-key go together: the certificate (chain) and its private key, PEM")
    if cert is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as e:
            raise DistrenError(f"--tls-cert {cert} / --tls-key {key}: cannot load them ({e})") from None


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, taken before anything else starts: a port in use is then one line
    and nothing half-made (no data folder)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        why = "the port is in use (another distren serve?)" if e.errno == errno.EADDRINUSE else e.strerror
        raise DistrenError(f"--listen {host}:{port}: cannot listen there: {why}; pick another with --listen") from None
    sock.set_inheritable(True)
    return sock


def serve(app, sock: socket.socket, lim: Limits, tls_cert: str | None = None, tls_key: str | None = None) -> None:
    """Run ``app`` on ``sock`` until interrupted; over HTTPS with ``tls_cert`` and ``tls_key`` (PEM files)."""
    log.info("at most %d connections (%d open files allowed); request headers due within %g s",
             lim.max_connections, lim.fds, lim.header_timeout)
    config = uvicorn.Config(app, log_level="warning", access_log=False, ws="none",
                            http=guarded_protocol(lim.header_timeout, lim.max_connections),
                            timeout_graceful_shutdown=SHUTDOWN_GRACE, ssl_certfile=tls_cert, ssl_keyfile=tls_key)
    uvicorn.Server(config).run(sockets=[sock])
