"""The headers every response gets: the security policy, a host-free `Location`, and ETags with
conditional GET. (deploy/nginx.conf repeats the security headers for the `/static/` files it
serves itself, and the static export puts the CSP in a <meta> tag: `CSP` is the one source.)
"""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from flask import request

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PERMISSIONS_POLICY = ("accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
                      "microphone=(), payment=(), usb=()")
CONDITIONAL = {"HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE"}  # what can turn a 200 into a 304


def init_app(app) -> None:
    app.after_request(headers)


def headers(response):
    """The CSP (unless a response set its own, as figures do), no sniffing, no referrer, no
    framing, no powerful features, no cross-origin embedding of responses; a `Location` that
    never names a host (werkzeug builds its slash-merging redirects from the client's `Host`
    header); an ETag on every full 200 to a GET, and a 304 when the client has it."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Permissions-Policy"] = PERMISSIONS_POLICY
    response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    if response.status_code >= 400:  # an error (or a 429) is about this moment: never kept
        response.headers["Cache-Control"] = "no-store"
    if response.location:
        parts = urlsplit(response.location)
        if parts.scheme or parts.netloc:
            response.location = urlunsplit(("", "", parts.path or "/", parts.query, parts.fragment))
    if request.method in ("GET", "HEAD") and response.status_code == 200 and not response.is_streamed:
        if "ETag" not in response.headers:
            response.add_etag()
        if CONDITIONAL.intersection(request.environ):  # only then is there anything to compare
            response = response.make_conditional(request)
    return response
