"""Who may start a run, how often, and the response headers every request gets.

Runs execute code and replace the published evidence, so the run endpoints refuse what a
browser sends on another site's behalf: a request its browser marks `Sec-Fetch-Site` other than
`same-origin`, else one whose `Origin` is another host; a form from a browser that sends
neither carries a token only this service can sign. The API run also requires
`Content-Type: application/json`, which no cross-site form or simple request can send. Runs of
one answer are serialised, and one that finished less than `KB_RUN_COOLDOWN` seconds ago is
returned instead of running again. `KB_RUNS=off` turns runs off (403).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from flask import abort, request

from kb.format.answer import Answer
from kb.store import evidence as ev

from .knowledge import library, run_slot, settings, state

PERMISSIONS_POLICY = ("accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
                      "microphone=(), payment=(), usb=()")


def site_key(db_path: str) -> bytes:
    """The key that signs run tokens when KB_SECRET_KEY is unset: random, kept beside the database
    (`<KB_DB>.key`, mode 0600), so that every worker of one machine signs alike (a form rendered by
    one is accepted by another, and their pages and ETags agree) and a restart keeps forms valid."""
    path = Path(f"{db_path}.key")
    if not path.exists():
        Path(path.parent).mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(32))
        finally:
            os.close(fd)
        try:
            os.link(draft, path)  # atomic: the first worker's key wins, the others read it
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_bytes()


def run_key(secret: str, db_path: str) -> bytes:
    """KB_SECRET_KEY, or the machine's key file beside the database."""
    return secret.encode() if secret else site_key(db_path)


def init_app(app) -> None:
    app.jinja_env.globals["run_token"] = run_token
    app.after_request(secure_headers)


def secure_headers(response):
    """Headers beside the CSP: no powerful features, no cross-origin embedding of responses,
    and a `Location` that never names a host (werkzeug builds its slash-merging redirects from
    the client's `Host` header)."""
    response.headers["Permissions-Policy"] = PERMISSIONS_POLICY
    response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    if response.location:
        parts = urlsplit(response.location)
        if parts.scheme or parts.netloc:
            response.location = urlunsplit(("", "", parts.path or "/", parts.query, parts.fragment))
    return response


def run_token(slug: str) -> str:
    """The form's token for re-running `slug`: it shows the form came from a page this service
    (or one sharing KB_SECRET_KEY) rendered. Only needed from browsers that send neither
    Sec-Fetch-Site nor Origin; anyone can read it off the page, so it stops blind forms only."""
    key = state().run_key
    return hmac.new(key, f"run:{slug}".encode(), hashlib.sha256).hexdigest()[:32]


def allow_run(slug: str, api: bool) -> None:
    """Abort unless this request may start a run of `slug` (403, or 415 for a non-JSON API call)."""
    if not settings().runs:
        abort(403, "Runs are switched off on this server (KB_RUNS=off); the evidence shown is the stored one.")
    if api and request.mimetype != "application/json":
        abort(415, "POST the run with 'Content-Type: application/json' (the body may be {}).")
    reason = _cross_site()
    if reason is None:
        return
    if reason == "unmarked" and (api or hmac.compare_digest(request.form.get("token", ""), run_token(slug))):
        return  # the API's JSON body is the proof; a form's proof is its token
    abort(403, f"Runs are started from this site's own pages ({reason}).")


def _cross_site() -> str | None:
    """None for a same-origin request, "unmarked" when the browser said nothing, else why not."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return None if site == "same-origin" else f"Sec-Fetch-Site: {site}"
    origin = request.headers.get("Origin")
    if origin is not None:
        # Host, not scheme: behind a TLS-terminating proxy the service sees http.
        return None if urlsplit(origin).netloc == request.host else f"Origin: {origin}"
    return "unmarked"


def run_or_reuse(answer: Answer) -> ev.Evidence:
    """Run the answer, or return the run of it that finished less than KB_RUN_COOLDOWN s ago.

    One run of an answer at a time per process: a request that arrives while one is under way
    waits for it and gets its evidence. Across processes the stored `ran_at` does the same job.
    """
    kb = state()
    with kb.run_locks_lock:
        lock = kb.run_locks[answer.slug]
    lib = library()
    if not lock.acquire(blocking=False):
        kb.metrics.run("coalesced")
        with lock:  # the run under way finishes: its evidence is the answer
            return lib.evidence(answer)
    try:
        stored = lib.evidence(answer)  # pending evidence never ran: its age is infinite
        if _age(stored) < kb.settings.run_cooldown:
            kb.metrics.run("coalesced")
            return stored
        with run_slot():
            kb.metrics.run("started")
            fresh = lib.run(answer)
            if fresh["status"] != "passed":
                kb.metrics.run("failed")
            return fresh
    finally:
        lock.release()


def _age(evidence: ev.Evidence) -> float:
    """Seconds since the evidence ran (infinite for evidence that never ran)."""
    if not evidence["ran_at"]:
        return float("inf")
    ran = datetime.strptime(evidence["ran_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (datetime.now(UTC) - ran).total_seconds()
