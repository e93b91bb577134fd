"""The embedded SQLite file shared by the evidence cache and the search index.

One connection per thread (and a new one after a fork), WAL mode so readers never wait for a
writer, and write transactions that take the lock up front. Several processes (gunicorn
workers) may open the same new file at once: switching it to WAL is retried, because SQLite
reports that lock at once instead of waiting.

Everything in the file is derived from `answers/`, so a file SQLite cannot read (not a database,
or a damaged one) is moved aside as `<name>.corrupt-<time>` with a warning, and a fresh file
takes its place: the service starts and re-derives its evidence instead of failing.
"""
from __future__ import annotations

import fcntl
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

BUSY_TIMEOUT = 30.0  # seconds to wait for another process's write lock
UNREADABLE = {"SQLITE_NOTADB", "SQLITE_CORRUPT"}

log = logging.getLogger(__name__)


class Database:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._writers = threading.RLock()
        self._writers_pid = os.getpid()
        self._set_aside_if_unreadable()

    def _set_aside_if_unreadable(self) -> None:
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            return
        probe = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT)
        try:
            probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", None) not in UNREADABLE:
                raise
            reason = exc
        finally:
            probe.close()
        try:
            if self.path.stat().st_ino == inode:  # not already replaced by another process
                aside = self.path.with_name(f"{self.path.name}.corrupt-{datetime.now():%Y%m%dT%H%M%S.%f}")
                self.path.rename(aside)
                for suffix in ("-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                log.warning("%s could not be read (%s); moved it to %s and started a fresh one: "
                            "its evidence and index are derived again", self.path, reason, aside.name)
        except FileNotFoundError:
            pass

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
    def exclusive(self, purpose: str = "") -> Iterator[None]:
        """Hold a lock file beside the database: one holder at a time, across processes.

        For work longer than a transaction, such as running the answers that lack evidence or
        embedding the texts that lack vectors: gunicorn workers starting on a fresh file then
        take turns instead of all doing it. Each `purpose` has a lock file of its own.
        """
        with open(f"{self.path}{'.' + purpose if purpose else ''}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that takes the write lock up front (waiting for it).

        Threads of one process take turns on a mutex first: in SQLite's busy handler a waiting
        writer sleeps in growing steps and may lose to later ones, which gave searches recording
        a gap (`kb.store.gaps`) a p99 of hundreds of milliseconds under load."""
        if self._writers_pid != os.getpid():  # a forked worker: the parent's threads are not here
            self._writers, self._writers_pid = threading.RLock(), os.getpid()
        with self._writers:
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
