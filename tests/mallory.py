"""Mallory: a server that speaks distren's protocol for its own ends, for tests of hostile peers.

Mallory has an Ed25519 key and a real address on loopback (a small HTTP server in a thread that
answers her hello and an empty state), so she looks like any server to the one she talks to.
Everything else she does is a method that signs a request and returns the answer unchecked:
tests decide what a hostile peer sends and assert what the honest server does with it.

    m = Mallory("mallory", tmp_path / "m.key")
    m.introduce(origin)                  # POST /fed/hello (a stranger: pending under approve)
    m.join(origin)                       # ... and accepted by origin's admin (a peer)
    r = m.lease(origin, job)             # POST /fed/jobs/ID/lease?can=povray (at most m.slots at once)
    m.upload(origin, job, frame, tar)    # PUT .../result
    m.replay()                           # her last signed request again, byte for byte
    m.close()

``answer`` lets a test change what her own server answers (e.g. a tarpit never answers).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from nacl.signing import SigningKey

from distren.gossip import announcement_text
from distren.identity import Identity
from distren.peering import hello_text


def client_from(source: str | None = None) -> httpx.Client:
    """An HTTP client whose connections come from ``source`` (any 127.x.y.z works on loopback)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source) if source else None)


def fresh_hello(name: str, address: str) -> tuple[Identity, dict]:
    """A hello of a server that did not exist a moment ago: a new key, any name and address."""
    ident = Identity(name, SigningKey.generate())
    ts = f"{time.time():.3f}"
    return ident, {"name": name, "address": address, "key": ident.public, "time": ts,
                   "signature": ident.sign(hello_text(name, address, ident.public, ts))}


