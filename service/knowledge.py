"""What both blueprints need from the knowledge base: look-ups, evidence URLs, run slots.

Everything here is per app (one `KbState` under `app.extensions["kb"]`), never per process: two apps in one process (tests,
the static export, an embedding) must not see each other's answers or cached pages. A request
reads the one `Snapshot` it took when it started (`g`), so everything it shows is from one reload.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import Flask, Response, abort, current_app, g, url_for
from werkzeug.exceptions import TooManyRequests

from kb.format.answer import SLUG_RE
from kb.library import Library, Snapshot
from kb.settings import Settings
from kb.store import evidence as ev
from kb.store.gaps import Gaps

if TYPE_CHECKING:
    from .metrics import Metrics

RETRY_AFTER_S = 5


@dataclass(eq=False)
class KbState:
    """Everything one app holds, under the one key `app.extensions["kb"]` (read it with `state()`)."""

    settings: Settings
    library: Library
    gaps: Gaps
    run_key: bytes  # signs the run form's token (guard.py)
    run_slots: threading.BoundedSemaphore  # KB_MAX_RUNS re-runs at once
    metrics: Metrics  # the counters /metrics shows (metrics.py)
    responses: ResponseCache = field(default_factory=lambda: ResponseCache())  # this app's pages only
    run_locks: defaultdict[str, threading.Lock] = field(default_factory=lambda: defaultdict(threading.Lock))
    run_locks_lock: threading.Lock = field(default_factory=threading.Lock)  # guards run_locks

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


def figure_url(slug: str, name: str) -> str:
    return url_for("api.figure", slug=slug, name=name)


def public_evidence(evidence: ev.Evidence) -> dict:
    return ev.public(evidence, figure_url, snapshot().answers.get(evidence["slug"]))


def listing(answer, status: str) -> dict:
    return {"slug": answer.slug, "title": answer.title, "summary": answer.summary, "tags": answer.tags,
            "topic": answer.topic, "status": status, "url": url_for("pages.answer", slug=answer.slug)}


class ResponseCache:
    """Finished response bodies with their ETags, small, LRU and thread-safe."""

    def __init__(self, size: int = 512):
        self.size, self.lock = size, threading.Lock()
        self.items: OrderedDict[object, tuple[bytes, str]] = OrderedDict()

    def get_or_make(self, key, make):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        body = make().encode()
        value = (body, hashlib.blake2b(body, digest_size=16).hexdigest())
        with self.lock:
            self.items[key] = value
            if len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


def answer_response(kind: str, answer, make, mimetype: str) -> Response:
    """A response derived from an answer and its evidence, made once per (answer file, evidence).

    The key is cheap to read (the reload generation and when the evidence ran), so a cached
    page costs one small SQL query and no Markdown, JSON or template work.
    """
    lib, responses = library(), state().responses
    key = (kind, answer.slug, snapshot().generation, lib.stamp(answer))
    body, etag = responses.get_or_make(key, lambda: make(lib.evidence(answer)))
    response = Response(body, mimetype=mimetype)
    response.set_etag(etag)
    return response


@contextmanager
def run_slot():
    """Hold one of the bounded re-run slots, or answer 429 with Retry-After."""
    slots = state().run_slots
    if not slots.acquire(blocking=False):
        state().metrics.run("limited")
        raise TooManyRequests("Too many answers are being re-run right now; try again shortly.",
                              retry_after=RETRY_AFTER_S)
    try:
        yield
    finally:
        slots.release()
