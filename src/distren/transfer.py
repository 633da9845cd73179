"""Signed server-to-server HTTP: small calls, and streamed transfers of bundles and frames.

Transfers never hold a whole tarball in memory: uploads stream from a file, downloads stream to
a temporary file whose SHA-256 is checked before it is renamed into place. Network failures
and 5xx answers are retried with exponential backoff; 4xx answers are final.
"""

from __future__ import annotations

import hashlib
import json as jsonlib
import logging
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from .errors import BundleError, DistrenError, RemoteError, ServerUnreachable, from_status, message_of
from .fsutil import atomic_write_stream, sha256_file
from .identity import EMPTY_SHA256, Identity

log = logging.getLogger("distren.transfer")
CHUNK = 1 << 20
# A peer that does not even accept the connection in this time is down (or filtered): whoever
# dials it goes on to other work at once. Reads keep the longer timeout of each call.
CONNECT_TIMEOUT = 3.0
STREAM_READ_TIMEOUT = 15.0  # silence in the middle of a download or upload


def _raise_for(resp: httpx.Response, what: str) -> None:
    if resp.status_code >= 400:
        raise from_status(resp.status_code, f"{what}: {message_of(resp.content, resp.reason_phrase)}")


def tls_context(ca: Path | None = None) -> ssl.SSLContext:
    """Certificates are verified against the system's CAs, plus ``ca`` (a private CA) if given."""
    ctx = ssl.create_default_context()
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as e:
            raise DistrenError(f"--tls-ca {ca}: not a readable PEM certificate file ({e})") from None
    return ctx


class Transport:
    def __init__(self, identity: Identity, timeout: float = 30.0, ca: Path | None = None):
        """``ca``: peers' https:// addresses are verified against it as well as the system's CAs."""
        self.identity = identity
        self.http = httpx.Client(timeout=_timeout(timeout), limits=httpx.Limits(max_connections=64),
                                 verify=tls_context(ca))

    def close(self) -> None:
        self.http.close()

    def _retrying(self, what: str, attempt_fn, retries: int, max_delay: float = 2.0):
        delay = 0.2
        for n in range(retries + 1):
            try:
                resp = attempt_fn()
            except httpx.TransportError as e:
                err: Exception = ServerUnreachable(f"{what}: {type(e).__name__}: {e}")
            else:
                if resp.status_code < 500:
                    return resp
                err = RemoteError(f"{what}: HTTP {resp.status_code}")
            if n == retries:
                raise err
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
        raise AssertionError("unreachable")

    def call(self, method: str, base: str, path: str, body=None, retries: int = 2,
             timeout: float | None = None, *, to: str, headers: dict | None = None) -> httpx.Response:
        """A signed call, for server ``to``, with a small JSON (or empty) body and ``headers``
        (unsigned: e.g. If-None-Match); raises the remote error, if any."""
        data = b"" if body is None else jsonlib.dumps(body, sort_keys=True, ensure_ascii=False).encode()
        digest = hashlib.sha256(data).hexdigest() if data else EMPTY_SHA256

        def attempt():
            signed = {**(headers or {}), **self.identity.sign_request(method, path, digest, to=to)}  # fresh nonce every try
            if data:
                signed["Content-Type"] = "application/json"
            return self.http.request(method, base + path, content=data, headers=signed,
                                     timeout=_timeout(timeout) if timeout else self.http.timeout)

        resp = self._retrying(f"{method} {base}{path}", attempt, retries)
        _raise_for(resp, f"{method} {base}{path}")
        return resp

    def upload(self, base: str, path: str, src: Path, retries: int = 30, *, to: str) -> httpx.Response:
        """PUT a file, streamed; its digest is signed and sent so the receiver can check it."""
        digest = sha256_file(src)

        def attempt():
            headers = self.identity.sign_request("PUT", path, digest, to=to)
            headers["X-Content-SHA256"] = digest
            headers["Content-Type"] = "application/x-tar"
            with open(src, "rb") as f:
                return self.http.put(base + path, content=_chunks(f), headers=headers,
                                     timeout=_timeout(STREAM_READ_TIMEOUT))

        resp = self._retrying(f"upload to {base}{path}", attempt, retries)
        _raise_for(resp, f"upload to {base}{path}")
        return resp

    def download(self, base: str, path: str, dest: Path, sha256: str | None, retries: int = 5,
                 limit: int | None = 4 * 1024**3, *, to: str, headers: dict | None = None) -> str:
        """GET a file, streamed to ``dest`` atomically; verify its SHA-256. Returns the digest.
        ``headers``: more, unsigned (e.g. a grant that carries its own signature)."""
        what = f"download of {base}{path}"
        delay = 0.2
        for n in range(retries + 1):
            try:
                signed = {**(headers or {}), **self.identity.sign_request("GET", path, to=to)}
                with self.http.stream("GET", base + path, headers=signed,
                                      timeout=_timeout(STREAM_READ_TIMEOUT)) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        _raise_for(resp, what)
                    got, _ = atomic_write_stream(dest, resp.iter_bytes(CHUNK), limit)
                if sha256 and got != sha256:
                    dest.unlink(missing_ok=True)
                    raise BundleError(f"{what}: content hash {got[:12]}... is not the announced {sha256[:12]}...")
                return got
            except ValueError as e:  # over the size limit
                raise BundleError(f"{what}: {e}") from None
            except (httpx.TransportError, DistrenError) as e:
                if isinstance(e, httpx.TransportError) and n == retries:
                    raise ServerUnreachable(f"{what}: {type(e).__name__}: {e}") from None
                if (isinstance(e, DistrenError) and e.final) or n == retries:
                    raise
                log.warning("%s failed (%s); retrying in %.1f s", what, e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")


def _timeout(seconds: float) -> httpx.Timeout:
    """``seconds`` for reads, writes and a free connection; the short :data:`CONNECT_TIMEOUT` to connect."""
    return httpx.Timeout(seconds, connect=min(seconds, CONNECT_TIMEOUT))


def _chunks(f) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk
