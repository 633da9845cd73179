"""The connection, its one lock, migrations, transactions, the data folder's paths and ``meta``."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import migrations


class Database:
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
        self._keys: dict[str, tuple[str, str, str]] = {}  # peer name -> (pinned key, status, address)

    def _migrate(self) -> None:
        with self._tx() as db:
            have = db.execute("PRAGMA user_version").fetchone()[0]
            for n, sql in enumerate(migrations.MIGRATIONS[have:], have + 1):
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

    # --- paths ---

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

    # --- meta ---

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                       (key, value))
