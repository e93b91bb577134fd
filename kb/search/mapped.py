"""The semantic stage's vectors as one float16 file beside the database, memory-mapped.

Every gunicorn worker (and `kb` command) over the same answers maps the same file, named by a
digest of what it holds, so the machine keeps one copy of the vectors in its page cache instead
of one private copy per worker; float16 halves that copy (its rounding, ~1e-3 of a unit
vector's components, moves no dev-split figure: docs/search.md). The file is derived: the
database's `embeddings` table stays the source, and a missing, stale or unreadable file is
written again. Files are written to a temporary name and renamed, so a reader never maps half a
file; the newest `KEEP` stay (a worker may still map an older one: unlinking leaves its mapping),
and a temporary file a killed writer left is removed once it is `ABANDONED_S` old.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .embeddings import DIMENSION, MODEL_KEY

log = logging.getLogger(__name__)
DTYPE = np.float16
FORMAT = 1   # bump when what a file holds, or how it is named, changes
KEEP = 3     # files kept per database: the current state's and a few a worker may still map
ABANDONED_S = 600   # a temporary file this old has no writer: a write takes well under a second


class VectorFiles:
    """`<database>.vectors/<digest>.npy`: one [texts x DIMENSION] float16 matrix per state."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.folder = Path(f"{os.fspath(db_path)}.vectors")

    @staticmethod
    def key(digests: Iterable[str]) -> str:
        """The name of the state over answers with these digests (in order) under this model."""
        h = hashlib.sha256(f"{FORMAT}\0{MODEL_KEY}".encode())
        for d in digests:
            h.update(b"\0" + d.encode())
        return h.hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def load(self, key: str, rows: int) -> npt.NDArray[np.float16] | None:
        """The mapped matrix of state `key`, if its file is there and has `rows` rows."""
        try:
            matrix = np.load(self.path(key), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if matrix.dtype != DTYPE or matrix.shape != (rows, DIMENSION):
            log.warning("%s: shape %s %s, expected (%d, %d) float16: written again",
                        self.path(key), matrix.shape, matrix.dtype, rows, DIMENSION)
            return None
        mapped: npt.NDArray[np.float16] = matrix
        return mapped

    def store(self, key: str, parts: list[npt.NDArray[np.floating]]) -> npt.NDArray[np.float16]:
        """The parts stacked as float16, written as state `key`'s file and mapped from it (or held
        in memory where the folder cannot be written: the search works the same)."""
        matrix = (np.concatenate(parts, dtype=DTYPE, casting="same_kind") if parts
                  else np.zeros((0, DIMENSION), DTYPE))
        written: str | None = None
        try:
            self.folder.mkdir(exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".", suffix=".tmp", delete=False) as f:
                written = f.name
                np.save(f, matrix, allow_pickle=False)
            os.replace(written, self.path(key))
        except OSError as exc:
            log.warning("search vectors kept in memory: %s", exc)
            if written:  # a full disk: nothing half-written stays
                Path(written).unlink(missing_ok=True)
            return matrix
        self._prune(key)
        mapped = self.load(key, len(matrix)) if len(matrix) else None
        return matrix if mapped is None else mapped

    def _prune(self, current: str) -> None:
        try:
            files = sorted(self.folder.glob("*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)
            for stale in [p for p in files if p.stem != current][KEEP - 1:]:
                stale.unlink(missing_ok=True)
            for left in self.folder.glob(".*.tmp"):
                if time.time() - left.stat().st_mtime > ABANDONED_S:
                    left.unlink(missing_ok=True)
        except OSError:  # another process pruned first
            pass
