"""The Flask service: HTML pages for people and a JSON API for programs, over one Library.

`create_app(config)` follows Flask's app-factory habit. Its settings (`KB_ANSWERS`, `KB_DB`,
`KB_RUNS`, `KB_TRUSTED_HOSTS`, ...: every key, its default and its meaning are in docs/settings.md)
come from the environment, then from the `config` dict, both read by the parsers of `kb.settings`;
the parsed `Settings` are the app's, in its one state object (`service.context.state(app)`).
"""
from __future__ import annotations

import logging
import os
import threading

from flask import Flask, g
from flask.json.provider import DefaultJSONProvider

from kb.library import Library
from kb.run.runner import clean_up_on_sigterm
from kb.settings import Settings
from kb.store.gaps import Gaps

from . import assets, guard, headers, metrics
from .api import api
from .context import KbState
from .logs import JsonFormatter
from .pages import pages
from .problems import register_error_handlers
from .responses import ResponseCache


def _set_up_logging(log_format: str, progress: bool) -> None:
    """The `kb` logger's records on stderr: start-up progress ("[5/23] passed relu-vs-sigmoid") as
    text unless logging is set up already; with KB_LOG_FORMAT=json, always as JSON lines, and
    Flask's (the app logger `service`: unhandled exceptions) too."""
    logger = logging.getLogger("kb")
    if log_format == "json":
        for json_logger in (logger, logging.getLogger(__name__)):  # the library's, and Flask's errors
            if not any(isinstance(h.formatter, JsonFormatter) for h in json_logger.handlers):
                handler = logging.StreamHandler()
                handler.setFormatter(JsonFormatter())
                json_logger.addHandler(handler)
                json_logger.propagate = False  # once, as JSON: not again through a text root handler
            json_logger.setLevel(logging.INFO)
    elif progress and not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("kb: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def create_app(config: dict | None = None) -> Flask:
    """The service over the settings of the environment, overridden by `config`'s (raises
    `kb.settings.SettingError`, naming the key, for a value that does not parse)."""
    settings = Settings.load(os.environ, config or {})
    app = Flask(__name__)
    app.config.update(config or {})  # Flask's own keys (TESTING, ...)
    app.config.update(settings.as_config())  # KB_* parsed: templates read config.KB_STATIC
    app.config["TRUSTED_HOSTS"] = settings.flask_trusted_hosts  # any other Host: 400 (issue 20)
    app.json = DefaultJSONProvider(app)  # typed: the attributes below are DefaultJSONProvider's
    app.json.sort_keys = False
    app.json.ensure_ascii = False

    run_missing = settings.run_missing
    library = Library(settings.answers, settings.db, settings.limits,
                      run_changed=run_missing != "off" and not settings.static,
                      model_file=settings.model_file or None, embed_in_background=run_missing == "background",
                      semantic=not settings.static)  # the export's search is lexical: no model
    _set_up_logging(settings.log_format, progress=run_missing == "background")
    if run_missing == "background":
        library.run_missing_in_background()
    elif run_missing == "wait":
        library.run_missing()
    app.extensions["kb"] = KbState(settings=settings, library=library, gaps=Gaps(settings.db),
                                   run_key=guard.run_key(settings.secret_key, settings.db),
                                   run_slots=threading.BoundedSemaphore(settings.max_runs),
                                   metrics=metrics.init_app(app), responses=ResponseCache())

    app.register_blueprint(pages)
    app.register_blueprint(api)
    register_error_handlers(app)
    guard.init_app(app)
    assets.init_app(app)
    headers.init_app(app)
    clean_up_on_sigterm()  # `make run`: a SIGTERM stops the fork server and removes its files

    @app.before_request
    def notice_edited_answers():
        library.refresh()
        g.kb_snapshot = library.snapshot  # what this request reads, whatever reloads meanwhile

    return app
