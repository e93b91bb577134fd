"""A learner's question to answers, for the API and the search page alike."""
from __future__ import annotations

from flask import current_app, url_for

from .context import library


def lookup(query: str, limit: int) -> dict:
    """{"confident", "results"}: each result links to its best section; a query without a
    confident answer is counted in the store's gaps (`kb gaps`)."""
    found = library().lookup(query, limit)
    found["results"] = [{"slug": hit["slug"], "title": hit["title"], "summary": hit["summary"], "score": hit["score"],
                         "url": url_for("pages.answer", slug=hit["slug"], _anchor=hit["section"]["anchor"] or None),
                         "section": hit["section"]} for hit in found["results"]]
    if not found["confident"] and not current_app.config["KB_STATIC"]:
        current_app.extensions["kb_gaps"].record(query)
    return found
