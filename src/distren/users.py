"""Who may do what: users and their tokens, and which jobs a user may see and touch
(README "Users and access"). The API asks here on every request."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from . import urls
from .errors import InvalidURL, Unauthorized
from .fsutil import atomic_write
from .store import no_such_job

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("distren.users")


class Users:
    def __init__(self, url: urls.ServerURL, store: Store, admin_token: Path):
        """``admin_token``: the file the first admin's token is written to."""
        self.url = url
        self.store = store
        self.admin_token = admin_token

    def ensure_admin(self) -> None:
        if self.store.has_users():
            return
        token = secrets.token_urlsafe(32)
        # The file first: if we die before the user row exists, the next start makes a new one.
        atomic_write(self.admin_token, token.encode() + b"\n", mode=0o600)
        self.store.add_user("admin", admin=True, token=token)

    def authenticate(self, token: str | None) -> tuple[str, bool]:
        """The user a token belongs to, and whether they are an admin. Asked on every request,
        so a revoked token stops working at once."""
        if not token:
            raise Unauthorized("no token: this request needs a user's (Authorization: Bearer TOKEN)")
        user = self.store.user_for_token(token)
        if user is None:
            raise Unauthorized("the token is not valid on this server (wrong, or its user was revoked)")
        return user

    def add(self, name: str, admin: bool = False) -> str:
        if len(name) > 64:  # checked first: the name is not repeated back whole
            raise InvalidURL(f"user name of {len(name)} characters is too long: use at most 64 letters, "
                             "digits, '_', '.' or '-'")
        return self.store.add_user(urls.check_user_name(name), admin=admin)

    def revoke(self, name: str) -> bool:
        """The user's token stops working now. Their jobs are left as they are (an admin may
        still cancel them): revoking a person should not throw away work others wait for."""
        revoked = self.store.revoke_user(name)
        if revoked:
            log.info("user %s revoked", self.url.user(name))
        return revoked

    def list(self) -> list[dict]:
        counts = self.store.jobs_per_submitter()
        return [{"name": u["name"], "url": str(self.url.user(u["name"])), "admin": u["admin"],
                 "revoked": u["revoked"] is not None, "created": u["created"],
                 "jobs": counts.get(str(self.url.user(u["name"])), 0)} for u in self.store.users()]

    def job_for(self, job_id: int, user: str, admin: bool) -> int:
        """``job_id`` if ``user`` may see and touch that job: their own, or any for an admin.
        Another user's job is answered exactly like one that does not exist, so that its
        existence is not told either."""
        if not 0 <= job_id <= urls.MAX_ID:
            raise no_such_job(job_id)
        job = self.store.get_job(job_id)
        if not admin and job.submitter != str(self.url.user(user)):
            raise no_such_job(job_id)
        return job_id
