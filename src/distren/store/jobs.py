"""Jobs and the event log: the rows lifecycle moves, and the reads the views need."""

from __future__ import annotations

import os
import shutil
import sqlite3
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import states
from ..errors import NotFound


@dataclass(frozen=True)
class JobRow:
    id: int
    submitter: str
    type: str
    state: str
    reason: str
    jobfile: bytes
    created: float
    updated: float
    priority: int = 0


@dataclass(frozen=True)
class Event:
    id: int
    at: float
    job_id: int
    frame_id: int | None
    old: str
    new: str
    reason: str


class Jobs:
    # The functions that take ``db`` run inside a transaction that :mod:`distren.lifecycle`
    # opened with ``tx()``: lifecycle decides which move to make, these only execute it.

    def insert_job(self, db, submitter: str, jtype: str, frame_ids: list[int],
                   make_jobfile: Callable[[int], bytes], staged: Path, upload_key: str | None,
                   reason: str, now: float, priority: int = 0) -> tuple[int, bool]:
        """Insert a job, its frames and its first event, and move its staged folder to
        ``jobs/ID``. Returns (id, True), or (id, False) for an upload key seen before.

        If the process dies before COMMIT the id was never handed out (and is reused for the
        next job, so a leftover folder of that id is stale and replaced)."""
        if upload_key is not None:
            # The same upload again (a client retrying one still in flight): the same job.
            existing = _job_for_upload_key(db, submitter, upload_key)
            if existing is not None:
                return existing, False
        cur = db.execute(
            "INSERT INTO jobs(submitter, type, state, reason, jobfile, upload_key, created, updated, priority)"
            " VALUES(?,?,?,?,?,?,?,?,?)",
            (submitter, jtype, states.QUEUED, "submitted", b"", upload_key, now, now, priority))
        job_id = cur.lastrowid
        db.execute("UPDATE jobs SET jobfile=? WHERE id=?", (make_jobfile(job_id), job_id))
        db.executemany("INSERT INTO frames(job_id, frame_id, state, reason) VALUES(?,?,?,?)",
                       [(job_id, f, states.QUEUED, "submitted") for f in frame_ids])
        _event(db, now, job_id, None, "", states.QUEUED, reason)
        dest = self.job_dir(job_id)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staged, dest)
        return job_id, True

    def delete_job_rows(self, db, job_id: int) -> None:
        for table, col in (("events", "job_id"), ("deps", "job_id"), ("lease_failures", "job_id"),
                           ("blocklist", "job_id"), ("frames", "job_id"), ("jobs", "id")):
            db.execute(f"DELETE FROM {table} WHERE {col}=?", (job_id,))

    def job_state(self, db, job_id: int) -> str:
        row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise no_such_job(job_id)
        return row[0]

    def set_job(self, db, job_id: int, old: str, new: str, reason: str, now: float) -> None:
        reason = reason_text(reason)
        db.execute("UPDATE jobs SET state=?, reason=?, updated=? WHERE id=?", (new, reason, now, job_id))
        _event(db, now, job_id, None, old, new, reason)

    def set_priority(self, db, job_id: int, priority: int) -> int:
        """Set a job's priority; returns the one it had."""
        old = db.execute("SELECT priority FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
        db.execute("UPDATE jobs SET priority=? WHERE id=?", (priority, job_id))
        return old

    def record_job_event(self, db, job_id: int, state: str, reason: str, now: float) -> None:
        """A change to a job that keeps its state (its priority): an event from and to ``state``."""
        reason = reason_text(reason)
        db.execute("UPDATE jobs SET updated=? WHERE id=?", (now, job_id))
        _event(db, now, job_id, None, state, state, reason)

    def job_for_upload_key(self, submitter: str, key: str) -> int | None:
        with self._lock:
            return _job_for_upload_key(self._db, submitter, key)

    def get_job(self, job_id: int) -> JobRow:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise no_such_job(job_id)
        return _job(row)

    def list_jobs(self, submitter: str | None = None) -> list[JobRow]:
        """Every job, or only those ``submitter`` submitted."""
        with self._lock:
            if submitter is None:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM jobs WHERE submitter=? ORDER BY id", (submitter,)).fetchall()
        return [_job(r) for r in rows]

    def jobs_per_submitter(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT submitter, COUNT(*) FROM jobs GROUP BY submitter").fetchall()
        return {r[0]: r[1] for r in rows}

    def events(self, job_id: int, after: int = 0) -> list[Event]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM events WHERE job_id=? AND id>? ORDER BY id",
                                    (job_id, after)).fetchall()
        return [Event(**dict(r)) for r in rows]

    def jobs_awaiting_rebundle(self) -> list[int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT j.id FROM jobs j WHERE j.state IN (?,?,?) AND NOT EXISTS"
                " (SELECT 1 FROM frames f WHERE f.job_id=j.id AND f.state!=?)",
                (states.QUEUED, states.RENDERING, states.PAUSED, states.DONE)).fetchall()
        return [r[0] for r in rows]


def no_such_job(job_id: int) -> NotFound:
    """The one answer for a job that does not exist, and for one the asker may not see: the
    two must not be told apart."""
    return NotFound(f"no job {job_id} on this server; `distren jobs` lists the jobs it has")


def _job_for_upload_key(db, submitter: str, key: str) -> int | None:
    row = db.execute("SELECT id FROM jobs WHERE submitter=? AND upload_key=?", (submitter, key)).fetchone()
    return row[0] if row else None


MAX_REASON = 2000  # characters of a stored reason


def reason_text(reason: str) -> str:
    """A reason as it is stored and shown: one line of text. Reasons quote renderers, peers and
    scenes (a scene may print binary data, a peer may send anything), so control and format
    characters and undecodable bytes become spaces, runs of spaces one, and the length is
    bounded. Every stored reason passes here."""
    reason = str(reason)
    if reason.isascii() and reason.isprintable() and len(reason) <= MAX_REASON:  # most reasons: ours
        return " ".join(reason.split())
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp") or c == "\ufffd" else c
                   for c in str(reason)[: 4 * MAX_REASON])
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _event(db, now: float, job_id: int, frame_id: int | None, old: str, new: str, reason: str) -> None:
    reason = reason_text(reason)
    db.execute("INSERT INTO events(at, job_id, frame_id, old, new, reason) VALUES(?,?,?,?,?,?)",
               (now, job_id, frame_id, old, new, reason))


def _job(row: sqlite3.Row) -> JobRow:
    return JobRow(row["id"], row["submitter"], row["type"], row["state"], row["reason"],
                  bytes(row["jobfile"]), row["created"], row["updated"], row["priority"])