class Mallory:
    def __init__(self, name: str, keyfile: Path, backends: dict[str, str] | None = None, slots: int = 2):
        self.name = name
        self.id = Identity.load_or_create(name, keyfile)
        self.backends = {"povray": "3.7.0.10"} if backends is None else backends
        self.slots = slots  # what her state says she has: an origin lends her that many frames
        self.sent: list[tuple[str, str, dict, bytes]] = []  # every request she signed, to replay
        # (method, path) -> (status, JSON body) for her own server; hello and state by default.
        self.answer: Callable[[str, str], tuple[int, dict]] = self._default_answer
        self.claims: str | None = None  # the name her own server answers hellos as (default: hers)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.address = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- her own server --------------------------------------------------------------------

    def hello(self, name: str | None = None, address: str | None = None) -> dict:
        name, address = name or self.name, address or self.address
        ts = f"{time.time():.3f}"
        return {"name": name, "address": address, "key": self.id.public, "time": ts, "backends": self.backends,
                "signature": self.id.sign(hello_text(name, address, self.id.public, ts))}

    def _default_answer(self, method: str, path: str) -> tuple[int, dict]:
        if path == "/fed/hello":
            return 200, self.hello(self.claims)
        if path.startswith("/fed/state"):
            return 200, {"name": self.name, "slots": self.slots, "backends": self.backends, "rendering": [],
                         "announcements": []}
        return 404, {"error": "not here"}

    def _handler(self):
        mallory = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                status, body = mallory.answer(self.command, self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _serve

            def log_message(self, *args) -> None:
                pass

        return Handler

    # --- what she asks of others -----------------------------------------------------------

    def introduce(self, server, source: str | None = None, **hello) -> httpx.Response:
        """Her hello to ``server`` (a conftest.ServerProc); ``hello`` overrides name/address;
        ``source``: the loopback address she sends from (e.g. 127.0.0.2)."""
        with client_from(source) as c:
            return c.post(f"{server.http}/fed/hello", json=self.hello(**hello), timeout=30)

    def join(self, server) -> httpx.Response:
        """Her hello, and then what the admin of ``server`` does for a server it means to peer
        with under the default policy (approve): accept her. Tests of hostile *peers* start here;
        tests of strangers use :meth:`introduce`."""
        r = self.introduce(server)
        if r.status_code == 200 and r.json().get("peering") == "pending":
            ok = httpx.post(f"{server.http}/api/peers/{self.name}/accept",
                            headers={"Authorization": f"Bearer {server.token}"}, timeout=30)
            assert ok.status_code == 200, ok.text
        return r

    def call(self, server, method: str, path: str, body: bytes | dict = b"", digest: str | None = None,
             headers: dict | None = None, timeout: float = 60) -> httpx.Response:
        """A request signed with her key, for ``server``."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        if digest is None and body:
            digest = hashlib.sha256(body).hexdigest()
        signed = self.id.sign_request(method, path, *([digest] if digest else []), to=server.name)
        self.sent.append((method, server.http + path, {**signed, **(headers or {})}, body))
        return httpx.request(method, server.http + path, content=body, headers={**signed, **(headers or {})},
                             timeout=timeout)

    def replay(self, n: int = -1, timeout: float = 60) -> httpx.Response:
        """Send again, byte for byte (signature and nonce included), a request she sent."""
        method, url, headers, body = self.sent[n]
        return httpx.request(method, url, content=body, headers=headers, timeout=timeout)

    def lease(self, server, job: int, can: str = "povray", request: str | None = None) -> httpx.Response:
        """``request``: her id for the request (asked again with it, the same frame)."""
        return self.call(server, "POST", f"/fed/jobs/{job}/lease?can={can}" + (f"&request={request}" if request else ""))

    @staticmethod
    def leased_frame(resp: httpx.Response) -> int:
        """The frame id in a lease answer's distrenjob.xml."""
        return int(resp.content.split(b"/frame/")[1].split(b'"')[0])

    def renew(self, server, job: int, frame: int) -> httpx.Response:
        return self.call(server, "POST", f"/fed/jobs/{job}/frames/{frame}/renew")

    def failed(self, server, job: int, frame: int, reason: str = "mallory says no") -> httpx.Response:
        return self.call(server, "POST", f"/fed/jobs/{job}/frames/{frame}/failed", {"reason": reason, "log": ""})

    def upload(self, server, job: int, frame: int, tar: bytes, claimed: str | None = None) -> httpx.Response:
        sha = claimed or hashlib.sha256(tar).hexdigest()
        return self.call(server, "PUT", f"/fed/jobs/{job}/frames/{frame}/result", tar, digest=sha,
                         headers={"X-Content-SHA256": sha, "Content-Type": "application/x-tar"})

    def bundle(self, server, job: int) -> httpx.Response:
        return self.call(server, "GET", f"/fed/jobs/{job}/bundle")

    def frame_files(self, server, job: int, frame: int) -> httpx.Response:
        return self.call(server, "GET", f"/fed/jobs/{job}/frames/{frame}/files")

    def state(self, server) -> httpx.Response:
        return self.call(server, "GET", "/fed/state")

    def announce(self, server, ann: dict) -> httpx.Response:
        return self.call(server, "POST", "/fed/announce", ann)

    def announcement(self, job_url: str, origin: str | None = None, frames: int = 1, active: bool = True,
                     **extra) -> dict:
        """An announcement of ``job_url`` signed with HER key, whatever origin it claims."""
        ann = {"job": job_url, "origin": origin or self.name, "address": self.address, "backends": ["povray"],
               "key": self.id.public, "bundle_sha256": "0" * 64, "frames": frames, "created": time.time(),
               "active": active, "expires": time.time() + 3600, **extra}
        ann["signature"] = self.id.sign(announcement_text(ann))
        return ann


class Tarpit:
    """An address that accepts TCP connections and never answers, holding each one open: what a
    hung server looks like from outside (Mallory announces fake origins there). ``accepted``
    counts the connections made to it."""

    def __init__(self):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.address = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        for c in self._held:
            c.close()


def as_peer(server, name: str, keyfile: Path) -> Identity:
    """A peer of ``server`` (a conftest.ServerProc) reduced to its key, for tests that sign their
    own calls: its hello is confirmed at a real loopback address (a Mallory's), and accepted by
    the server's admin if the policy made it wait."""
    m = Mallory(name, keyfile)
    try:
        r = m.introduce(server)
        assert r.status_code == 200, r.text
        if r.json().get("peering") == "pending":
            r = httpx.post(f"{server.http}/api/peers/{name}/accept", headers={"Authorization": f"Bearer {server.token}"})
            assert r.status_code == 200, r.text
    finally:
        m.close()
    return m.id
