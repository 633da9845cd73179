"""Slow clients against a real server process: connections that never finish their request
headers are dropped after --header-timeout, at most --max-connections are open, and a flood of
them never locks out the next client, not even with 1,024 file descriptors."""

from __future__ import annotations

import resource
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import ServerProc, free_port

pytestmark = pytest.mark.e2e

PARTIAL = b"GET /api/server HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow"  # never finished


@pytest.fixture(autouse=True, scope="module")
def enough_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    assert want >= 2300, f"these tests open 2,000 sockets; this process may open only {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start(tmp_path: Path, *args: str, fds: int | None = None) -> ServerProc:
    """A server; with ``fds``, its soft and hard open-file limits are both that."""
    limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (fds, fds))) if fds else None
    return ServerProc("slow", tmp_path / "data", free_port(), ["--slots", "0", *args], preexec=limit).start()


def open_slow(server: ServerProc, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(PARTIAL)
        s.setblocking(False)
        socks.append(s)
    return socks


def closed_by_server(socks: list[socket.socket], want: int, timeout: float) -> set[int]:
    """Wait until at least ``want`` of ``socks`` have been closed by the server (EOF or reset);
    return their indexes."""
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    closed: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(closed) < want and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                try:
                    data = key.fileobj.recv(4096)
                except ConnectionResetError:
                    data = b""
                except BlockingIOError:
                    continue
                assert data == b"", f"the server answered a request it never fully got: {data[:80]!r}"
                closed.add(key.data)
                sel.unregister(key.fileobj)
    finally:
        sel.close()
    return closed


def answer_time(server: ServerProc) -> float:
    t0 = time.monotonic()
    r = httpx.get(f"{server.http}/api/server", timeout=10)
    assert r.status_code == 200 and r.json()["name"] == "slow"
    return time.monotonic() - t0


def close_all(socks):
    for s in socks:
        s.close()


def test_1100_slow_sockets_with_1024_fds_do_not_lock_out_the_next_client(tmp_path):
    server = start(tmp_path, "--header-timeout", "3", fds=1024)
    socks = open_slow(server, 1100)
    try:
        # More slow sockets than the process has descriptors: the oldest were evicted to make
        # room, and the next client is served at once, not reset.
        took = answer_time(server)
        assert took < 3, f"a normal client waited {took:.1f} s"
        evicted = closed_by_server(socks, 1100 - (1024 - 256), timeout=5)
        assert len(evicted) >= 1100 - (1024 - 256)
        # Then the header deadline drops every one that is left.
        t0 = time.monotonic()
        rest = closed_by_server([s for i, s in enumerate(socks) if i not in evicted], 1100 - len(evicted), timeout=10)
        assert len(rest) == 1100 - len(evicted), f"{1100 - len(evicted) - len(rest)} slow sockets still open"
        assert time.monotonic() - t0 < 6
        assert answer_time(server) < 3 and server.proc.poll() is None
    finally:
        close_all(socks)
        server.stop()


def test_2000_slow_sockets_are_dropped_after_the_header_timeout(tmp_path):
    server = start(tmp_path, "--header-timeout", "2")
    t0 = time.monotonic()
    socks = open_slow(server, 2000)
    try:
        assert answer_time(server) < 3
        closed = closed_by_server(socks, 2000, timeout=15)
        assert len(closed) == 2000, f"{2000 - len(closed)} slow sockets still open"
        # Not before their time: nothing here was evicted (the bound is far above 2,000).
        assert time.monotonic() - t0 >= 2
        assert answer_time(server) < 3
    finally:
        close_all(socks)
        server.stop()


def test_max_connections_evicts_the_longest_waiting_first(tmp_path):
    server = start(tmp_path, "--header-timeout", "60", "--max-connections", "20")
    socks = open_slow(server, 50)
    try:
        assert answer_time(server) < 3  # evicts one more slow socket
        closed = closed_by_server(socks, 31, timeout=10)
        assert len(closed) == 31 and closed == set(range(31)), sorted(closed)
        # The newest are still open: none of them is readable (closed) yet.
        assert not closed_by_server(socks[40:], 1, timeout=0.5)
    finally:
        close_all(socks)
        server.stop()


def read_response(s: socket.socket) -> bytes:
    """One whole HTTP response (headers and a Content-Length body) from a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_slow_body_and_keep_alive_requests_are_not_cut(tmp_path):
    """The deadline is for headers only: a request whose headers are in may take its time, and
    a keep-alive connection gets a fresh deadline after each answer."""
    server = start(tmp_path, "--header-timeout", "1")
    try:
        body = b'{"name": "slowbody"}'
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer " + server.token.encode()
                      + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            for part in (body[:8], body[8:14], body[14:]):
                time.sleep(0.6)  # pacing the client, 1.8 s in all: longer than the header deadline
                s.sendall(part)
            reply = read_response(s)
            assert reply.startswith(b"HTTP/1.1 201") and b"slowbody" in reply, reply[:300]
            # Same connection: the next request's headers are due within a second again.
            s.sendall(b"GET /api/server HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(s).startswith(b"HTTP/1.1 200")
            s.sendall(b"GET /api/server HTTP/1.1\r\n")
            s.setblocking(False)
            t0 = time.monotonic()
            assert closed_by_server([s], 1, timeout=5) == {0}
            assert 0.5 < time.monotonic() - t0 < 3
    finally:
        server.stop()


def test_the_descriptor_limit_is_raised_and_max_connections_must_fit(tmp_path):
    server = start(tmp_path / "a", fds=None)
    try:
        limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        soft, hard = row.split()[3:5]
        assert soft == hard, row
    finally:
        server.stop()
    res = subprocess.run(
        [sys.executable, "-m", "distren", "serve", "--name", "x", "--data", str(tmp_path / "b"),
         "--listen", f"127.0.0.1:{free_port()}", "--slots", "0", "--max-connections", "5000"],
        capture_output=True, text=True, timeout=30,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)))
    assert res.returncode == 1 and "--max-connections 5000" in res.stderr and "at most 768" in res.stderr, res.stderr
    for bad in (["--header-timeout", "0"], ["--max-connections", "0"]):
        res = subprocess.run(
            [sys.executable, "-m", "distren", "serve", "--name", "x", "--data", str(tmp_path / "c"),
             "--listen", f"127.0.0.1:{free_port()}", "--slots", "0", *bad],
            capture_output=True, text=True, timeout=30)
        assert res.returncode != 0 and bad[0] in res.stderr and "Traceback" not in res.stderr, res.stderr
