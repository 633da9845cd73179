"""What binds a server's name to its key, beyond its own hello: DNS and TLS for names with a dot,
and key rotations signed with the old key.

* A name with a dot (``render.example.org``) is a DNS name: ``https://NAME/.well-known/distren``,
  fetched over verified TLS, states the name's key and address. A server pins such a name only
  when that document agrees with the hello; so no one can claim ``example.org`` who does not hold
  a certificate for it. Names without a dot are bound by first contact only (docs/protocol.md).
* A rotation is ``{"name", "old_key", "new_key", "time", "signature"}``, the signature made with
  the OLD key over :func:`rotation_text`. A peer replaces a pinned key only with such a statement.

``DISTREN_RESOLVE`` (``NAME=HOST:PORT,...``, like curl's ``--resolve``) says where to connect for
a name's well-known document instead of NAME:443; the TLS certificate is still checked against
NAME. It exists for tests (loopback cannot hold DNS names or port 443) and for private networks.
"""

from __future__ import annotations

import os
import time

import httpx

from .errors import DistrenError, Forbidden
from .identity import Identity, verify

WELL_KNOWN = "/.well-known/distren"


def has_dns_name(name: str) -> bool:
    return "." in name


def _resolved(name: str) -> str | None:
    for item in os.environ.get("DISTREN_RESOLVE", "").split(","):
        n, sep, hostport = item.strip().partition("=")
        if sep and n.strip().lower() == name:
            return hostport.strip()
    return None


def check_dns_binding(http: httpx.Client, name: str, key: str, address: str, timeout: float) -> None:
    """Refuse unless ``https://NAME/.well-known/distren`` states ``key`` and ``address``."""
    hostport = _resolved(name)
    url = f"https://{hostport or name}{WELL_KNOWN}"
    extensions = {"sni_hostname": name} if hostport else {}
    headers = {"Host": name} if hostport else {}
    where = f"https://{name}{WELL_KNOWN}"
    try:
        resp = http.get(url, headers=headers, extensions=extensions, timeout=timeout)
        doc = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as e:
        raise Forbidden(f"{name!r} is a DNS name, so {where} must state its key and address; "
                        f"it could not be read ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict):
        raise Forbidden(f"{name!r} is a DNS name, so {where} must state its key and address; it answered "
                        f"HTTP {resp.status_code}")
    if doc.get("name") != name or doc.get("key") != key or doc.get("address") != address:
        raise Forbidden(f"{where} does not state the key and address {name!r} presented; refusing it")


def rotation_text(name: str, old_key: str, new_key: str, ts: str) -> bytes:
    return f"distren-key-rotation\n{name}\n{old_key}\n{new_key}\n{ts}".encode()


def rotation(old: Identity, new: Identity) -> dict:
    """The statement, signed with the old key, that ``new`` replaces it."""
    ts = f"{time.time():.3f}"
    return {"name": old.name, "old_key": old.public, "new_key": new.public, "time": ts,
            "signature": old.sign(rotation_text(old.name, old.public, new.public, ts))}


def check_rotation(statement: object, name: str, pinned: str, presented: str) -> bool:
    """True if ``statement`` moves ``name`` from the ``pinned`` key to the ``presented`` one."""
    if not isinstance(statement, dict):
        return False
    try:
        fields = [str(statement[k]) for k in ("name", "old_key", "new_key", "time", "signature")]
    except KeyError:
        return False
    n, old_key, new_key, ts, sig = fields
    if (n, old_key, new_key) != (name, pinned, presented):
        return False
    try:
        verify(pinned, rotation_text(n, old_key, new_key, ts), sig)
    except DistrenError:
        return False
    return True
