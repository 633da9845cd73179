"""Persistence: one SQLite database (WAL) plus files under the server's data folder.

All SQL lives here. Schema changes are numbered migrations, applied in order at start and
recorded in ``PRAGMA user_version``. State changes go through the state machine in
:mod:`distren.states` and each one is written, with its reason, to the ``events`` table in the
same transaction, so the record and the state can never disagree - not even after SIGKILL.

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
from .errors import Conflict, NotFound, Replayed

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
        #: bumped on every state change; waiters (long polls, the dashboard) watch it.
        self.changed = threading.Condition()
        self.version = 0
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

    def _notify(self) -> None:
        with self.changed:
            self.version += 1
            self.changed.notify_all()

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

    def create_job(self, submitter: str, jtype: str, frame_ids: list[int],
                   make_jobfile: Callable[[int], bytes], staged: Path, upload_key: str | None,
                   make_deps: Callable[[int], list[tuple[int, str]]] = lambda job_id: []) -> int:
        """Insert a job and move its staged folder to ``jobs/ID`` in one transaction.

        If the process dies before COMMIT the id was never handed out (and is reused for the
        next job, so a leftover folder of that id is stale and replaced)."""
        with self._tx() as db:
            now = time.time()
            if upload_key is not None:
                # The same upload again (a client retrying one still in flight): the same job.
                existing = _job_for_upload_key(db, submitter, upload_key)
                if existing is not None:
                    return existing
            cur = db.execute(
                "INSERT INTO jobs(submitter, type, state, reason, jobfile, upload_key, created, updated)"
                " VALUES(?,?,?,?,?,?,?,?)",
                (submitter, jtype, states.QUEUED, "submitted", b"", upload_key, now, now))
            job_id = cur.lastrowid
            db.execute("UPDATE jobs SET jobfile=? WHERE id=?", (make_jobfile(job_id), job_id))
            db.executemany("INSERT INTO frames(job_id, frame_id, state, reason) VALUES(?,?,?,?)",
                           [(job_id, f, states.QUEUED, "submitted") for f in frame_ids])
            db.execute("INSERT INTO events(at, job_id, frame_id, old, new, reason) VALUES(?,?,?,?,?,?)",
                       (now, job_id, None, "", states.QUEUED, f"submitted by {submitter}"))
            self._insert_deps(db, job_id, make_deps(job_id))
            dest = self.job_dir(job_id)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(staged, dest)
        self._notify()
        return job_id

    # --- dependencies ----------------------------------------------------------------------

    def frame_url(self, job_id: int, frame_id: int) -> str:
        return f"distren://{self.get_meta('name')}/job/{job_id}/frame/{frame_id}"

    def _local_target(self, dep: str) -> tuple[int, int] | None:
        prefix = f"distren://{self.get_meta('name')}/job/"
        if not dep.startswith(prefix):
            return None
        job, _, frame = dep[len(prefix):].partition("/frame/")
        return int(job), int(frame)

    def _insert_deps(self, db, job_id: int, deps: list[tuple[int, str]]) -> None:
        db.executemany("INSERT OR IGNORE INTO deps(job_id, frame_id, dep) VALUES(?,?,?)",
                       [(job_id, f, d) for f, d in deps])
        # Targets on this server may be finished (or stuck) already.
        for _, dep in deps:
            target = self._local_target(dep)
            if target is None or target[0] == job_id:
                continue
            row = db.execute("SELECT f.state, j.state FROM frames f JOIN jobs j ON j.id=f.job_id"
                             " WHERE f.job_id=? AND f.frame_id=?", target).fetchone()
            if row is None:
                continue
            if row[0] == states.DONE:
                self._dep_target_is(db, dep, "done", "")
            elif row[0] in (states.FAILED, states.BLOCKED) or row[1] == states.CANCELLED:
                self._dep_target_is(db, dep, "stuck", f"{dep} is {row[0] if row[1] != states.CANCELLED else 'cancelled'}")

    def _dep_target_is(self, db, dep: str, target_state: str, reason: str) -> None:
        """Record what became of ``dep`` and carry it through to the frames waiting for it:
        a stuck target blocks them (and, in turn, their own dependents); a target that is no
        longer stuck releases them when nothing else holds them."""
        todo = [(dep, target_state, reason)]
        touched_jobs: set[int] = set()
        while todo:
            url, tstate, why = todo.pop()
            db.execute("UPDATE deps SET target_state=? WHERE dep=?", (tstate, url))
            waiting = db.execute("SELECT d.job_id, d.frame_id, f.state FROM deps d JOIN frames f"
                                 " ON f.job_id=d.job_id AND f.frame_id=d.frame_id WHERE d.dep=?", (url,)).fetchall()
            for job_id, frame_id, fstate in waiting:
                if tstate == "stuck" and fstate == states.QUEUED:
                    self._frame_to(db, job_id, frame_id, states.BLOCKED, f"blocked: {why}")
                    todo.append((self.frame_url(job_id, frame_id), "stuck", f"{self.frame_url(job_id, frame_id)} is blocked"))
                    touched_jobs.add(job_id)
                elif tstate != "stuck" and fstate == states.BLOCKED:
                    still = db.execute("SELECT 1 FROM deps WHERE job_id=? AND frame_id=? AND target_state='stuck'",
                                       (job_id, frame_id)).fetchone()
                    if still is None:
                        self._frame_to(db, job_id, frame_id, states.QUEUED, f"unblocked: {url} {why or tstate}")
                        todo.append((self.frame_url(job_id, frame_id), "waiting", ""))
                        touched_jobs.add(job_id)
        for job_id in touched_jobs:
            self._follow_frames(db, job_id, "dependencies changed")

    def set_remote_dep(self, dep: str, target_state: str, reason: str) -> None:
        with self._tx() as db:
            self._dep_target_is(db, dep, target_state, reason)
        self._notify()

    def remote_deps_pending(self) -> list[str]:
        """Dependencies on other servers' frames that are not known to be done."""
        prefix = f"distren://{self.get_meta('name')}/"
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT d.dep FROM deps d JOIN jobs j ON j.id=d.job_id"
                " WHERE d.target_state!='done' AND j.state NOT IN (?,?)",
                (states.DONE, states.CANCELLED)).fetchall()
        return [r[0] for r in rows if not r[0].startswith(prefix)]

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
            row = self._db.execute("SELECT * FROM frames WHERE job_id=? AND frame_id=?",
                                   (job_id, frame_id)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} has no frame {frame_id}")
        return _frame(row)

    def frame_counts(self, job_id: int) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM frames WHERE job_id=? GROUP BY state",
                                    (job_id,)).fetchall()
        return {r[0]: r[1] for r in rows}

    def events(self, job_id: int, after: int = 0) -> list[Event]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM events WHERE job_id=? AND id>? ORDER BY id",
                                    (job_id, after)).fetchall()
        return [Event(**dict(r)) for r in rows]

    # --- the state machine ---------------------------------------------------------------

    def _frame_to(self, db, job_id: int, frame_id: int, new: str, reason: str,
                  only_from: str | None = None, **cols) -> None:
        """Move a frame to ``new`` (``only_from``: and only from that state, where the move
        means something narrower than the table allows, e.g. a retry is only of a failed frame)."""
        row = db.execute("SELECT state FROM frames WHERE job_id=? AND frame_id=?", (job_id, frame_id)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} has no frame {frame_id}")
        if only_from is not None and row[0] != only_from:
            raise Conflict(f"frame {frame_id} of job {job_id} is {row[0]}, not {only_from}")
        states.check_frame(row[0], new, f"frame {frame_id} of job {job_id}")
        sets = ", ".join(f"{k}=?" for k in cols)
        db.execute(f"UPDATE frames SET state=?, reason=?{', ' + sets if sets else ''} WHERE job_id=? AND frame_id=?",
                   (new, reason, *cols.values(), job_id, frame_id))
        db.execute("INSERT INTO events(at, job_id, frame_id, old, new, reason) VALUES(?,?,?,?,?,?)",
                   (time.time(), job_id, frame_id, row[0], new, reason))

    def _job_state(self, db, job_id: int) -> str:
        row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id} on this server; `distren jobs` lists the jobs it has")
        return row[0]

    def _job_to(self, db, job_id: int, new: str, reason: str) -> None:
        old = self._job_state(db, job_id)
        if old == new:
            return
        states.check_job(old, new, f"job {job_id}")
        db.execute("UPDATE jobs SET state=?, reason=?, updated=? WHERE id=?", (new, reason, time.time(), job_id))
        db.execute("INSERT INTO events(at, job_id, frame_id, old, new, reason) VALUES(?,?,?,?,?,?)",
                   (time.time(), job_id, None, old, new, reason))

    def _follow_frames(self, db, job_id: int, reason: str) -> str:
        """Move a job to the state its frames imply (never out of cancelled; never to done:
        done waits for the rebundled result, see :meth:`mark_job_done`)."""
        state = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
        if state in (states.CANCELLED, states.DONE):
            return state
        counts = {r[0]: r[1] for r in db.execute(
            "SELECT state, COUNT(*) FROM frames WHERE job_id=? GROUP BY state", (job_id,))}
        new = states.job_state_for(counts)
        if new == states.DONE:
            new = states.RENDERING
        if new != state:
            self._job_to(db, job_id, new, reason)
        return new

    def claim_frame(self, server: str, job_id: int | None = None, lease_expires: float | None = None,
                    nonce: tuple[str, float] | None = None) -> tuple[int, int] | None:
        """Take the oldest queued frame of a live job (of ``job_id`` if given; otherwise jobs
        first in, first served). A frame for another server is leased until ``lease_expires``;
        ``nonce`` (the lease request's, with its expiry) is recorded in the same transaction."""
        with self._tx() as db:
            if nonce is not None and db.execute("INSERT OR IGNORE INTO nonces(nonce, expires) VALUES(?, ?)",
                                                nonce).rowcount == 0:
                raise Replayed("replayed request (nonce already used)")
            only = "AND j.id=?" if job_id is not None else ""
            args = (states.QUEUED, states.QUEUED, states.RENDERING) + ((job_id,) if job_id is not None else ())
            row = db.execute(
                "SELECT f.job_id, f.frame_id, j.state FROM frames f JOIN jobs j ON j.id=f.job_id"
                f" WHERE f.state=? AND j.state IN (?,?) {only}"
                " AND NOT EXISTS (SELECT 1 FROM deps d WHERE d.job_id=f.job_id AND d.frame_id=f.frame_id"
                " AND d.target_state!='done') ORDER BY f.job_id, f.frame_id LIMIT 1",
                args).fetchone()
            if row is None:
                return None
            job_id, frame_id, job_state = row
            # The hot path of every lease: one UPDATE, one event, and the job's state only when
            # it changes (a queued job starts rendering), not a recount of all its frames.
            states.check_frame(states.QUEUED, states.RENDERING)
            now = time.time()
            reason = f"rendering on {server}"
            db.execute("UPDATE frames SET state=?, reason=?, server=?, started=?, attempts=attempts+1,"
                       " lease_expires=? WHERE job_id=? AND frame_id=?",
                       (states.RENDERING, reason, server, now, lease_expires, job_id, frame_id))
            db.execute("INSERT INTO events(at, job_id, frame_id, old, new, reason) VALUES(?,?,?,?,?,?)",
                       (now, job_id, frame_id, states.QUEUED, states.RENDERING, reason))
            if job_state == states.QUEUED:
                self._job_to(db, job_id, states.RENDERING, f"frame {frame_id} started {reason}")
        self._notify()
        return job_id, frame_id

    def finish_frame(self, job_id: int, frame_id: int, server: str, files: list[dict]) -> bool:
        """Record a rendered frame. Returns True when it was the job's last frame."""
        with self._tx() as db:
            self._frame_to(db, job_id, frame_id, states.DONE, f"rendered by {server}", server=server,
                           files=json.dumps(files, sort_keys=True), finished=time.time(), lease_expires=None)
            self._dep_target_is(db, self.frame_url(job_id, frame_id), "done", "done")
            self._follow_frames(db, job_id, f"frame {frame_id} done")
            left = db.execute("SELECT COUNT(*) FROM frames WHERE job_id=? AND state!=?",
                              (job_id, states.DONE)).fetchone()[0]
        self._notify()
        return left == 0

    def requeue_frame(self, job_id: int, frame_id: int, reason: str) -> None:
        with self._tx() as db:
            self._frame_to(db, job_id, frame_id, states.QUEUED, reason, only_from=states.RENDERING,
                           server=None, lease_expires=None)
            self._follow_frames(db, job_id, f"frame {frame_id}: {reason}")
        self._notify()

    def fail_frame(self, job_id: int, frame_id: int, reason: str) -> None:
        with self._tx() as db:
            self._frame_to(db, job_id, frame_id, states.FAILED, reason, finished=time.time())
            url = self.frame_url(job_id, frame_id)
            self._dep_target_is(db, url, "stuck", f"{url} failed: {reason}")
            self._follow_frames(db, job_id, f"frame {frame_id} failed: {reason}")
        self._notify()

    def retry_frame(self, job_id: int, frame_id: int, by: str) -> None:
        with self._tx() as db:
            if self._job_state(db, job_id) == states.CANCELLED:
                raise Conflict(f"job {job_id} is cancelled; submit it again instead")
            stuck = [r[0] for r in db.execute("SELECT dep FROM deps WHERE job_id=? AND frame_id=? AND target_state='stuck'",
                                              (job_id, frame_id))]
            if stuck:
                raise Conflict(f"frame {frame_id} of job {job_id} is blocked by {', '.join(stuck)}; retry that instead")
            self._frame_to(db, job_id, frame_id, states.QUEUED, f"retried by {by}", only_from=states.FAILED,
                           attempts=0, server=None)
            self._dep_target_is(db, self.frame_url(job_id, frame_id), "waiting", f"retried by {by}")
            self._follow_frames(db, job_id, f"frame {frame_id} retried by {by}")
        self._notify()

    def mark_job_done(self, job_id: int) -> None:
        with self._tx() as db:
            self._job_to(db, job_id, states.DONE, "all frames rendered and rebundled")
        self._notify()

    def cancel_job(self, job_id: int, by: str) -> None:
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id} on this server")
            if row[0] in (states.DONE, states.CANCELLED):
                raise Conflict(f"job {job_id} is already {row[0]}; nothing to cancel")
            self._job_to(db, job_id, states.CANCELLED, f"cancelled by {by}")
            for (frame_id,) in db.execute("SELECT frame_id FROM frames WHERE job_id=? AND state!=?",
                                          (job_id, states.DONE)).fetchall():
                url = self.frame_url(job_id, frame_id)
                self._dep_target_is(db, url, "stuck", f"{url}: its job was cancelled")
        self._notify()

    def renew_lease(self, job_id: int, frame_id: int, server: str, expires: float) -> None:
        with self._tx() as db:
            cur = db.execute("UPDATE frames SET lease_expires=? WHERE job_id=? AND frame_id=? AND state=? AND server=?",
                             (expires, job_id, frame_id, states.RENDERING, server))
            if cur.rowcount == 0:
                raise Conflict(f"frame {frame_id} of job {job_id} is not leased to {server}")

    def expire_leases(self, now: float) -> list[tuple[int, int, str]]:
        """Leases that ran out: the frame is ready again for any server."""
        with self._tx() as db:
            rows = db.execute("SELECT job_id, frame_id, server FROM frames WHERE state=? AND lease_expires<?",
                              (states.RENDERING, now)).fetchall()
            for job_id, frame_id, server in rows:
                self._frame_to(db, job_id, frame_id, states.QUEUED,
                               f"the lease of {server} ran out before it delivered the frame",
                               server=None, lease_expires=None)
                self._follow_frames(db, job_id, f"frame {frame_id} lease ran out")
        if rows:
            self._notify()
        return [tuple(r) for r in rows]

    def extend_leases(self, until: float) -> None:
        """After this server was down, renderers could not renew: give them time to."""
        with self._tx() as db:
            db.execute("UPDATE frames SET lease_expires=MAX(lease_expires, ?) WHERE state=? AND lease_expires IS NOT NULL",
                       (until, states.RENDERING))

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

    def frames_leased_to(self, server: str) -> list[tuple[int, int]]:
        with self._lock:
            rows = self._db.execute("SELECT job_id, frame_id FROM frames WHERE state=? AND server=?",
                                    (states.RENDERING, server)).fetchall()
        return [tuple(r) for r in rows]

    def delete_job(self, job_id: int) -> None:
        """Forget a finished job. Its id stays used: AUTOINCREMENT never hands it out again."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id} on this server")
            if row[0] not in states.FINAL_JOB_STATES:
                raise Conflict(f"job {job_id} is {row[0]}; cancel it before deleting it")
            for table, col in (("events", "job_id"), ("deps", "job_id"), ("frames", "job_id"), ("jobs", "id")):
                db.execute(f"DELETE FROM {table} WHERE {col}=?", (job_id,))
        self._notify()

    def recover(self, server: str) -> list[tuple[int, int]]:
        """At start: frames this server was rendering when it died go back to the queue."""
        with self._tx() as db:
            rows = db.execute("SELECT job_id, frame_id FROM frames WHERE state=? AND server=?",
                              (states.RENDERING, server)).fetchall()
            for job_id, frame_id in rows:
                self._frame_to(db, job_id, frame_id, states.QUEUED,
                               f"{server} restarted while rendering this frame", server=None, lease_expires=None)
                self._follow_frames(db, job_id, f"frame {frame_id} requeued after restart")
        self._notify()
        return [tuple(r) for r in rows]

    def jobs_awaiting_rebundle(self) -> list[int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT j.id FROM jobs j WHERE j.state IN (?,?) AND NOT EXISTS"
                " (SELECT 1 FROM frames f WHERE f.job_id=j.id AND f.state!=?)",
                (states.QUEUED, states.RENDERING, states.DONE)).fetchall()
        return [r[0] for r in rows]

    def wait_for_change(self, version: int, timeout: float) -> int:
        with self.changed:
            self.changed.wait_for(lambda: self.version != version, timeout=timeout)
            return self.version



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


def _job(row: sqlite3.Row) -> JobRow:
    return JobRow(row["id"], row["submitter"], row["type"], row["state"], row["reason"],
                  bytes(row["jobfile"]), row["created"], row["updated"])


def _frame(row: sqlite3.Row) -> FrameRow:
    return FrameRow(row["job_id"], row["frame_id"], row["state"], row["reason"], row["attempts"],
                    row["server"], json.loads(row["files"]), row["started"], row["finished"])
