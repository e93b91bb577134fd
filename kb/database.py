"""The embedded SQLite file shared by the evidence cache and the search index.

One connection per thread (and a new one after a fork), WAL mode so readers never wait for a
writer, and write transactions that take the lock up front. Several processes (gunicorn
workers) may open the same new file at once: switching it to WAL is retried, because SQLite
reports that lock at once instead of waiting.
"""
from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT = 30.0  # seconds to wait for another process's write lock


class Database:
    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, waiting up to `BUSY_TIMEOUT` for locks."""
        db = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            _use_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    @contextmanager
    def write(self):
        """One write transaction that takes the write lock up front (waiting for it)."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _use_wal(db: sqlite3.Connection) -> None:
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005 + 0.02 * random.random())
