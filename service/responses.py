"""Responses made once per (answer file, evidence) and kept with their ETags."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from flask import Response

from .context import audits, library, snapshot, state


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
    lib, responses = library(), state().responses
    key = (kind, answer.slug, snapshot().generation, lib.stamp(answer), audits().stamp(answer))
    body, etag = responses.get_or_make(key, lambda: make(lib.evidence(answer)))
    response = Response(body, mimetype=mimetype)
    response.set_etag(etag)
    return response
