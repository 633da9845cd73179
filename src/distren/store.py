"""Persistence: one SQLite database (WAL) plus files under the server's data folder.

All SQL lives here. Schema changes are numbered migrations, applied in order at start and
recorded in ``PRAGMA user_version``. Which state change to make is decided by
:mod:`distren.lifecycle`, inside a transaction it opens here (:meth:`Store.tx`); the small
functions it calls write each change with its reason to the ``events`` table in that same
transaction, so the record and the state can never disagree - not even after SIGKILL.

Layout of the data folder::

    state.sqlite            jobs, frames, users, events
    admin.token             the first admin's token (mode 0600)
    jobs/ID/seed.tar        the job's bundle as submitted (distrenjob.xml + scene/)
    jobs/ID/scene/          the scene, unpacked once
    jobs/ID/frames/FID.tar  each finished frame's files (the seed's frame packaging)
    jobs/ID/logs/FID.log    each frame's renderer log, all attempts
    jobs/ID/result.tar      the rebundled finished frames
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import states
from .errors import Conflict, NotFound

MIGRATIONS: list[str] = [
    # 1: the single-server schema.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL UNIQUE,
        admin INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    );
    -- AUTOINCREMENT: SQLite then never hands out an id twice, even after deletes.
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        submitter TEXT NOT NULL,
        type TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        jobfile BLOB NOT NULL,
        upload_key TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        UNIQUE (submitter, upload_key)
    );
    CREATE TABLE frames (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        frame_id INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        server TEXT,
        files TEXT NOT NULL DEFAULT '[]',
        started REAL,
        finished REAL,
        PRIMARY KEY (job_id, frame_id)
    );
    CREATE INDEX frames_by_state ON frames(state, job_id, frame_id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        job_id INTEGER NOT NULL,
        frame_id INTEGER,
        old TEXT NOT NULL,
        new TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX events_by_job ON events(job_id, id);
    """,
    # 2: federation. Peers are pinned by name and key; announcements are the jobs of all servers
    # this one has heard of; nonces keep signed requests from being replayed; a frame leased to
    # another server carries the time its lease runs out.
    """
    CREATE TABLE peers (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        public_key TEXT NOT NULL,
        slots INTEGER,
        rendering TEXT NOT NULL DEFAULT '[]',
        last_heard REAL,
        added REAL NOT NULL
    );
    CREATE TABLE announcements (
        job TEXT PRIMARY KEY,
        origin TEXT NOT NULL,
        body TEXT NOT NULL,
        active INTEGER NOT NULL,
        received REAL NOT NULL
    );
    CREATE TABLE nonces (nonce TEXT PRIMARY KEY, expires REAL NOT NULL);
    CREATE INDEX nonces_by_expiry ON nonces(expires);
    ALTER TABLE frames ADD COLUMN lease_expires REAL;
    CREATE INDEX frames_by_lease ON frames(state, lease_expires);
    """,
    # 3: dependencies. One row per <dep>: the frame that waits, the URL it waits for, and what
    # is known of that target: 'waiting', 'done', or 'stuck' (failed, or blocked itself).
    """
    CREATE TABLE deps (
        job_id INTEGER NOT NULL,
        frame_id INTEGER NOT NULL,
        dep TEXT NOT NULL,
        target_state TEXT NOT NULL DEFAULT 'waiting',
        PRIMARY KEY (job_id, frame_id, dep)
    );
    CREATE INDEX deps_by_target ON deps(dep, target_state);
    """,
    # 4: revoking a user. The row stays, so its name is never handed to someone else (its jobs
    # keep naming it as their submitter); a revoked user's token matches nothing.
    """
    ALTER TABLE users ADD COLUMN revoked REAL;
    CREATE INDEX jobs_by_submitter ON jobs(submitter, id);
    """,
]


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


