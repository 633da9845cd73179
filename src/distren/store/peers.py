"""Peers, pinned by name and key (the announcements of their jobs are :mod:`.announcements`)."""

from __future__ import annotations

import json
import time

from ..errors import Conflict, NotFound


class Peers:
    def pin_peer(self, name: str, address: str, public_key: str) -> bool:
        """Remember a peer's key on first contact; refuse a different key later. True if new."""
        with self._tx() as db:
            row = db.execute("SELECT public_key FROM peers WHERE name=?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO peers(name, address, public_key, added, last_heard) VALUES(?,?,?,?,?)",
                           (name, address, public_key, time.time(), time.time()))
                return True
            if row[0] != public_key:
                raise Conflict(
                    f"server {name!r} presented a different key than the one pinned on first contact; "
                    "refusing it. If its key really changed, `distren peers remove NAME`, then add it again."
                )
            db.execute("UPDATE peers SET address=?, last_heard=? WHERE name=?", (address, time.time(), name))
            return False

    def remove_peer(self, name: str) -> None:
        """Forget a peer and its pinned key (the next hello pins a new one)."""
        with self._tx() as db:
            if db.execute("DELETE FROM peers WHERE name=?", (name,)).rowcount == 0:
                raise NotFound(f"no peer named {name!r}; `distren servers` lists them")
        self._keys.pop(name, None)

    def peer_key(self, name: str) -> str | None:
        """Asked on every signed request: answered from memory once read (pins change rarely)."""
        key = self._keys.get(name)
        if key is None:
            with self._lock:
                row = self._db.execute("SELECT public_key FROM peers WHERE name=?", (name,)).fetchone()
            if row:
                key = self._keys[name] = row[0]
        return key

    def peers(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM peers ORDER BY name").fetchall()
        return [dict(r, rendering=json.loads(r["rendering"])) for r in rows]

    def peer_heard(self, name: str, slots: int | None = None, rendering: list[str] | None = None) -> None:
        with self._tx() as db:
            if slots is None:
                db.execute("UPDATE peers SET last_heard=? WHERE name=?", (time.time(), name))
            else:
                db.execute("UPDATE peers SET last_heard=?, slots=?, rendering=? WHERE name=?",
                           (time.time(), slots, json.dumps(rendering or []), name))
