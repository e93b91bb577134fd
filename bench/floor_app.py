"""The framework floor for benchmark 2: a minimal Flask app that returns canned bytes.

`create_app()` reads BENCH_FLOOR_PAGES, a JSON file {path (with its query string):
{"body": base64, "content_type": ...}} captured from the real service, and answers each path
with exactly those bytes: no look-up, no template, no ETag, no extra headers. Served by the same
gunicorn command as the service, it is what Flask + gunicorn cost on their own.
"""
from __future__ import annotations

import base64
import json
import os

from flask import Flask, Response, request


def create_app() -> Flask:
    with open(os.environ["BENCH_FLOOR_PAGES"], encoding="utf-8") as handle:
        pages = {path: (base64.b64decode(page["body"]), page["content_type"])
                 for path, page in json.load(handle).items()}
    app = Flask(__name__)

    @app.route("/", defaults={"path": ""})
    @app.route("/<path:path>")
    def canned(path):
        body, content_type = pages[request.full_path.rstrip("?")]
        return Response(body, content_type=content_type)

    return app
