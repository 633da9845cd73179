"""Peering: who a server is, and which servers it knows.

A hello carries a server's name, address and Ed25519 key, signed with that key. Both sides pin
what they learn on first contact; a later change of key is refused. What peers tell each other
once they know each other (announcements, sync) is :mod:`distren.gossip`; a lease's two sides
are :mod:`distren.origin` and :mod:`distren.renderer`. The protocol is in docs/protocol.md.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import backends, urls
from .errors import Conflict, DistrenError, ServerUnreachable, SignatureError
from .identity import MAX_SKEW, Identity, parse_time, verify

if TYPE_CHECKING:
    from .store import Store
    from .transfer import Transport

log = logging.getLogger("distren.peering")

def check_address(address: str) -> str:
    """A peer's address is dialled automatically: accept only plain http(s)://HOST[:PORT]."""
    if not re.fullmatch(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", address):
        raise DistrenError(f"invalid server address {address!r}: expected http(s)://HOST[:PORT]")
    return address


def hello_text(name: str, address: str, key: str, ts: str) -> bytes:
    """What a hello's signature covers."""
    return f"distren-hello\n{name}\n{address}\n{key}\n{ts}".encode()


class Peering:
    def __init__(self, identity: Identity, address: str, store: Store, transport: Transport,
                 wake: Callable[[], None]):
        """``wake``: a new peer may have work for idle slots."""
        self.identity = identity
        self.address = address.rstrip("/")
        self.store = store
        self.transport = transport
        self.wake = wake

    @property
    def name(self) -> str:
        return self.identity.name

    # --- hello ---------------------------------------------------------------------------

    def hello(self) -> dict:
        ts = f"{time.time():.3f}"
        return {"name": self.name, "address": self.address, "key": self.identity.public, "time": ts,
                "backends": backends.available(),
                "signature": self.identity.sign(hello_text(self.name, self.address, self.identity.public, ts))}

    def _check_hello(self, body: dict) -> tuple[str, str, str]:
        try:
            name = urls.check_server_name(str(body["name"]))
            address, key, ts, sig = (str(body[k]) for k in ("address", "key", "time", "signature"))
        except (KeyError, TypeError):
            raise DistrenError("a hello needs name, address, key, time and signature") from None
        check_address(address)
        if abs(time.time() - parse_time(ts, "hello time")) > MAX_SKEW:
            raise SignatureError("hello is too old or from the future; check both clocks")
        verify(key, hello_text(str(body["name"]), address, key, ts), sig)
        if name == self.name:
            raise Conflict(f"that server is named {name!r} too; server names must be unique")
        return name, address, key

    def accept_hello(self, body: dict) -> dict:
        name, address, key = self._check_hello(body)
        if self.store.pin_peer(name, address, key):
            log.info("new peer %s at %s", name, address)
        self.wake()
        return self.hello()

    def introduce(self, address: str) -> str:
        """Say hello to the server at ``address``; pin it. Returns its name."""
        address = check_address(address.rstrip("/"))
        try:
            resp = self.transport.http.post(address + "/fed/hello", json=self.hello())
        except Exception as e:
            raise ServerUnreachable(f"cannot reach {address}: {type(e).__name__}: {e}") from None
        if resp.status_code >= 400:
            try:
                msg = resp.json().get("error", resp.text)
            except ValueError:
                msg = resp.text
            raise (Conflict if resp.status_code == 409 else DistrenError)(f"{address} refused our hello: {msg}")
        name, _, key = self._check_hello(resp.json())
        self.store.pin_peer(name, address, key)
        return name

    def remove(self, name: str) -> None:
        self.store.remove_peer(urls.check_server_name(name))

    def known_address(self, name: str) -> str | None:
        return next((p["address"] for p in self.store.peers() if p["name"] == name), None)

