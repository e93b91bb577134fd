"""What both blueprints need from the knowledge base: look-ups, evidence URLs, run slots.

Everything here is per app (`app.extensions`), never per process: two apps in one process (tests,
the static export, an embedding) must not see each other's answers or cached pages. A request
reads the one `Snapshot` it took when it started (`g`), so everything it shows is from one reload.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from contextlib import contextmanager

from flask import Response, abort, current_app, g, url_for
from werkzeug.exceptions import TooManyRequests

from kb.format.answer import SLUG_RE
from kb.library import Library, Snapshot
from kb.store import evidence as ev

RETRY_AFTER_S = 5


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


def figure_url(slug: str, name: str) -> str:
    return url_for("api.figure", slug=slug, name=name)


def public_evidence(evidence: ev.Evidence) -> dict:
    return ev.public(evidence, figure_url, snapshot().answers.get(evidence["slug"]))


def listing(answer, status: str) -> dict:
    return {"slug": answer.slug, "title": answer.title, "summary": answer.summary, "tags": answer.tags,
            "topic": answer.topic, "status": status, "url": url_for("pages.answer", slug=answer.slug)}


class ResponseCache:
    """Finished response bodies with their ETags, small (in entries and in bytes), LRU and thread-safe."""

    def __init__(self, size: int = 512, max_bytes: int = 64 << 20):
        self.size, self.max_bytes, self.bytes, self.lock = size, max_bytes, 0, threading.Lock()
        self.items: OrderedDict[object, tuple[bytes, str]] = OrderedDict()

    def get_or_make(self, key, make):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        body = make().encode()
        value = (body, hashlib.blake2b(body, digest_size=16).hexdigest())
        with self.lock:
            old = self.items.pop(key, None)
            self.bytes += len(body) - (len(old[0]) if old else 0)
            self.items[key] = value
            while len(self.items) > self.size or (self.bytes > self.max_bytes and len(self.items) > 1):
                self.bytes -= len(self.items.popitem(last=False)[1][0])
        return value


def answer_response(kind: str, answer, make, mimetype: str) -> Response:
    """A response derived from an answer and its evidence, made once per (answer file, evidence).

    The key is cheap to read (the reload generation and when the evidence ran), so a cached
    page costs one small SQL query and no Markdown, JSON or template work.
    """
    lib, responses = library(), current_app.extensions["kb_responses"]
    key = (kind, answer.slug, snapshot().generation, lib.stamp(answer))
    body, etag = responses.get_or_make(key, lambda: make(lib.evidence(answer)))
    response = Response(body, mimetype=mimetype)
    response.set_etag(etag)
    return response


@contextmanager
def run_slot():
    """Hold one of the bounded re-run slots, or answer 429 with Retry-After."""
    slots = current_app.extensions["kb_runs"]
    if not slots.acquire(blocking=False):
        raise TooManyRequests("Too many answers are being re-run right now; try again shortly.",
                              retry_after=RETRY_AFTER_S)
    try:
        yield
    finally:
        slots.release()
