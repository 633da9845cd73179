"""Frames, their leases and their dependencies: the rows lifecycle moves, and the reads."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass

from .. import states
from ..errors import NotFound
from .jobs import _event, reason_text


@dataclass(frozen=True)
class FrameRow:
    job_id: int
    frame_id: int
    state: str
    reason: str
    attempts: int
    server: str | None
    files: list[dict]
    started: float | None
    finished: float | None


class Frames:
    def frame_in(self, db, job_id: int, frame_id: int) -> FrameRow:
        row = db.execute("SELECT * FROM frames WHERE job_id=? AND frame_id=?", (job_id, frame_id)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} has no frame {frame_id}")
        return _frame(row)

    def set_frame(self, db, job_id: int, frame_id: int, old: str, new: str, reason: str, now: float,
                  **cols) -> None:
        """Move a frame from ``old`` (as read in this transaction) to ``new``, with its event."""
        if "files" in cols:
            cols["files"] = json.dumps(cols["files"], sort_keys=True)
        sets = "".join(f", {k}=?" for k in cols)
        reason = reason_text(reason)
        db.execute(f"UPDATE frames SET state=?, reason=?{sets} WHERE job_id=? AND frame_id=?",
                   (new, reason, *cols.values(), job_id, frame_id))
        _event(db, now, job_id, frame_id, old, new, reason)

    def next_queued(self, db, job_id: int | None, skip: Collection[int] = (),
                    types: Collection[str] | None = None) -> tuple[int, int, str] | None:
        """The first queued frame whose dependencies are done, of the live job (``job_id`` if
        given, none of its frames in ``skip``; otherwise one of the ``types`` given) with the
        highest priority, the oldest among equals: (job, frame, the job's state)."""
        only, args = "", []
        if job_id is not None:
            only += " AND j.id=?"
            args.append(job_id)
        if types is not None:
            only += f" AND j.type IN ({','.join('?' * len(types))})"
            args += list(types)
        # Job by job (few are live at once) rather than one query sorting every queued frame by
        # its job's priority: each probe below is an index lookup, however many frames wait.
        live = db.execute(
            f"SELECT j.id, j.state FROM jobs j WHERE j.state IN (?,?) {only} AND EXISTS"
            " (SELECT 1 FROM frames f WHERE f.job_id=j.id AND f.state=?) ORDER BY j.priority DESC, j.id",
            [states.QUEUED, states.RENDERING, *args, states.QUEUED]).fetchall()
        not_in = ""
        if job_id is not None and skip:  # one parameter however many: a job may have 100,000 frames
            not_in = " AND f.frame_id NOT IN (SELECT value FROM json_each(?))"
        for jid, jstate in live:
            row = db.execute(
                f"SELECT f.frame_id FROM frames f WHERE f.job_id=? AND f.state=?{not_in}"
                " AND NOT EXISTS (SELECT 1 FROM deps d WHERE d.job_id=f.job_id AND d.frame_id=f.frame_id"
                " AND d.target_state!='done') ORDER BY f.frame_id LIMIT 1",
                [jid, states.QUEUED] + ([json.dumps(list(skip))] if not_in else [])).fetchone()
            if row:
                return jid, row[0], jstate
        return None

    def frames_in(self, db, job_id: int) -> list[FrameRow]:
        return [_frame(r) for r in db.execute("SELECT * FROM frames WHERE job_id=? ORDER BY frame_id", (job_id,))]

    def frame_counts_in(self, db, job_id: int) -> dict[str, int]:
        return {r[0]: r[1] for r in db.execute(
            "SELECT state, COUNT(*) FROM frames WHERE job_id=? GROUP BY state", (job_id,))}

    def frame_states_in(self, db, job_id: int) -> dict[str, int]:
        """The states a job's frames are in, as {state: 1}: all that its own state follows from
        (:func:`distren.states.job_state_for`), found through the index in a time that does not
        grow with the job. (Counting every frame's state took 4 ms for 10,000 frames, and it is
        done on every upload.)"""
        return {s: 1 for s in states.FRAME_STATES if db.execute(
            "SELECT EXISTS(SELECT 1 FROM frames WHERE state=? AND job_id=?)", (s, job_id)).fetchone()[0]}

    def unfinished_frames(self, db, job_id: int) -> list[int]:
        return [r[0] for r in db.execute("SELECT frame_id FROM frames WHERE job_id=? AND state!=? ORDER BY frame_id",
                                         (job_id, states.DONE))]

    def rendering_frames(self, db, server: str | None = None,
                         lease_before: float | None = None) -> list[tuple[int, int, str]]:
        """Frames being rendered: by ``server``, or those whose lease ran out before ``lease_before``."""
        sql, args = "SELECT job_id, frame_id, server FROM frames WHERE state=?", [states.RENDERING]
        if server is not None:
            sql, args = sql + " AND server=?", args + [server]
        if lease_before is not None:
            sql, args = sql + " AND lease_expires<?", args + [lease_before]
        return [tuple(r) for r in db.execute(sql + " ORDER BY job_id, frame_id", args)]

    def set_lease(self, db, job_id: int, frame_id: int, expires: float) -> None:
        db.execute("UPDATE frames SET lease_expires=? WHERE job_id=? AND frame_id=?", (expires, job_id, frame_id))

    def extend_leases(self, db, until: float) -> None:
        db.execute("UPDATE frames SET lease_expires=MAX(lease_expires, ?) WHERE state=? AND lease_expires IS NOT NULL",
                   (until, states.RENDERING))

    def frames(self, job_id: int) -> list[FrameRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM frames WHERE job_id=? ORDER BY frame_id", (job_id,)).fetchall()
        return [_frame(r) for r in rows]

    def frame(self, job_id: int, frame_id: int) -> FrameRow:
        with self._lock:
            return self.frame_in(self._db, job_id, frame_id)

    def frame_counts(self, job_id: int) -> dict[str, int]:
        with self._lock:
            return self.frame_counts_in(self._db, job_id)

    def frames_leased_to(self, server: str) -> list[tuple[int, int]]:
        with self._lock:
            return [(j, f) for j, f, _ in self.rendering_frames(self._db, server=server)]

    # --- dependencies: one row per <dep>; what is known of its target: waiting, done or stuck

    def frame_url(self, job_id: int, frame_id: int) -> str:
        return f"distren://{self.get_meta('name')}/job/{job_id}/frame/{frame_id}"

    def local_target(self, dep: str) -> tuple[int, int] | None:
        prefix = f"distren://{self.get_meta('name')}/job/"
        if not dep.startswith(prefix):
            return None
        job, _, frame = dep[len(prefix):].partition("/frame/")
        return int(job), int(frame)

    def insert_deps(self, db, job_id: int, deps: list[tuple[int, str]]) -> None:
        db.executemany("INSERT OR IGNORE INTO deps(job_id, frame_id, dep) VALUES(?,?,?)",
                       [(job_id, f, d) for f, d in deps])

    def frame_and_job_state(self, db, job_id: int, frame_id: int) -> tuple[str, str] | None:
        row = db.execute("SELECT f.state, j.state FROM frames f JOIN jobs j ON j.id=f.job_id"
                         " WHERE f.job_id=? AND f.frame_id=?", (job_id, frame_id)).fetchone()
        return tuple(row) if row else None

    def set_dep_target(self, db, dep: str, target_state: str) -> list[tuple[int, int, str]]:
        """Record what is known of ``dep``; returns the frames waiting for it, with their states."""
        db.execute("UPDATE deps SET target_state=? WHERE dep=?", (target_state, dep))
        return [tuple(r) for r in db.execute(
            "SELECT d.job_id, d.frame_id, f.state FROM deps d JOIN frames f"
            " ON f.job_id=d.job_id AND f.frame_id=d.frame_id WHERE d.dep=?", (dep,))]

    def stuck_deps(self, db, job_id: int, frame_id: int) -> list[str]:
        return [r[0] for r in db.execute("SELECT dep FROM deps WHERE job_id=? AND frame_id=? AND target_state='stuck'",
                                         (job_id, frame_id))]

    def remote_deps_pending(self) -> list[str]:
        """Dependencies on other servers' frames that are not known to be done."""
        prefix = f"distren://{self.get_meta('name')}/"
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT d.dep FROM deps d JOIN jobs j ON j.id=d.job_id"
                " WHERE d.target_state!='done' AND j.state NOT IN (?,?)",
                (states.DONE, states.CANCELLED)).fetchall()
        return [r[0] for r in rows if not r[0].startswith(prefix)]


def _frame(row: sqlite3.Row) -> FrameRow:
    return FrameRow(row["job_id"], row["frame_id"], row["state"], row["reason"], row["attempts"],
                    row["server"], json.loads(row["files"]), row["started"], row["finished"])
