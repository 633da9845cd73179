"""The client library: everything the CLI does, over HTTP, usable from Python.

    c = Client("http://127.0.0.1:8311", token)
    url = c.submit(Path("job.tar"))
    c.wait(url)
    c.download(url, Path("frames"))
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx

from . import bundle, urls
from .errors import DistrenError, NotFound, ServerUnreachable, from_status, message_of

DEFAULT_SERVER = "http://127.0.0.1:8311"
CHUNK = 1 << 20


def server_address(value: str, what: str = "--server") -> str:
    """A server's HTTP address from what a person types: ``http(s)://HOST:PORT``, or
    ``HOST:PORT`` as ``serve --listen`` takes it (plain HTTP). ``what`` names it in errors."""
    v = value.strip().rstrip("/")
    scheme, sep, rest = v.partition("://")
    if not sep:
        host, colon, port = v.rpartition(":")
        if colon and host and port.isdigit():
            return f"http://{v}"
        raise DistrenError(f"{what} {value!r}: give the server's address as http://HOST:PORT or HOST:PORT, "
                           f"e.g. {DEFAULT_SERVER} or 127.0.0.1:8311 (`distren serve` prints it)")
    if scheme.lower() not in ("http", "https") or not rest:
        raise DistrenError(f"{what} {value!r}: the address starts with http:// or https://; give it as "
                           f"http://HOST:PORT or HOST:PORT, e.g. {DEFAULT_SERVER}")
    return v


class Client:
    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = 60.0):
        self.base = server_address(server or os.environ.get("DISTREN_SERVER") or DEFAULT_SERVER)
        self.token = token if token is not None else os.environ.get("DISTREN_TOKEN")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout)
        self._name: str | None = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- plumbing ------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ServerUnreachable(
                f"cannot reach the distren server at {self.base} ({type(e).__name__}): is it running? "
                "Point --server or DISTREN_SERVER at it."
            ) from None
        _raise_for(resp)
        return resp

    def server_name(self) -> str:
        if self._name is None:
            self._name = self._request("GET", "/api/server").json()["name"]
        return self._name

    def job_id(self, job: str | int) -> int:
        """A job URL (or bare id) as an id on this server; refuse other servers' jobs clearly."""
        if isinstance(job, int) or str(job).isdigit():
            return int(job)
        url = urls.parse_job(str(job))
        if url.server != self.server_name():
            where = self._peer_address(url.server)
            raise NotFound(
                f"{url} lives on server {url.server!r}, but {self.base} is {self.server_name()!r}; "
                + (f"ask it: --server {where}" if where else "point --server at the job's own server")
            )
        return url.job_id

    def _peer_address(self, name: str) -> str | None:
        """Where this server reaches the peer ``name``, if it knows it."""
        try:
            return next((p["address"] for p in self.servers() if p["name"] == name), None)
        except DistrenError:
            return None

    # --- calls ---------------------------------------------------------------------------

    def info(self) -> dict:
        return self._request("GET", "/api/server").json()

    def submit(self, tarball: Path, retries: int = 4, priority: int = 0) -> str:
        """Upload a bundle, streaming. Retried on network errors with the same idempotency key,
        so a retry never makes a second job."""
        key = secrets.token_hex(16)
        delay = 0.5
        for attempt in range(retries + 1):
            try:
                with open(tarball, "rb") as f:
                    resp = self.http.post("/api/jobs", content=_chunks(f), params={"priority": priority} if priority else None,
                                          headers={"Idempotency-Key": key, "Content-Type": "application/x-tar"})
            except httpx.TransportError as e:
                if attempt == retries:
                    raise ServerUnreachable(f"cannot upload to {self.base}: {type(e).__name__}: {e}") from None
                time.sleep(delay)
                delay *= 2
                continue
            _raise_for(resp)
            return resp.json()["url"]
        raise AssertionError("unreachable")

    def status(self, job: str | int) -> dict:
        return self._request("GET", f"/api/jobs/{self.job_id(job)}").json()

    def jobs(self) -> list[dict]:
        return self._request("GET", "/api/jobs").json()

    def events(self, job: str | int) -> list[dict]:
        return self._request("GET", f"/api/jobs/{self.job_id(job)}/events").json()

    def cancel(self, job: str | int) -> dict:
        return self._request("POST", f"/api/jobs/{self.job_id(job)}/cancel").json()

    def delete(self, job: str | int) -> None:
        self._request("DELETE", f"/api/jobs/{self.job_id(job)}")

    def retry(self, frame: str) -> dict:
        f = urls.parse_frame(frame)
        return self._request("POST", f"/api/jobs/{self.job_id(str(f.job))}/frames/{f.frame_id}/retry").json()

    def requeue(self, job: str | int, frames: list[int] | None = None) -> dict:
        """Requeue a failed or cancelled job: the given failed frames, or all of them."""
        body = {"frames": frames} if frames is not None else {}
        return self._request("POST", f"/api/jobs/{self.job_id(job)}/retry", json=body).json()

    def pause(self, job: str | int) -> dict:
        return self._request("POST", f"/api/jobs/{self.job_id(job)}/pause").json()

    def resume(self, job: str | int) -> dict:
        return self._request("POST", f"/api/jobs/{self.job_id(job)}/resume").json()

    def set_priority(self, job: str | int, priority: int) -> dict:
        return self._request("POST", f"/api/jobs/{self.job_id(job)}/priority", json={"priority": priority}).json()

    def log(self, frame: str) -> str:
        f = urls.parse_frame(frame)
        return self._request("GET", f"/api/jobs/{self.job_id(str(f.job))}/frames/{f.frame_id}/log").text

    def servers(self) -> list[dict]:
        return self._request("GET", "/api/servers").json()

    def add_peer(self, address: str) -> dict:
        return self._request("POST", "/api/peers", json={"address": address}).json()

    def remove_peer(self, name: str) -> None:
        self._request("DELETE", f"/api/peers/{quote(urls.check_server_name(name), safe='')}")

    def pending_peers(self) -> list[dict]:
        return self._request("GET", "/api/peers/pending").json()

    def accept_peer(self, name: str) -> dict:
        return self._request("POST", f"/api/peers/{quote(urls.check_server_name(name), safe='')}/accept").json()

    def reject_peer(self, name: str) -> dict:
        return self._request("POST", f"/api/peers/{quote(urls.check_server_name(name), safe='')}/reject").json()

    def trust_peer(self, name: str) -> dict:
        return self._request("POST", f"/api/peers/{name}/trust").json()

    def add_user(self, name: str, admin: bool = False) -> dict:
        return self._request("POST", "/api/users", json={"name": name, "admin": admin}).json()

    def users(self) -> list[dict]:
        return self._request("GET", "/api/users").json()

    def revoke_user(self, name: str) -> dict:
        urls.check_user_name(name)  # a name with '/' would reach another route
        return self._request("POST", f"/api/users/{quote(name, safe='')}/revoke").json()

    def wait(self, job: str | int, timeout: float | None = None, poll: float = 0.3,
             on_update: Callable[[dict], None] | None = None) -> dict:
        """Poll until the job is done, failed or cancelled; return its last status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(job)
            if on_update:
                on_update(st)
            if st["state"] in ("done", "failed", "cancelled"):
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{st['url']} is still {st['state']} after {timeout:g} s")
            time.sleep(poll)

    def download(self, job: str | int, dest: Path) -> list[str]:
        """Fetch the job's rebundled frames and unpack them into ``dest`` under the names the
        renderer gave them. Returns the file names."""
        job_id = self.job_id(job)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest, prefix=".distren-") as tmp:
            tar = Path(tmp) / "result.tar"
            try:
                with self.http.stream("GET", f"/api/jobs/{job_id}/result") as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        _raise_for(resp)
                    with open(tar, "wb") as f:
                        for chunk in resp.iter_bytes(CHUNK):
                            f.write(chunk)
            except httpx.TransportError as e:
                raise ServerUnreachable(f"download from {self.base} failed: {type(e).__name__}: {e}") from None
            names = bundle.extract(tar, Path(tmp) / "out")
            for name in names:
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(Path(tmp) / "out" / name, target)
        return names


def _chunks(f) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code >= 400:
        raise from_status(resp.status_code, message_of(resp.content, resp.reason_phrase))


__all__ = ["Client", "DEFAULT_SERVER"]
