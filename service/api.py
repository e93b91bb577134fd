"""The JSON API (`/api/…`, `/healthz`): the machine twin of every HTML page."""
from __future__ import annotations

import json
import re

from flask import Blueprint, Response, abort, jsonify, request

from kb import version
from kb.render.markdown import Html, highlight_python

from .context import answer_or_404, library, snapshot
from .guard import allow_run
from .lookup import lookup
from .openapi import spec
from .responses import answer_response
from .runs import run_or_reuse
from .serialize import fields, listing, public_evidence

api = Blueprint("api", __name__)
FIGURE_NAME = r"\d+-\d+\.svg"
FIGURE_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


@api.get("/healthz")
def healthz():
    """`ok`, or `degraded` with the problems found (and healed) in the stored evidence; the
    service's version either way."""
    problems = library().health_cached()
    if problems:
        return jsonify(status="degraded", answers=len(snapshot().answers), version=version(), problems=problems)
    return jsonify(status="ok", answers=len(snapshot().answers), version=version())


@api.get("/api/answers")
def answers():
    tag, topic = request.args.get("tag"), request.args.get("topic")
    chosen = [a for a in sorted(snapshot().answers.values(), key=lambda a: a.title)
              if (tag is None or tag in a.tags) and (topic is None or a.topic == topic)]
    statuses = library().statuses(chosen)
    return jsonify(answers=[listing(a, statuses[a.slug]) for a in chosen])


@api.get("/api/answers/<slug>")
def answer(slug):
    found = answer_or_404(slug)

    def make(evidence):
        return json.dumps({**fields(found), "html": body_html(found), "evidence": public_evidence(evidence)},
                          ensure_ascii=False, allow_nan=False)

    return answer_response("json", found, make, "application/json")


def body_html(answer) -> str:
    """The rendered answer with its snippets' code in place (evidence is in `evidence`)."""
    return "".join(part.html if isinstance(part, Html) else highlight_python(answer.snippets[part.snippet].code)
                   for part in snapshot().rendered(answer).parts)


@api.get("/api/answers/<slug>/evidence")
def evidence(slug):
    return jsonify(public_evidence(library().evidence(answer_or_404(slug))))


@api.post("/api/answers/<slug>/run")
def run(slug):
    allow_run(slug, api=True)
    return jsonify(public_evidence(run_or_reuse(answer_or_404(slug))))


@api.get("/api/answers/<slug>/figures/<name>")
def figure(slug, name):
    found = answer_or_404(slug)
    svg = library().figure(found, name) if re.fullmatch(FIGURE_NAME, name) else None
    if svg is None:
        abort(404, f"Answer '{slug}' has no figure named '{name}'.")
    response = Response(svg, mimetype="image/svg+xml")
    # Opened on its own (a JSON client's link, "open image in new tab") the SVG is a document:
    # matplotlib styles it inline, and nothing in it may run.
    response.headers["Content-Security-Policy"] = FIGURE_CSP
    return response


@api.get("/api/search")
def search():
    query = request.args.get("q", "").strip()
    if not query:
        abort(400, "Give a question in the 'q' parameter, e.g. /api/search?q=why+average+dW.")
    raw_limit = request.args.get("limit", "5")
    if not re.fullmatch("[0-9]{1,2}", raw_limit) or not 1 <= int(raw_limit) <= 50:  # not isdigit(): "²"
        abort(400, "'limit' must be a whole number from 1 to 50.")
    found = lookup(query, int(raw_limit))
    return jsonify(query=query, confident=found["confident"], fit=found["fit"], ready=found["ready"],
                   results=found["results"])


@api.get("/api/openapi.json")
def openapi():
    return jsonify(spec())
