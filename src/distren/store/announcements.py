"""Announcements: the signed records of jobs, this server's own and those it heard of.

Each row keeps a record exactly as its origin signed it, and beside it what is read from it:
whether it is live, when it expires (its origin re-signs a live job's record before then, or
the job is no longer offered), when it was last heard, and ``seq``: a counter that grows with
every change here, so that a peer asks only for what changed since its last pass.
"""

from __future__ import annotations

import json
import time


class Announcements:
    def record_announcement(self, job: str, origin: str, body: dict, active: bool) -> bool:
        """Store what we heard of a job. True when it is news (to be relayed): a job not known
        before, or the withdrawal of a live one. A re-signed record (a later ``expires``)
        replaces the one kept, without being news; nothing brings a withdrawn job back."""
        expires = _expiry(body)
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT active, expires FROM announcements WHERE job=?", (job,)).fetchone()
            if row is not None and not row[0]:
                return False  # withdrawn for good
            news = row is None or not active
            if not news and (expires is None or row[1] is not None and expires <= row[1]):
                return False  # known, and not fresher than what we keep
            seq = db.execute("SELECT coalesce(max(seq), 0) + 1 FROM announcements").fetchone()[0]
            db.execute("INSERT INTO announcements(job, origin, body, active, received, expires, heard, seq)"
                       " VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(job) DO UPDATE SET active=excluded.active,"
                       " body=excluded.body, expires=excluded.expires, heard=excluded.heard, seq=excluded.seq",
                       (job, origin, json.dumps(body, sort_keys=True), int(active), now, expires, now, seq))
            return news

    def announcements(self, active_only: bool = True) -> list[dict]:
        """Records as their origin signed them, first heard first; ``active_only``: the live
        ones (not withdrawn, not expired)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM announcements" + (" WHERE active=1 AND (expires IS NULL OR expires>?)" if active_only else "")
                + " ORDER BY received", (time.time(),) if active_only else ()).fetchall()
        return [json.loads(r[0]) for r in rows]

    def announcement_changes(self, since: int, withdrawals: int = 1000) -> tuple[int, list[str]]:
        """(cursor, records changed after ``since``), as the JSON text their origin signed.
        From 0: every live record, then the last ``withdrawals`` withdrawals; after that, each
        record changed since (expired ones left out)."""
        now = time.time()
        with self._lock:
            cursor = self._db.execute("SELECT coalesce(max(seq), 0) FROM announcements").fetchone()[0]
            if since <= 0:
                live = self._db.execute("SELECT body FROM announcements WHERE active=1 AND (expires IS NULL OR expires>?)"
                                        " ORDER BY seq", (now,)).fetchall()
                gone = self._db.execute("SELECT body FROM (SELECT body, seq FROM announcements WHERE active=0"
                                        " AND json_extract(body, '$.active')=0 ORDER BY seq DESC LIMIT ?)"
                                        " ORDER BY seq", (withdrawals,)).fetchall()
                rows = live + gone
            else:
                rows = self._db.execute("SELECT body FROM announcements WHERE seq>? AND (active=1 AND (expires IS NULL OR expires>?)"
                                        " OR json_extract(body, '$.active')=0) ORDER BY seq",
                                        (since, now)).fetchall()
        return cursor, [r[0] for r in rows]

    def forget_announcement(self, job: str) -> None:
        """Stop considering a job whose origin says it is gone. The signed record stays (and is
        not passed on: only its origin's withdrawal is)."""
        with self._tx() as db:
            db.execute("UPDATE announcements SET active=0 WHERE job=?", (job,))

    def forget_silent_origins(self, before: float, keep: str) -> list[str]:
        """Drop every record of each origin (but ``keep``, ourselves) not heard of since
        ``before``: an origin silent that long is gone. Returns their names."""
        with self._tx() as db:
            gone = [r[0] for r in db.execute("SELECT origin FROM announcements WHERE origin!=? GROUP BY origin"
                                             " HAVING max(heard) < ?", (keep, before))]
            db.executemany("DELETE FROM announcements WHERE origin=?", [(o,) for o in gone])
        return gone


def _expiry(body: dict) -> float | None:
    e = body.get("expires")
    return float(e) if isinstance(e, (int, float)) and not isinstance(e, bool) else None
