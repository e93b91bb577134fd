"""The Flask service: HTML pages for people and a JSON API for programs, over one Library.

`create_app(config)` follows Flask's app-factory habit. Configuration (keys or environment):
KB_ANSWERS (answers directory), KB_DB (SQLite file), KB_TIMEOUT (seconds per answer run),
KB_MEMORY_MB and KB_OUTPUT_KIB (the runner's other limits),
KB_MAX_RUNS (re-runs at once per process), KB_RUN_MISSING (run uncached answers at start-up),
KB_MODEL_FILE (the embedding model file; it must match the pinned SHA-256, see kb.semantic).
"""
from __future__ import annotations

import os
import threading

from flask import Flask, request

from kb.gaps import Gaps
from kb.library import Library
from kb.runner import DEFAULT_MEMORY_MB, DEFAULT_OUTPUT_KIB, Limits

from .api import api
from .pages import pages
from .problems import register_error_handlers

DEFAULTS = {
    "KB_ANSWERS": "answers",
    "KB_DB": ".kb/kb.sqlite3",
    "KB_TIMEOUT": Limits.timeout,
    "KB_MEMORY_MB": DEFAULT_MEMORY_MB,
    "KB_OUTPUT_KIB": DEFAULT_OUTPUT_KIB,
    "KB_MAX_RUNS": 2,
    "KB_RUN_MISSING": True,
    "KB_STATIC": False,
    "KB_MODEL_FILE": "",  # the embedding model; default: the pinned package's file (kb.semantic)
}

CONDITIONAL = {"HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE"}  # what can turn a 200 into a 304
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__)
    for key, default in DEFAULTS.items():
        value = os.environ.get(key, default)
        app.config[key] = type(default)(value) if not isinstance(default, bool) else str(value).lower() in ("1", "true", "yes")
    app.config.update(config or {})
    app.json.sort_keys = False
    app.json.ensure_ascii = False

    limits = Limits.of(app.config["KB_TIMEOUT"], app.config["KB_MEMORY_MB"], app.config["KB_OUTPUT_KIB"])
    library = Library(app.config["KB_ANSWERS"], app.config["KB_DB"], limits,
                      run_changed=app.config["KB_RUN_MISSING"] and not app.config["KB_STATIC"],
                      model_file=app.config["KB_MODEL_FILE"] or None)
    if app.config["KB_RUN_MISSING"]:
        library.run_missing()
    app.extensions["kb"] = library
    app.extensions["kb_gaps"] = Gaps(app.config["KB_DB"])
    app.extensions["kb_runs"] = threading.BoundedSemaphore(int(app.config["KB_MAX_RUNS"]))

    app.register_blueprint(pages)
    app.register_blueprint(api)
    register_error_handlers(app)

    @app.before_request
    def notice_edited_answers():
        library.refresh()

    @app.after_request
    def harden(response):
        response.headers.setdefault("Content-Security-Policy", CSP)  # figures set their own
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if request.method in ("GET", "HEAD") and response.status_code == 200 and not response.is_streamed:
            if "ETag" not in response.headers:
                response.add_etag()
            if CONDITIONAL.intersection(request.environ):  # only then is there anything to compare
                response = response.make_conditional(request)
        return response

    return app
