"""Servers that exist only to be peers of a benchmarked origin: each name gets a loopback address
of its own (127.77.X.Y), where a tiny asyncio server answers ``GET /fed/hello`` as that name (an
origin pins a server only after its hello is confirmed at the address it claims) and 404 to
anything else. The hello itself is said from that address too (hellos are rate-limited per
source address)."""

from __future__ import annotations

import asyncio
import json
import random
import resource
import threading
import time

import httpx
from nacl.signing import SigningKey

from distren.identity import Identity
from distren.peering import hello_text


def address_of(i: int) -> str:
    return f"127.77.{i // 250}.{1 + i % 250}"


class HelloStubs:
    def __init__(self, key: SigningKey, names: list[str], port: int | None = None):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.idents = {name: Identity(name, key) for name in names}
        self.hosts = {name: address_of(i) for i, name in enumerate(names)}
        self.port = port or random.randint(20000, 60000)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(60)

    def address(self, name: str) -> str:
        return f"http://{self.hosts[name]}:{self.port}"

    def _hello(self, name: str) -> dict:
        ident, address = self.idents[name], self.address(name)
        ts = f"{time.time():.3f}"
        return {"name": name, "address": address, "key": ident.public, "time": ts,
                "backends": {"povray": "3.7.0.10"}, "signature": ident.sign(hello_text(name, address, ident.public, ts))}

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve(name: str):
            async def handle(reader, writer):
                try:
                    while True:
                        head = await reader.readuntil(b"\r\n\r\n")
                        if head.startswith(b"GET /fed/hello "):
                            body, status = json.dumps(self._hello(name)).encode(), b"200 OK"
                        else:
                            body, status = b'{"error": "not here"}', b"404 Not Found"
                        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                        await writer.drain()
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    writer.close()
            return await asyncio.start_server(handle, self.hosts[name], self.port)

        async def main():
            for name in self.idents:
                await serve(name)
            ready.set()
            await asyncio.Event().wait()

        self.loop.run_until_complete(main())

    def say_hellos(self, origin: str) -> None:
        """Each name's hello to ``origin``, from its own address."""
        for name, ident in self.idents.items():
            with httpx.Client(transport=httpx.HTTPTransport(local_address=self.hosts[name]), timeout=30) as c:
                r = c.post(origin + "/fed/hello", json=self._hello(name))
                if r.status_code != 200:
                    raise RuntimeError(f"hello of {name}: {r.status_code} {r.text}")
