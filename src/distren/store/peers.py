"""Peers, pinned by name and key (the announcements of their jobs are :mod:`.announcements`)."""

from __future__ import annotations

import json
import time

from ..errors import Conflict, NotFound


ACCEPTED, PENDING, KNOWN, REJECTED = "accepted", "pending", "known", "rejected"
_RANK = {KNOWN: 0, PENDING: 1, ACCEPTED: 2}


class Peers:
    """Pins: a server's name, its key and address (from its own hello at its own address, see
    :mod:`distren.peering`) and a status: ``accepted`` servers may make requests of this one,
    ``pending`` ones asked and wait for an admin, ``known`` ones we said hello to, ``rejected``
    ones an admin refused."""

    def pin_peer(self, name: str, address: str, public_key: str, status: str = ACCEPTED) -> bool:
        """Remember a server's key on first contact; refuse a different key later. A status only
        rises (known < pending < accepted); 'rejected' stays until an admin accepts. True if new."""
        with self._tx() as db:
            row = db.execute("SELECT public_key, status FROM peers WHERE name=?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO peers(name, address, public_key, added, last_heard, status)"
                           " VALUES(?,?,?,?,?,?)", (name, address, public_key, time.time(), time.time(), status))
                self._keys.pop(name, None)
                return True
            if row[0] != public_key:
                raise Conflict(
                    f"server {name!r} presented a different key than the one pinned on first contact; "
                    "refusing it. A server changes its key with `distren key rotate`, which its peers "
                    "check; otherwise its admin says so and yours runs `distren peers remove NAME`."
                )
            old = row[1]
            if old == REJECTED:
                new = ACCEPTED if status == ACCEPTED else REJECTED
            else:
                new = status if _RANK.get(status, -1) > _RANK[old] else old
            db.execute("UPDATE peers SET address=?, last_heard=?, status=? WHERE name=?",
                       (address, time.time(), new, name))
            self._keys.pop(name, None)
            return False

    def set_peer_status(self, name: str, status: str, only_from: tuple[str, ...] = ()) -> str:
        """An admin's decision; returns the status before. ``only_from``: refuse other states."""
        with self._tx() as db:
            row = db.execute("SELECT status FROM peers WHERE name=?", (name,)).fetchone()
            if row is None or (only_from and row[0] not in only_from):
                raise NotFound(f"no server named {name!r} is waiting for approval; `distren peers pending` "
                               "lists those that are")
            db.execute("UPDATE peers SET status=? WHERE name=?", (status, name))
        self._keys.pop(name, None)
        return row[0]

    def rekey_peer(self, name: str, old_key: str, new_key: str) -> None:
        """A rotation its old key signed (checked by the caller): the new key replaces the old."""
        with self._tx() as db:
            if db.execute("UPDATE peers SET public_key=? WHERE name=? AND public_key=?",
                          (new_key, name, old_key)).rowcount == 0:
                raise Conflict(f"the key rotation of {name!r} starts from a key that is not the one pinned")
        self._keys.pop(name, None)

    def remove_peer(self, name: str) -> None:
        """Forget a peer and its pinned key (the next hello pins a new one)."""
        with self._tx() as db:
            if db.execute("DELETE FROM peers WHERE name=?", (name,)).rowcount == 0:
                raise NotFound(f"no peer named {name!r}; `distren servers` lists them")
        self._keys.pop(name, None)

    def peer_pin(self, name: str) -> tuple[str, str, str] | None:
        """(key, status, address). Asked on every signed request: answered from memory once read."""
        pin = self._keys.get(name)
        if pin is None:
            with self._lock:
                row = self._db.execute("SELECT public_key, status, address FROM peers WHERE name=?",
                                       (name,)).fetchone()
            if row:
                pin = self._keys[name] = (row[0], row[1], row[2])
        return pin

    def peer_key(self, name: str) -> str | None:
        """The pinned key, whatever the server's status."""
        pin = self.peer_pin(name)
        return pin[0] if pin else None

    def peers(self, status: str | None = ACCEPTED) -> list[dict]:
        """Pinned servers with ``status`` (None: all)."""
        with self._lock:
            if status is None:
                rows = self._db.execute("SELECT * FROM peers ORDER BY name").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM peers WHERE status=? ORDER BY name", (status,)).fetchall()
        return [dict(r, rendering=json.loads(r["rendering"])) for r in rows]

    def count_peers(self, status: str) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM peers WHERE status=?", (status,)).fetchone()[0]

    def forget_pending(self, before: float) -> int:
        """Drop the requests to peer that waited since before ``before``."""
        with self._tx() as db:
            n = db.execute("DELETE FROM peers WHERE status=? AND added<?", (PENDING, before)).rowcount
        self._keys.clear()
        return n

    def peer_heard(self, name: str, slots: int | None = None, rendering: list[str] | None = None) -> None:
        with self._tx() as db:
            if slots is None:
                db.execute("UPDATE peers SET last_heard=? WHERE name=?", (time.time(), name))
            else:
                db.execute("UPDATE peers SET last_heard=?, slots=?, rendering=? WHERE name=?",
                           (time.time(), slots, json.dumps(rendering or []), name))
