"""Errors: RFC 9457 problem+json for the API, an HTML page for people. Built in one place."""
from __future__ import annotations

from flask import jsonify, render_template, request
from werkzeug.exceptions import HTTPException, SecurityError

PROBLEM_TYPE = "about:blank"


def problem(status: int, detail: str, title: str | None = None, headers: dict | None = None):
    """An `application/problem+json` response."""
    from werkzeug.http import HTTP_STATUS_CODES

    body = {"type": PROBLEM_TYPE, "title": title or HTTP_STATUS_CODES.get(status, "Error"),
            "status": status, "detail": detail}
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    response.headers.update(headers or {})
    return response


def wants_json() -> bool:
    return request.path in ("/api", "/healthz") or request.path.startswith("/api/")


def register_error_handlers(app) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        headers = {k: v for k, v in exc.get_headers() if k != "Content-Type"}  # Allow, Retry-After
        status, detail = exc.code or 500, exc.description or exc.name
        if wants_json() or isinstance(exc, SecurityError):  # an untrusted Host: no URLs to build a page with
            return problem(status, detail, exc.name, headers)
        page = render_template("error.html", status=status, title=exc.name, detail=detail)
        return page, status, headers
