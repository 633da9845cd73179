"""A server's key on disk, and its rotation.

``server.key`` holds the Ed25519 key. ``distren key rotate`` makes a new one and a statement,
signed with the old key, that the new one replaces it (:func:`distren.binding.rotation`), kept
in ``key-rotation.json``; the server sends it with its hello, and a peer that pinned the old key
takes the new one only with it. The steps are ordered so that a crash at any point leaves either
the old key, or the new key and its statement: the new key is written beside the old, then the
statement, then the new key takes the old one's place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import binding
from .fsutil import atomic_write
from .identity import Identity

KEY, NEW_KEY, STATEMENT = "server.key", "server.key.new", "key-rotation.json"


def _statement(data: Path) -> dict | None:
    try:
        return json.loads((data / STATEMENT).read_text())
    except (OSError, ValueError):
        return None


def load(name: str, data: Path) -> tuple[Identity, dict | None]:
    """This server's identity, and its latest rotation statement (None if it never rotated)."""
    statement = _statement(data)
    if (data / NEW_KEY).exists():
        new = Identity.load_or_create(name, data / NEW_KEY)
        if statement and statement.get("new_key") == new.public:
            os.replace(data / NEW_KEY, data / KEY)  # the rotation was interrupted after its statement
        else:
            (data / NEW_KEY).unlink()  # interrupted before it: the old key stays
    ident = Identity.load_or_create(name, data / KEY)
    if statement and statement.get("new_key") != ident.public:
        statement = None  # about an older key
    return ident, statement


def rotate(name: str, data: Path) -> dict:
    """Replace the key; return the statement (signed with the old key) that says so."""
    old, _ = load(name, data)
    (data / NEW_KEY).unlink(missing_ok=True)
    new = Identity.load_or_create(name, data / NEW_KEY)
    statement = binding.rotation(old, new)
    atomic_write(data / STATEMENT, json.dumps(statement, sort_keys=True).encode() + b"\n")
    os.replace(data / NEW_KEY, data / KEY)
    return statement
