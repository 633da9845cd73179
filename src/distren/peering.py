"""Peering: who a server is, and which servers it knows.

A hello carries a server's name, address and Ed25519 key, signed with that key. A key is pinned
only from a server's own hello at its own address: the answer to a hello we sent to an address,
or a stranger's hello confirmed by asking its claimed address (``GET /fed/hello``) whether the
same name and key answer there. Names with a dot are also bound by DNS and TLS
(:mod:`distren.binding`). A later change of key is refused unless the old key signed it.

Who may then make requests is the peering policy: ``open`` (anyone confirmed), ``approve`` (a
stranger waits as *pending* until an admin accepts it) or ``allow-list`` (only ``--allow`` names
and addresses the admin configured). Hellos are rate-limited per source address, confirmations
are bounded at once, and the pending list is bounded, so a hello flood grows nothing without
bound and holds no thread long. What peers tell each other
once they know each other (announcements, sync) is :mod:`distren.gossip`; a lease's two sides
are :mod:`distren.origin` and :mod:`distren.renderer`. The protocol is in docs/protocol.md.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from . import backends, binding, urls
from .errors import Busy, Conflict, DistrenError, Forbidden, ServerUnreachable, SignatureError, TooManyRequests, from_status, message_of
from .identity import MAX_SKEW, Identity, parse_time, verify
from .ratelimit import PerSource
from .store.peers import ACCEPTED, KNOWN, PENDING, REJECTED

if TYPE_CHECKING:
    from .store import Store
    from .transfer import Transport

log = logging.getLogger("distren.peering")

POLICIES = ("open", "approve", "allow-list")
DEFAULT_POLICY = "approve"
MAX_PENDING = 100            # strangers awaiting an admin; more are refused until some are decided
PENDING_TTL = 7 * 86400      # a request to peer nobody decided on is dropped after a week (if full)
CONFIRM_TIMEOUT = 3.0        # asking a claimed address for its hello
CONFIRMING_AT_ONCE = 4       # threads a flood of hellos (or relayed origins) can hold
HELLO_BURST, HELLO_RATE = 20, 0.5  # per source address: 20 at once, then one every 2 s
ORIGIN_OK_TTL, ORIGIN_BAD_TTL = 3600.0, 60.0  # relayed origins' checks, remembered

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
                 wake: Callable[[], None], policy: str = DEFAULT_POLICY, allow: Iterable[str] = (),
                 rotation: dict | None = None):
        """``wake``: a new peer may have work for idle slots; ``allow``: names accepted on their
        (confirmed) hello under any policy; ``rotation``: this server's latest key rotation,
        sent with its hello so that peers holding the old key accept the new one."""
        if policy not in POLICIES:
            raise DistrenError(f"--peering {policy!r}: use one of {', '.join(POLICIES)}")
        self.identity = identity
        self.address = address.rstrip("/")
        self.store = store
        self.transport = transport
        self.wake = wake
        self.policy = policy
        self.allow = {urls.check_server_name(n) for n in allow}
        self.rotation = rotation
        self._hellos = PerSource(HELLO_BURST, HELLO_RATE)
        # Hellos and relayed origins are confirmed under separate bounds, so that a peer relaying
        # origins at addresses that never answer cannot keep strangers' hellos from confirming.
        self._confirming = threading.BoundedSemaphore(CONFIRMING_AT_ONCE)
        self._checking_origins = threading.BoundedSemaphore(CONFIRMING_AT_ONCE)
        self._origins: OrderedDict[tuple[str, str, str], tuple[float, str]] = OrderedDict()
        self._origins_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.identity.name

    # --- hello ---------------------------------------------------------------------------

    def hello(self) -> dict:
        ts = f"{time.time():.3f}"
        h = {"name": self.name, "address": self.address, "key": self.identity.public, "time": ts,
             "backends": backends.available(),
             "signature": self.identity.sign(hello_text(self.name, self.address, self.identity.public, ts))}
        if self.rotation:
            h["rotation"] = self.rotation
        return h

    def well_known(self) -> dict:
        """``/.well-known/distren``: what binds a DNS name to this server (served over TLS)."""
        return {"name": self.name, "key": self.identity.public, "address": self.address}

    def _check_hello(self, body: dict) -> tuple[str, str, str]:
        if not isinstance(body, dict):
            raise DistrenError("a hello is a JSON object with name, address, key, time and signature")
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

    def _rekey(self, name: str, key: str, body: dict) -> None:
        """A pinned server presenting another key: re-pin only with a rotation its old key signed."""
        pin = self.store.peer_pin(name)
        if pin is None or pin[0] == key:
            return
        if binding.check_rotation(body.get("rotation"), name, pin[0], key):
            if binding.has_dns_name(name):
                binding.check_dns_binding(self.transport.http, name, key, str(body["address"]), CONFIRM_TIMEOUT)
            self.store.rekey_peer(name, pin[0], key)
            log.warning("server %s rotated its key (statement signed with its old key)", name)

    def _wanted(self, name: str) -> str | None:
        """The status a confirmed stranger gets by its own hello; None: refused."""
        if name in self.allow or self.policy == "open":
            return ACCEPTED
        return PENDING if self.policy == "approve" else None

    def accept_hello(self, body: dict, source: str = "") -> dict:
        """``POST /fed/hello`` from ``source`` (the client's IP address)."""
        if not self._hellos.allow(source):
            raise TooManyRequests(f"too many hellos from {source}; wait a minute before saying hello again")
        name, address, key = self._check_hello(body)
        self._rekey(name, key, body)
        pin = self.store.peer_pin(name)
        if pin is not None and pin[0] != key:
            self.store.pin_peer(name, address, key)  # raises: a different key, not rotated
        if pin is not None and pin[1] == REJECTED:
            raise Forbidden(f"the admin of {self.name} refused to peer with {name}")
        wanted = self._wanted(name)
        if wanted is None and (pin is None or pin[1] != ACCEPTED):
            raise Forbidden(f"{self.name} peers only with the servers on its allow list, and {name} is not "
                            f"on it; its admin can add it (`distren serve --allow {name}`)")
        if pin is None or pin[2] != address:
            if pin is None and wanted == PENDING:
                self._room_for_pending()
            self._confirm(name, address, key)
        if self.store.pin_peer(name, address, key, wanted or KNOWN):
            log.info("new server %s at %s (%s)", name, address, wanted)
        status = self.store.peer_pin(name)[1]
        self.wake()
        return {**self.hello(), "peering": status}

    def _room_for_pending(self) -> None:
        if self.store.count_peers(PENDING) >= MAX_PENDING:
            self.store.forget_pending(time.time() - PENDING_TTL)
            if self.store.count_peers(PENDING) >= MAX_PENDING:
                raise Busy(f"{MAX_PENDING} servers are awaiting approval by the admin of {self.name} "
                           "already; ask its admin to accept you")

    def _confirm(self, name: str, address: str, key: str, bound: threading.BoundedSemaphore | None = None) -> None:
        """Ask ``address`` for its hello: the same name and key must answer there (and, for a
        DNS name, its well-known document must say so)."""
        bound = bound or self._confirming
        if not bound.acquire(blocking=False):
            raise Busy(f"{self.name} is busy confirming other servers; try again in a few seconds")
        try:
            try:
                resp = self.transport.http.get(address + "/fed/hello", timeout=CONFIRM_TIMEOUT)
                answer = resp.json() if resp.status_code == 200 else None
            except Exception as e:
                raise DistrenError(f"could not confirm {name!r} at {address}, the address it claims "
                                   f"({type(e).__name__}); is its --advertise address reachable from here?") from None
            try:
                got = self._check_hello(answer) if isinstance(answer, dict) else None
            except DistrenError:
                got = None
            if got != (name, address, key):
                raise Forbidden(f"the server at {address} does not answer as {name!r} with the key presented; "
                                f"a server is pinned only from its own hello at its own address")
            if binding.has_dns_name(name):
                binding.check_dns_binding(self.transport.http, name, key, address, CONFIRM_TIMEOUT)
        finally:
            bound.release()

    def check_origin(self, name: str, address: str, key: str) -> None:
        """A relayed announcement's origin we have not pinned: is it at its address, with that
        key? Nothing is pinned from a record; answers are remembered for a while."""
        k = (name, address, key)
        now = time.monotonic()
        with self._origins_lock:
            until, error = self._origins.get(k, (0.0, ""))
        if until > now:
            if error:
                raise Forbidden(error)
            return
        try:
            self._confirm(name, address, key, self._checking_origins)
            result = (now + ORIGIN_OK_TTL, "")
        except Busy:
            raise
        except DistrenError as e:
            result = (now + ORIGIN_BAD_TTL, str(e))
        with self._origins_lock:
            self._origins[k] = result
            while len(self._origins) > 4096:
                self._origins.popitem(last=False)
        if result[1]:
            raise Forbidden(result[1])

    def key_for_request(self, name: str) -> str | None:
        """The key a signed request from ``name`` is checked with, if it may make requests."""
        pin = self.store.peer_pin(name)
        if pin is None or pin[1] == KNOWN:
            return None
        if pin[1] == PENDING:
            raise Forbidden(f"{name} is awaiting approval by the admin of {self.name} "
                            f"(`distren peers accept {name}` there)")
        if pin[1] == REJECTED:
            raise Forbidden(f"the admin of {self.name} refused to peer with {name}")
        return pin[0]

    def introduce(self, address: str, accept: bool = True) -> str:
        """Say hello to the server at ``address``; pin it. Returns its name. ``accept``: an
        admin configured this address, so the server there may make requests of us."""
        return self.introduce_to(address, accept)[0]

    def introduce_to(self, address: str, accept: bool = True) -> tuple[str, str]:
        """:meth:`introduce`, also returning our status there ('accepted' or 'pending')."""
        address = check_address(address.rstrip("/"))
        try:
            resp = self.transport.http.post(address + "/fed/hello", json=self.hello())
        except Exception as e:
            raise ServerUnreachable(f"cannot reach {address}: {type(e).__name__}: {e}") from None
        if resp.status_code >= 400:
            raise from_status(resp.status_code, f"{address} refused our hello: "
                                                f"{message_of(resp.content, resp.reason_phrase)}")
        try:
            answer = resp.json()
        except ValueError:
            raise DistrenError(f"{address} answered our hello with something else than a hello") from None
        name, claimed, key = self._check_hello(answer)
        self._rekey(name, key, answer)
        pin = self.store.peer_pin(name)
        if binding.has_dns_name(name) and (pin is None or pin[0] != key):
            binding.check_dns_binding(self.transport.http, name, key, claimed, CONFIRM_TIMEOUT)
        status = ACCEPTED if accept or self._wanted(name) == ACCEPTED else KNOWN
        self.store.pin_peer(name, address, key, status)
        return name, str(answer.get("peering", ACCEPTED))

    def wait_reachable(self, timeout: float) -> bool:
        """Wait until our own address answers (the HTTP server starts after the rooms)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.transport.http.get(self.address + "/fed/hello", timeout=1).status_code == 200:
                    return True
            except Exception:
                pass
            time.sleep(0.05)
        log.warning("%s does not answer yet; peers cannot confirm our hellos until it does", self.address)
        return False

    def tell_rotation(self) -> None:
        """Say hello (with the rotation statement) to every server that pinned our old key."""
        for p in self.store.peers(None):
            if p["status"] != REJECTED:
                try:
                    self.introduce(p["address"], accept=False)
                except DistrenError as e:
                    log.warning("could not tell %s of our new key (%s); it learns it at our next hello", p["name"], e)

    # --- an admin's decisions ------------------------------------------------------------

    def pending(self) -> list[dict]:
        return [{"name": p["name"], "address": p["address"], "key": p["public_key"], "since": p["added"]}
                for p in self.store.peers(PENDING)]

    def accept(self, name: str) -> None:
        self.store.set_peer_status(urls.check_server_name(name), ACCEPTED, only_from=(PENDING, REJECTED, KNOWN))
        self.wake()

    def reject(self, name: str) -> None:
        self.store.set_peer_status(urls.check_server_name(name), REJECTED, only_from=(PENDING, KNOWN))

    def remove(self, name: str) -> None:
        self.store.remove_peer(urls.check_server_name(name))

    def known_address(self, name: str) -> str | None:
        pin = self.store.peer_pin(name)
        return pin[2] if pin else None
