"""Links to the static files that name their content: `asset("style.css")` is
`/static/style.css?v=<hash>`, so a browser may keep the file for good (`immutable`) and a new
file is a new link. Without `v` a static file is revalidated on every use (`no-cache`), as
before; deploy/nginx.conf gives the files it serves itself the same two rules."""
from __future__ import annotations

import functools
import hashlib
import os

from flask import current_app, request, url_for

from kb.render.markdown import pygments_css

IMMUTABLE = "public, max-age=31536000, immutable"
VERSIONED = {"static", "pages.pygments_stylesheet"}  # the endpoints whose links carry `v`


def init_app(app) -> None:
    app.jinja_env.globals.update(asset=asset, pygments_url=pygments_url)
    app.after_request(cache_versioned)


def asset(filename: str) -> str:
    return url_for("static", filename=filename, v=_digest(os.path.join(current_app.static_folder or "", filename)))


def pygments_url() -> str:
    return url_for("pages.pygments_stylesheet", v=_css_digest())


def cache_versioned(response):
    """A versioned link's file is kept for a year; any `v` will do (nginx cannot check it either,
    and an old page's link then gets today's file, as it would without `v`)."""
    if request.endpoint in VERSIONED and request.args.get("v") and response.status_code in (200, 304):
        response.headers["Cache-Control"] = IMMUTABLE
    return response


@functools.lru_cache(maxsize=64)  # the package's static files do not change while it runs
def _digest(path: str) -> str:
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()[:12]


@functools.lru_cache(maxsize=1)  # of a text made once (`pygments_css` is cached too)
def _css_digest() -> str:
    return hashlib.sha256(pygments_css().encode()).hexdigest()[:12]
