"""What a request reads: this app's state (`state()`), its library, and the one snapshot of the
answers it took.

Everything here is per app (one `KbState` under `app.extensions["kb"]`), never per process: two apps in one process (tests,
the static export, an embedding) must not see each other's answers or cached pages. A request
reads the one `Snapshot` it took when it started (`g`), so everything it shows is from one reload.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import Flask, abort, current_app, g

from kb.audit import AuditStore, annotate
from kb.format.answer import SLUG_RE
from kb.library import Library, Snapshot
from kb.settings import Settings
from kb.store import evidence as ev
from kb.store.gaps import Gaps

if TYPE_CHECKING:
    from .metrics import Metrics
    from .responses import ResponseCache


@dataclass(eq=False)
class KbState:
    """Everything one app holds, under the one key `app.extensions["kb"]` (read it with `state()`)."""

    settings: Settings
    library: Library
    gaps: Gaps
    run_key: bytes  # signs the run form's token (guard.py)
    run_slots: threading.BoundedSemaphore  # KB_MAX_RUNS re-runs at once (runs.py)
    metrics: Metrics  # the counters /metrics shows (metrics.py)
    responses: ResponseCache  # this app's pages only (responses.py)
    run_locks_lock: threading.Lock = field(default_factory=threading.Lock)  # guards the library's count of waiters
    audit_store: AuditStore | None = None  # `kb audit`'s results, opened on first use (audits())

    def close(self) -> None:
        self.library.close()


def state(app: Flask | None = None) -> KbState:
    """The app's state (the current app's by default)."""
    return (app or current_app).extensions["kb"]


def settings() -> Settings:
    return state().settings


def library() -> Library:
    return state().library


def snapshot() -> Snapshot:
    """The answers this request reads, taken once per request (after the reload check)."""
    if "kb_snapshot" not in g:
        g.kb_snapshot = library().snapshot
    return g.kb_snapshot


def answer_or_404(slug: str):
    """The answer for a slug; anything outside [a-z0-9-] is a 404 without touching the disk."""
    answer = snapshot().answers.get(slug) if SLUG_RE.fullmatch(slug) else None
    if answer is None:
        abort(404, f"There is no answer named '{slug}'.")
    return answer


def audits() -> AuditStore:
    """This app's `kb audit` results (the `audit` table of its database)."""
    kb = state()
    if kb.audit_store is None:
        kb.audit_store = AuditStore(kb.library.store.database.path)
    return kb.audit_store


def audited(evidence: ev.Evidence, answer=None) -> ev.Evidence:
    """The evidence with what `kb audit` found per check and per answer (unchanged where the
    answer's current code has not been audited: then the page and the API show nothing)."""
    answer = answer or snapshot().answers.get(evidence["slug"])
    if answer is None:
        return evidence
    return annotate(evidence, answer, audits().get(answer))
