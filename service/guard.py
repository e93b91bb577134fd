"""Who may start a run.

Runs execute code and replace the published evidence, so the run endpoints refuse what a
browser sends on another site's behalf: a request its browser marks `Sec-Fetch-Site` other than
`same-origin`, else one whose `Origin` is another host; a form from a browser that sends
neither carries a token only this service can sign. The API run also requires
`Content-Type: application/json`, which no cross-site form or simple request can send.
`KB_RUNS=off` turns runs off (403). Whether an allowed run starts, or reuses one, is `runs.py`'s.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

from flask import abort, request

from .context import settings, state


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