@dataclass(frozen=True)
class Event:
    id: int
    at: float
    job_id: int
    frame_id: int | None
    old: str
    new: str
    reason: str


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    def __init__(self, data_dir: Path):
        self.root = Path(data_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "jobs").mkdir(exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.root / "state.sqlite", check_same_thread=False,
                                   isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a killed process; only a power cut may lose the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._keys: dict[str, str] = {}

    # --- plumbing ------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._tx() as db:
            have = db.execute("PRAGMA user_version").fetchone()[0]
            for n, sql in enumerate(MIGRATIONS[have:], have + 1):
                for stmt in sql.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute(f"PRAGMA user_version = {n}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def tx(self):
        """A write transaction for :mod:`distren.lifecycle` to make its moves in (BEGIN
        IMMEDIATE: it holds the write lock from the start, so what it reads stays true)."""
        return self._tx()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- paths ---------------------------------------------------------------------------

    def job_dir(self, job_id: int) -> Path:
        return self.root / "jobs" / str(job_id)

    def seed_path(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "seed.tar"

    def scene_dir(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "scene"

    def frame_tar(self, job_id: int, frame_id: int) -> Path:
        return self.job_dir(job_id) / "frames" / f"{frame_id}.tar"

    def frame_log(self, job_id: int, frame_id: int) -> Path:
        return self.job_dir(job_id) / "logs" / f"{frame_id}.log"

    def result_path(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "result.tar"

    def staging_dir(self) -> Path:
        d = self.root / "incoming"
        d.mkdir(exist_ok=True)
        return d

    # --- meta and users ------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                       (key, value))

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

    def jobs_per_submitter(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT submitter, COUNT(*) FROM jobs GROUP BY submitter").fetchall()
        return {r[0]: r[1] for r in rows}

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

    # --- jobs ----------------------------------------------------------------------------
    # The functions below that take ``db`` run inside a transaction that
    # :mod:`distren.lifecycle` opened with :meth:`tx`: lifecycle decides which move to make,
    # these only execute it. No other code writes a frame's or a job's state.

    def insert_job(self, db, submitter: str, jtype: str, frame_ids: list[int],
                   make_jobfile: Callable[[int], bytes], staged: Path, upload_key: str | None,
                   reason: str, now: float) -> tuple[int, bool]:
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
            "INSERT INTO jobs(submitter, type, state, reason, jobfile, upload_key, created, updated)"
            " VALUES(?,?,?,?,?,?,?,?)",
            (submitter, jtype, states.QUEUED, "submitted", b"", upload_key, now, now))
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
        for table, col in (("events", "job_id"), ("deps", "job_id"), ("frames", "job_id"), ("jobs", "id")):
            db.execute(f"DELETE FROM {table} WHERE {col}=?", (job_id,))

    def job_state(self, db, job_id: int) -> str:
        row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise no_such_job(job_id)
        return row[0]

    def set_job(self, db, job_id: int, old: str, new: str, reason: str, now: float) -> None:
        db.execute("UPDATE jobs SET state=?, reason=?, updated=? WHERE id=?", (new, reason, now, job_id))
        _event(db, now, job_id, None, old, new, reason)

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
        db.execute(f"UPDATE frames SET state=?, reason=?{sets} WHERE job_id=? AND frame_id=?",
                   (new, reason, *cols.values(), job_id, frame_id))
        _event(db, now, job_id, frame_id, old, new, reason)

    def next_queued(self, db, job_id: int | None) -> tuple[int, int, str] | None:
        """The oldest queued frame of a live job (of ``job_id`` if given; otherwise jobs first in,
        first served) whose dependencies are done: (job, frame, the job's state)."""
        only = "AND j.id=?" if job_id is not None else ""
        args = (states.QUEUED, states.QUEUED, states.RENDERING) + ((job_id,) if job_id is not None else ())
        row = db.execute(
            "SELECT f.job_id, f.frame_id, j.state FROM frames f JOIN jobs j ON j.id=f.job_id"
            f" WHERE f.state=? AND j.state IN (?,?) {only}"
            " AND NOT EXISTS (SELECT 1 FROM deps d WHERE d.job_id=f.job_id AND d.frame_id=f.frame_id"
            " AND d.target_state!='done') ORDER BY f.job_id, f.frame_id LIMIT 1",
            args).fetchone()
        return tuple(row) if row else None

    def frame_counts_in(self, db, job_id: int) -> dict[str, int]:
        return {r[0]: r[1] for r in db.execute(
            "SELECT state, COUNT(*) FROM frames WHERE job_id=? GROUP BY state", (job_id,))}

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

    def record_nonce(self, db, nonce: str, expires: float) -> bool:
        """False if the nonce was seen before (a replay)."""
        return db.execute("INSERT OR IGNORE INTO nonces(nonce, expires) VALUES(?, ?)", (nonce, expires)).rowcount == 1

    # --- dependencies ----------------------------------------------------------------------

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

    # --- reads -----------------------------------------------------------------------------

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

    def events(self, job_id: int, after: int = 0) -> list[Event]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM events WHERE job_id=? AND id>? ORDER BY id",
                                    (job_id, after)).fetchall()
        return [Event(**dict(r)) for r in rows]

    def frames_leased_to(self, server: str) -> list[tuple[int, int]]:
        with self._lock:
            return [(j, f) for j, f, _ in self.rendering_frames(self._db, server=server)]

    def jobs_awaiting_rebundle(self) -> list[int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT j.id FROM jobs j WHERE j.state IN (?,?) AND NOT EXISTS"
                " (SELECT 1 FROM frames f WHERE f.job_id=j.id AND f.state!=?)",
                (states.QUEUED, states.RENDERING, states.DONE)).fetchall()
        return [r[0] for r in rows]

    # --- peers and announcements ---------------------------------------------------------

    def pin_peer(self, name: str, address: str, public_key: str) -> bool:
        """Remember a peer's key on first contact; refuse a different key later. True if new."""
        with self._tx() as db:
            row = db.execute("SELECT public_key FROM peers WHERE name=?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO peers(name, address, public_key, added, last_heard) VALUES(?,?,?,?,?)",
                           (name, address, public_key, time.time(), time.time()))
                return True
            if row[0] != public_key:
                raise Conflict(
                    f"server {name!r} presented a different key than the one pinned on first contact; "
                    "refusing it. If its key really changed, `distren peers remove NAME`, then add it again."
                )
            db.execute("UPDATE peers SET address=?, last_heard=? WHERE name=?", (address, time.time(), name))
            return False

    def remove_peer(self, name: str) -> None:
        """Forget a peer and its pinned key (the next hello pins a new one)."""
        with self._tx() as db:
            if db.execute("DELETE FROM peers WHERE name=?", (name,)).rowcount == 0:
                raise NotFound(f"no peer named {name!r}; `distren servers` lists them")
        self._keys.pop(name, None)

    def peer_key(self, name: str) -> str | None:
        """Asked on every signed request: answered from memory once read (pins change rarely)."""
        key = self._keys.get(name)
        if key is None:
            with self._lock:
                row = self._db.execute("SELECT public_key FROM peers WHERE name=?", (name,)).fetchone()
            if row:
                key = self._keys[name] = row[0]
        return key

    def peers(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM peers ORDER BY name").fetchall()
        return [dict(r, rendering=json.loads(r["rendering"])) for r in rows]

    def peer_heard(self, name: str, slots: int | None = None, rendering: list[str] | None = None) -> None:
        with self._tx() as db:
            if slots is None:
                db.execute("UPDATE peers SET last_heard=? WHERE name=?", (time.time(), name))
            else:
                db.execute("UPDATE peers SET last_heard=?, slots=?, rendering=? WHERE name=?",
                           (time.time(), slots, json.dumps(rendering or []), name))

    def seen_nonce(self, nonce: str, expires: float) -> bool:
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO nonces(nonce, expires) VALUES(?, ?)", (nonce, expires))
            return cur.rowcount == 0

    def purge_nonces(self, now: float) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM nonces WHERE expires<?", (now,))

    def record_announcement(self, job: str, origin: str, body: dict, active: bool) -> bool:
        """Store what we heard of a job. True when it is news (to be relayed)."""
        with self._tx() as db:
            row = db.execute("SELECT active FROM announcements WHERE job=?", (job,)).fetchone()
            if row is not None and (not row[0] or row[0] == int(active)):
                return False  # known already, or withdrawn for good
            db.execute("INSERT INTO announcements(job, origin, body, active, received) VALUES(?,?,?,?,?)"
                       " ON CONFLICT(job) DO UPDATE SET active=excluded.active, body=excluded.body",
                       (job, origin, json.dumps(body, sort_keys=True), int(active), time.time()))
            return True

    def announcements(self, active_only: bool = True) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT body, active FROM announcements" + (" WHERE active=1" if active_only else "")
                + " ORDER BY received").fetchall()
        return [json.loads(r[0]) for r in rows]  # as their origin signed them

    def forget_announcement(self, job: str) -> None:
        """Stop considering a job whose origin says it is gone (the signed record stays)."""
        with self._tx() as db:
            db.execute("UPDATE announcements SET active=0 WHERE job=?", (job,))



def no_such_job(job_id: int) -> NotFound:
    """The one answer for a job that does not exist, and for one the asker may not see: the
    two must not be told apart."""
    return NotFound(f"no job {job_id} on this server; `distren jobs` lists the jobs it has")


def _shown(name: str) -> str:
    """A name from a request, quoted for a message and cut short: it may be megabytes long."""
    return repr(name) if len(name) <= 80 else repr(name[:80]) + f"... ({len(name)} characters)"


def _job_for_upload_key(db, submitter: str, key: str) -> int | None:
    row = db.execute("SELECT id FROM jobs WHERE submitter=? AND upload_key=?", (submitter, key)).fetchone()
    return row[0] if row else None


def _event(db, now: float, job_id: int, frame_id: int | None, old: str, new: str, reason: str) -> None:
    db.execute("INSERT INTO events(at, job_id, frame_id, old, new, reason) VALUES(?,?,?,?,?,?)",
               (now, job_id, frame_id, old, new, reason))


def _job(row: sqlite3.Row) -> JobRow:
    return JobRow(row["id"], row["submitter"], row["type"], row["state"], row["reason"],
                  bytes(row["jobfile"]), row["created"], row["updated"])


def _frame(row: sqlite3.Row) -> FrameRow:
    return FrameRow(row["job_id"], row["frame_id"], row["state"], row["reason"], row["attempts"],
                    row["server"], json.loads(row["files"]), row["started"], row["finished"])
