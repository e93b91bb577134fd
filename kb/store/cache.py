"""The evidence cache: one embedded SQLite file, derived from `answers/` and safe to delete.

Evidence is stored under the answer's cache key (see `kb.store.evidence.cache_key`); figures are kept
in their own table so that reading evidence never drags SVG bytes along. Connections are opened
per thread, so the store can be shared by a threaded server.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable
from typing import Any

from kb.format.answer import Answer

from . import evidence as ev
from .database import Database

log = logging.getLogger(__name__)
ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # how json.dumps writes a lone surrogate
SCHEMA_VERSION = 2  # PRAGMA user_version; an older file's tables are dropped and re-derived
SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence (
    slug TEXT PRIMARY KEY, key TEXT NOT NULL, stored_ns INTEGER NOT NULL, record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS figures (
    slug TEXT NOT NULL, name TEXT NOT NULL, svg TEXT NOT NULL, PRIMARY KEY (slug, name)
);
"""


class Store:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.database = Database(path)
        self.connection = self.database.connection
        with self.database.write() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                db.execute("DROP TABLE IF EXISTS evidence")
                db.execute("DROP TABLE IF EXISTS figures")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
        self.healed: list[str] = []  # slugs whose unreadable record was dropped (to be derived again)

    def get(self, answer: Answer) -> ev.Evidence | None:
        """Cached evidence for the answer's current code, with lines moved to the current file.

        A record that does not decode (corruption inside the file, which SQLite's own checks do
        not see) is dropped: the answer is pending again and runs anew, like a missing one."""
        row = self.connection().execute(
            "SELECT record FROM evidence WHERE slug = ? AND key = ?",
            (answer.slug, ev.cache_key(answer))).fetchone()
        if not row:
            return None
        evidence = self._decode(answer.slug, row[0])
        return None if evidence is None else ev.rebase(evidence, answer)

    def _decode(self, slug: str, text: Any) -> ev.Evidence | None:
        try:
            evidence = json.loads(text)
            if not (isinstance(evidence, dict) and isinstance(evidence.get("status"), str)
                    and isinstance(evidence.get("snippets"), list)):
                raise ValueError("not an evidence record")
            if isinstance(text, str) and ESCAPED_SURROGATE.search(text):  # stored before text was cleaned
                evidence["snippets"] = [ev.bounded(s) for s in evidence["snippets"]]
            record: ev.Evidence = evidence  # type: ignore[assignment]  # the shape checked above
            return record
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.drop(slug, f"{type(exc).__name__}: {exc}")
            return None

    def drop(self, slug: str, reason: str) -> None:
        """Remove a slug's unreadable evidence (and figures): it is derived again."""
        log.warning("the stored evidence of %s could not be read (%s); dropped, it runs again", slug, reason[:200])
        with self.database.write() as db:
            db.execute("DELETE FROM evidence WHERE slug = ?", (slug,))
            db.execute("DELETE FROM figures WHERE slug = ?", (slug,))
        self.healed.append(slug)
        del self.healed[:-100]

    def unreadable(self) -> list[str]:
        """Slugs whose stored record is not valid JSON (one scan of the table)."""
        return [slug for (slug,) in self.connection().execute(
            "SELECT slug FROM evidence WHERE NOT json_valid(record)")]

    def stamp(self, answer: Answer) -> int | None:
        """What identifies the answer's current evidence (when it was stored), without reading it."""
        row = self.connection().execute(
            "SELECT stored_ns FROM evidence WHERE slug = ? AND key = ?", (answer.slug, ev.cache_key(answer))).fetchone()
        return row[0] if row else None

    def statuses(self, answers: Iterable[Answer]) -> dict[str, str]:
        """Each answer's evidence status in one query ('pending' where its code has none)."""
        rows = self.connection().execute(
            "SELECT slug, key, CASE WHEN json_valid(record) THEN json_extract(record, '$.status') END FROM evidence")
        stored = {slug: (key, status if isinstance(status, str) else "pending") for slug, key, status in rows}
        return {a.slug: stored[a.slug][1] if stored.get(a.slug, (None,))[0] == ev.cache_key(a) else "pending"
                for a in answers}

    def ran_at(self, answers: Iterable[Answer]) -> dict[str, str | None]:
        """When each answer's current evidence ran (ISO 8601 UTC; None where it has none), in one query."""
        rows = self.connection().execute("SELECT slug, key, json_extract(record, '$.ran_at') FROM evidence")
        stored = {slug: (key, ran) for slug, key, ran in rows}
        return {a.slug: stored[a.slug][1] if stored.get(a.slug, (None,))[0] == ev.cache_key(a) else None
                for a in answers}

    def latest(self, slug: str) -> ev.Evidence | None:
        """The last evidence stored for a slug, whatever code it ran."""
        row = self.connection().execute("SELECT record FROM evidence WHERE slug = ?", (slug,)).fetchone()
        return self._decode(slug, row[0]) if row else None

    def put(self, evidence: ev.Evidence) -> None:
        """Replace the slug's evidence and figures in one transaction (figures in their own table;
        the evidence given is left as it was)."""
        slug = evidence["slug"]
        figures = [(slug, f["name"], f["svg"]) for s in evidence["snippets"] for f in s["figures"] if "svg" in f]
        stored = {**evidence, "snippets": [
            {**s, "figures": [{"name": f["name"], "alt": f["alt"]} for f in s["figures"]]} for s in evidence["snippets"]]}
        with self.database.write() as db:
            db.execute("DELETE FROM figures WHERE slug = ?", (slug,))
            db.executemany("INSERT INTO figures VALUES (?, ?, ?)", figures)
            db.execute("INSERT OR REPLACE INTO evidence VALUES (?, ?, ?, ?)",
                       (slug, evidence["key"], time.time_ns(), json.dumps(stored)))

    def figure(self, slug: str, name: str) -> str | None:
        row = self.connection().execute(
            "SELECT svg FROM figures WHERE slug = ? AND name = ?", (slug, name)).fetchone()
        return row[0] if row else None
