"""Users: names, token hashes (never the tokens), admins, revocations."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time

from ..errors import Conflict, NotFound


class Users:
    def add_user(self, name: str, admin: bool = False, token: str | None = None) -> str:
        """Create a user and return its token (only its hash is stored)."""
        token = token or secrets.token_urlsafe(32)
        try:
            with self._tx() as db:
                db.execute("INSERT INTO users(name, token_sha256, admin, created) VALUES(?,?,?,?)",
                           (name, _hash_token(token), int(admin), time.time()))
        except sqlite3.IntegrityError:
            raise Conflict(f"user {name!r} already exists; choose another name") from None
        return token

    def user_for_token(self, token: str) -> tuple[str, bool] | None:
        with self._lock:
            row = self._db.execute("SELECT name, admin FROM users WHERE token_sha256=? AND revoked IS NULL",
                                   (_hash_token(token),)).fetchone()
        return (row["name"], bool(row["admin"])) if row else None

    def users(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT name, admin, revoked, created FROM users ORDER BY name").fetchall()
        return [dict(r, admin=bool(r["admin"])) for r in rows]

    def revoke_user(self, name: str) -> bool:
        """Stop a user's token from working (in one transaction with the last-admin check, so
        two admins revoking each other at once cannot leave the server without one). False if
        the user was revoked already."""
        with self._tx() as db:
            row = db.execute("SELECT admin, revoked FROM users WHERE name=?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"no user {_shown(name)} on this server; `distren user list` lists them")
            if row["revoked"] is not None:
                return False
            if row["admin"] and db.execute("SELECT COUNT(*) FROM users WHERE admin=1 AND revoked IS NULL"
                                           " AND name!=?", (name,)).fetchone()[0] == 0:
                raise Conflict(f"user {name!r} is the last admin of this server; make another admin first "
                               "(`distren user add NAME --admin`), then revoke this one")
            db.execute("UPDATE users SET revoked=? WHERE name=?", (time.time(), name))
        return True

    def has_users(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _shown(name: str) -> str:
    """A name from a request, quoted for a message and cut short: it may be megabytes long."""
    return repr(name) if len(name) <= 80 else repr(name[:80]) + f"... ({len(name)} characters)"
