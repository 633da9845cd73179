"""Nonces of signed requests, kept until they expire so that none is accepted twice."""

from __future__ import annotations


class Nonces:
    def seen_nonce(self, nonce: str, expires: float) -> bool:
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO nonces(nonce, expires) VALUES(?, ?)", (nonce, expires))
            return cur.rowcount == 0

    def purge_nonces(self, now: float) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM nonces WHERE expires<?", (now,))

    def record_nonce(self, db, nonce: str, expires: float) -> bool:
        """False if the nonce was seen before (a replay)."""
        return db.execute("INSERT OR IGNORE INTO nonces(nonce, expires) VALUES(?, ?)", (nonce, expires)).rowcount == 1
