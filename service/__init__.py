"""The Flask service: HTML pages for people and a JSON API for programs, over one Library.

`create_app(config)` follows Flask's app-factory habit. Configuration (keys or environment):
KB_ANSWERS (answers directory), KB_DB (SQLite file), KB_TIMEOUT (seconds per answer run),
KB_MEMORY_MB and KB_OUTPUT_KIB (the runner's other limits),
KB_MAX_RUNS (re-runs at once per process), KB_RUN_MISSING (answers without cached evidence at
start-up: `background`, the default, runs them while the service already answers; `wait` runs
them before `create_app` returns; `off` leaves them pending),
KB_RUNS (re-runs on or off), KB_RUN_COOLDOWN (seconds a finished run is returned instead of
re-running), KB_SECRET_KEY (signs the run form's token; see `guard.py`),
KB_MODEL_FILE (the embedding model file; it must match the pinned SHA-256, see kb.search.embeddings),
KB_TRUSTED_HOSTS (the host names the service answers to, Flask's TRUSTED_HOSTS; `*`: any).
"""
from __future__ import annotations

import logging
import os

from flask import Flask, g
from flask.json.provider import DefaultJSONProvider

from kb.library import Library
from kb.run.limits import DEFAULT_MEMORY_MB, DEFAULT_OUTPUT_KIB, Limits
from kb.run.runner import clean_up_on_sigterm
from kb.store.gaps import Gaps

from . import guard, headers, runs
from .api import api
from .pages import pages
from .problems import register_error_handlers
from .responses import ResponseCache

DEFAULTS = {
    "KB_ANSWERS": "answers",
    "KB_DB": ".kb/kb.sqlite3",
    "KB_TIMEOUT": Limits.timeout,
    "KB_MEMORY_MB": DEFAULT_MEMORY_MB,
    "KB_OUTPUT_KIB": DEFAULT_OUTPUT_KIB,
    "KB_MAX_RUNS": 2,
    "KB_RUN_MISSING": "background",
    "KB_STATIC": False,
    "KB_RUNS": True,
    "KB_RUN_COOLDOWN": 10.0,
    "KB_SECRET_KEY": "",
    "KB_MODEL_FILE": "",  # the embedding model; default: the pinned package's file (kb.search.embeddings)
    # Host names requests may name (comma-separated; Flask's TRUSTED_HOSTS; "*": any); any other
    # Host gets 400, so a page on a rebound DNS name cannot drive the service (issue 20).
    "KB_TRUSTED_HOSTS": "localhost, 127.0.0.1",  # (an IPv6 literal never matches: werkzeug 3.1 compares "[")
}

RUN_MISSING = {"background": "background", "true": "background", "1": "background", "yes": "background",
               "wait": "wait", "off": "off", "false": "off", "0": "off", "no": "off"}


def _show_progress() -> None:
    """Start-up progress ("[5/23] passed relu-vs-sigmoid") on stderr, unless logging is set up."""
    logger = logging.getLogger("kb")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("kb: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _setting(text: str | None, default: object) -> object:
    """A setting from the environment, of its default's type (a flag: 1/true/yes)."""
    if text is None:
        return default
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(default, int | float):
        return type(default)(text)
    return text


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__)
    for key, default in DEFAULTS.items():
        app.config[key] = _setting(os.environ.get(key), default)
    app.config.update(config or {})
    app.json = DefaultJSONProvider(app)  # typed: the attributes below are DefaultJSONProvider's
    app.json.sort_keys = False
    app.json.ensure_ascii = False

    limits = Limits.of(app.config["KB_TIMEOUT"], app.config["KB_MEMORY_MB"], app.config["KB_OUTPUT_KIB"])
    run_missing = RUN_MISSING.get(str(app.config["KB_RUN_MISSING"]).lower())
    if run_missing is None:
        raise ValueError(f"KB_RUN_MISSING must be one of {', '.join(RUN_MISSING)}, not {app.config['KB_RUN_MISSING']!r}")
    if not app.config["KB_RUNS"]:
        run_missing = "off"  # a read-only deployment runs nothing, not even answers without evidence
    app.config["KB_RUN_MISSING"] = run_missing  # background | wait | off, whatever spelling was given
    hosts = [h.strip() for h in str(app.config["KB_TRUSTED_HOSTS"]).split(",") if h.strip()]
    app.config["TRUSTED_HOSTS"] = None if "*" in hosts else hosts
    library = Library(app.config["KB_ANSWERS"], app.config["KB_DB"], limits,
                      run_changed=run_missing != "off" and not app.config["KB_STATIC"] and bool(app.config["KB_RUNS"]),
                      model_file=app.config["KB_MODEL_FILE"] or None, embed_in_background=run_missing == "background")
    if run_missing == "background":
        _show_progress()
        library.run_missing_in_background()
    elif run_missing == "wait":
        library.run_missing()
    app.extensions["kb"] = library
    app.extensions["kb_responses"] = ResponseCache()  # this app's pages only
    app.extensions["kb_gaps"] = Gaps(app.config["KB_DB"])

    app.register_blueprint(pages)
    app.register_blueprint(api)
    register_error_handlers(app)
    guard.init_app(app)
    runs.init_app(app)
    headers.init_app(app)
    clean_up_on_sigterm()  # `make run`: a SIGTERM stops the fork server and removes its files

    @app.before_request
    def notice_edited_answers():
        library.refresh()
        g.kb_snapshot = library.snapshot  # what this request reads, whatever reloads meanwhile

    return app
