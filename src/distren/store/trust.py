"""What this server, as an origin, makes of each renderer: frames checked, trusted or not."""

from __future__ import annotations

from .jobs import reason_text


class Trust:
    def trust(self, name: str | None = None) -> dict[str, dict]:
        """name -> {"checked": frames checked and found right, "untrusted": when or None, "reason"},
        of every renderer this server has checked or distrusted (or only of ``name``)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM peer_trust" + (" WHERE name=?" if name else ""),
                                    (name,) if name else ()).fetchall()
        return {r["name"]: {"checked": r["checked"], "untrusted": r["untrusted"], "reason": r["reason"]}
                for r in rows}

    def count_checked(self, name: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO peer_trust(name, checked) VALUES(?, 1)"
                       " ON CONFLICT(name) DO UPDATE SET checked=checked+1", (name,))

    def set_untrusted(self, db, name: str, reason: str, now: float) -> None:
        """Inside :mod:`distren.lifecycle`'s transaction that takes its frames back."""
        db.execute("INSERT INTO peer_trust(name, untrusted, reason) VALUES(?,?,?) ON CONFLICT(name)"
                   " DO UPDATE SET untrusted=excluded.untrusted, reason=excluded.reason",
                   (name, now, reason_text(reason)))

    def set_trusted(self, name: str) -> bool:
        """Trust a renderer again, as a new one (its next frames are all checked). False if it
        was not untrusted."""
        with self._tx() as db:
            return db.execute("UPDATE peer_trust SET untrusted=NULL, reason='', checked=0"
                              " WHERE name=? AND untrusted IS NOT NULL", (name,)).rowcount > 0

    def frames_held_by(self, db, server: str, states: tuple[str, ...]) -> list[tuple[int, int, str]]:
        """(job, frame, state) of ``server``'s frames in ``states``, of jobs still under way."""
        return [tuple(r) for r in db.execute(
            "SELECT f.job_id, f.frame_id, f.state FROM frames f JOIN jobs j ON j.id=f.job_id"
            f" WHERE f.server=? AND f.state IN ({','.join('?' * len(states))})"
            " AND j.state NOT IN ('done', 'cancelled') ORDER BY f.job_id, f.frame_id", (server, *states))]

    def made_from(self, db, url: str) -> list[tuple[int, int, str]]:
        """(job, frame, state) of the frames made, or being made, from the files of the frame
        ``url`` in jobs under way; the frames that wait for ``url`` wait for it again."""
        return [(j, f, s) for j, f, s in self.set_dep_target(db, url, "waiting")
                if s in ("rendering", "done") and self.job_state(db, j) not in ("done", "cancelled")]
