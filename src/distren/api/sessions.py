"""The dashboard's sign-in: a random session id in an HttpOnly, SameSite=Strict cookie, mapped
here (in memory) to the token the person signed in with. The token is checked again on every
request (:meth:`distren.users.Users.authenticate`), so revoking a user ends their sessions at
once; a restart ends every session (sign in again). Each session has its own CSRF token, which
every form that changes something sends back."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

COOKIE = "distren_session"
MAX_SESSIONS = 10_000  # the oldest is forgotten past this: memory stays bounded whoever signs in
LIFETIME = 12 * 3600.0  # seconds a session lasts after sign-in


@dataclass(frozen=True)
class Session:
    token: str
    csrf: str
    expires: float


class Sessions:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def create(self, token: str) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._by_id[sid] = Session(token, secrets.token_urlsafe(24), time.time() + LIFETIME)
            while len(self._by_id) > MAX_SESSIONS:
                self._by_id.popitem(last=False)
        return sid

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._by_id.get(sid)
            if s is not None and s.expires < time.time():
                del self._by_id[sid]
                s = None
        return s

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)

    @staticmethod
    def csrf_ok(session: Session, sent: str | None) -> bool:
        return bool(sent) and secrets.compare_digest(session.csrf.encode(), str(sent).encode())
