"""What a request reads: this app's library, and the one snapshot of the answers it took.

Everything here is per app (`app.extensions`), never per process: two apps in one process (tests,
the static export, an embedding) must not see each other's answers or cached pages. A request
reads the one `Snapshot` it took when it started (`g`), so everything it shows is from one reload.
"""
from __future__ import annotations

from flask import abort, current_app, g

from kb.audit import AuditStore, annotate
from kb.format.answer import SLUG_RE
from kb.library import Library, Snapshot
from kb.store import evidence as ev


def library() -> Library:
    return current_app.extensions["kb"]


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
    store = current_app.extensions.get("kb_audits")
    if store is None:
        store = current_app.extensions["kb_audits"] = AuditStore(library().store.database.path)
    return store


def audited(evidence: ev.Evidence, answer=None) -> ev.Evidence:
    """The evidence with what `kb audit` found per check and per answer (unchanged where the
    answer's current code has not been audited: then the page and the API show nothing)."""
    answer = answer or snapshot().answers.get(evidence["slug"])
    if answer is None:
        return evidence
    return annotate(evidence, answer, audits().get(answer))
