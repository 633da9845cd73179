"""A server's Ed25519 identity, and signed server-to-server requests.

Every request one server makes of another carries four headers::

    X-Distren-Server     the sender's name
    X-Distren-Time       seconds since the epoch, as a decimal
    X-Distren-Nonce      128 random bits, hex
    X-Distren-Signature  Ed25519 signature (base64) of the canonical string

The canonical string is ``METHOD\\nPATH?QUERY\\nSHA256(BODY)\\nTIME\\nNONCE\\nRECIPIENT``, the last
being the name of the server the request is for, so that it cannot be replayed to another. The receiver looks up
the key it pinned for the sender, checks the signature, refuses times more than
:data:`MAX_SKEW` seconds away from its own clock, and refuses a nonce it has seen (nonces are
kept, persistently, for longer than the window), so a captured request cannot be replayed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .errors import SignatureError
from .fsutil import atomic_write

H_SERVER, H_TIME, H_NONCE, H_SIG = "X-Distren-Server", "X-Distren-Time", "X-Distren-Nonce", "X-Distren-Signature"
MAX_SKEW = 120.0
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise SignatureError("malformed base64 in a signature or key") from None


@dataclass(frozen=True)
class Identity:
    name: str
    key: SigningKey

    @property
    def public(self) -> str:
        return b64(bytes(self.key.verify_key))

    @classmethod
    def load_or_create(cls, name: str, path: Path) -> Identity:
        if path.exists():
            key = SigningKey(unb64(path.read_text().strip()))
        else:
            key = SigningKey.generate()
            atomic_write(path, b64(bytes(key)).encode() + b"\n", mode=0o600)
        return cls(name, key)

    def sign_request(self, method: str, path: str, body_sha256: str = EMPTY_SHA256,
                     now: float | None = None, to: str = "") -> dict[str, str]:
        ts = f"{time.time() if now is None else now:.3f}"
        nonce = secrets.token_hex(16)
        msg = canonical(method, path, body_sha256, ts, nonce, to)
        return {H_SERVER: self.name, H_TIME: ts, H_NONCE: nonce, H_SIG: b64(self.key.sign(msg).signature)}

    def sign(self, data: bytes) -> str:
        return b64(self.key.sign(data).signature)


def canonical(method: str, path: str, body_sha256: str, ts: str, nonce: str, to: str = "") -> bytes:
    return "\n".join([method.upper(), path, body_sha256, ts, nonce, to]).encode()


@functools.lru_cache(maxsize=1024)
def _verify_key(public_b64: str) -> VerifyKey:
    return VerifyKey(unb64(public_b64))


def verify(public_b64: str, data: bytes, signature_b64: str) -> None:
    try:
        _verify_key(public_b64).verify(data, unb64(signature_b64))
    except (BadSignatureError, ValueError):
        raise SignatureError("bad signature") from None


def parse_time(ts: str, what: str = H_TIME) -> float:
    try:
        t = float(ts)
    except (TypeError, ValueError):
        t = math.nan
    if not math.isfinite(t):
        raise SignatureError(f"bad {what} {ts!r}: seconds since the epoch, as a decimal")
    return t


def verify_request(headers, method: str, path: str, body_sha256: str, key_for, seen_nonce,
                   now: float | None = None, me: str = "") -> str:
    """Check a signed request; return the sender's name. ``key_for(name)`` gives the pinned public
    key or None; ``seen_nonce(nonce, expires)`` records a nonce and says whether it was seen."""
    name = headers.get(H_SERVER)
    ts, nonce, sig = headers.get(H_TIME), headers.get(H_NONCE), headers.get(H_SIG)
    if not (name and ts and nonce and sig):
        raise SignatureError("unsigned request: server-to-server calls must carry X-Distren-* signature headers")
    key = key_for(name.lower())
    if key is None:
        raise SignatureError(f"unknown server {name!r}: it must introduce itself (peer) first")
    t = parse_time(ts)
    now = time.time() if now is None else now
    if abs(now - t) > MAX_SKEW:
        raise SignatureError(f"request time is {now - t:+.0f} s off this server's clock (limit {MAX_SKEW:.0f} s); "
                             "check both clocks")
    verify(key, canonical(method, path, body_sha256, ts, nonce, me), sig)
    if len(nonce) != 32 or seen_nonce(nonce, t + 2 * MAX_SKEW):
        raise SignatureError("replayed request (nonce already used)")
    return name.lower()
