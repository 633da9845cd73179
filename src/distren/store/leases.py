"""What an origin remembers of the servers it lends frames to: how many leases each holds, the
request id of each lease, the frames each failed or let run out, and the block-list."""

from __future__ import annotations

from .. import states
from .jobs import _event


class Leases:
    # The functions that take ``db`` run inside a transaction :mod:`distren.lifecycle` opened.

    def leases_held(self, db, server: str) -> int:
        """Frames of any of this server's jobs leased to ``server`` now."""
        return db.execute("SELECT COUNT(*) FROM frames WHERE state=? AND server=?",
                          (states.RENDERING, server)).fetchone()[0]

    def leased_for_request(self, db, job_id: int, server: str, request: str) -> int | None:
        """The frame ``server`` holds by its lease request ``request`` (its answer was lost)."""
        row = db.execute("SELECT frame_id FROM frames WHERE job_id=? AND server=? AND lease_request=?"
                         " AND state=?", (job_id, server, request, states.RENDERING)).fetchone()
        return row[0] if row else None

    def holds_lease(self, job_id: int, server: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM frames WHERE job_id=? AND server=? AND state=? LIMIT 1",
                                    (job_id, server, states.RENDERING)).fetchone() is not None

    def record_lease_failure(self, db, job_id: int, frame_id: int, server: str, why: str, now: float) -> int:
        """One more frame ``server`` failed or let run out; returns how many it has on the job."""
        db.execute("INSERT INTO lease_failures(job_id, frame_id, server, at, why) VALUES(?,?,?,?,?)",
                   (job_id, frame_id, server, now, why))
        return db.execute("SELECT COUNT(*) FROM lease_failures WHERE job_id=? AND server=?",
                          (job_id, server)).fetchone()[0]

    def failed_frames(self, db, job_id: int, server: str) -> list[int]:
        """Frames of ``job_id`` that ``server`` failed or let run out (the next lease avoids them)."""
        return [r[0] for r in db.execute("SELECT DISTINCT frame_id FROM lease_failures WHERE job_id=? AND server=?",
                                         (job_id, server))]

    def ran_out_on(self, db, job_id: int, frame_id: int, server: str) -> bool:
        """Did ``server`` hold ``frame_id`` on a lease that ran out?"""
        return db.execute("SELECT 1 FROM lease_failures WHERE job_id=? AND frame_id=? AND server=? AND why='expired'",
                          (job_id, frame_id, server)).fetchone() is not None

    def forgive_expiry(self, db, job_id: int, frame_id: int, server: str) -> None:
        """A late result was taken: the lease that ran out no longer counts against ``server``."""
        db.execute("DELETE FROM lease_failures WHERE job_id=? AND frame_id=? AND server=? AND why='expired'",
                   (job_id, frame_id, server))

    def blocked_reason(self, db, job_id: int, server: str) -> str | None:
        row = db.execute("SELECT reason FROM blocklist WHERE job_id=? AND server=?", (job_id, server)).fetchone()
        return row[0] if row else None

    def block(self, db, job_id: int, server: str, reason: str, now: float) -> bool:
        """Block-list ``server`` for ``job_id``; False if it was already."""
        return db.execute("INSERT OR IGNORE INTO blocklist(job_id, server, at, reason) VALUES(?,?,?,?)",
                          (job_id, server, now, reason)).rowcount == 1

    def clear_blocklist(self, db, job_id: int) -> bool:
        """Forget what the job's renderers failed; True if one was block-listed."""
        db.execute("DELETE FROM lease_failures WHERE job_id=?", (job_id,))
        return db.execute("DELETE FROM blocklist WHERE job_id=?", (job_id,)).rowcount > 0

    def add_event(self, db, now: float, job_id: int, frame_id: int | None, old: str, new: str, reason: str) -> None:
        """An event that is not a state change (e.g. a renderer block-listed for the job)."""
        _event(db, now, job_id, frame_id, old, new, reason)

    def blocklist(self, job_id: int) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT server, at, reason FROM blocklist WHERE job_id=? ORDER BY at",
                                    (job_id,)).fetchall()
        return [dict(r) for r in rows]

    def lease_ran_out(self, job_id: int, frame_id: int, server: str) -> bool:
        with self._lock:
            return self.ran_out_on(self._db, job_id, frame_id, server)

    def peer_slots(self, name: str) -> int | None:
        """The slots a peer stated in its last ``/fed/state``, if it was heard."""
        with self._lock:
            row = self._db.execute("SELECT slots FROM peers WHERE name=?", (name,)).fetchone()
        return row[0] if row else None
