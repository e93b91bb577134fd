"""A learner's question to answers, for the API and the search page alike."""
from __future__ import annotations

from flask import url_for

from .context import state


def lookup(query: str, limit: int) -> dict:
    """{"confident", "results"}: each result links to its best section; a query without a
    confident answer is counted in the store's gaps (`kb gaps`)."""
    kb = state()
    found = kb.library.lookup(query, limit)
    kb.metrics.search(found["confident"])
    found["results"] = [{"slug": hit["slug"], "title": hit["title"], "summary": hit["summary"], "score": hit["score"],
                         "url": url_for("pages.answer", slug=hit["slug"], _anchor=hit["section"]["anchor"] or None),
                         "section": hit["section"]} for hit in found["results"]]
    if not found["confident"] and not kb.settings.static:
        kb.gaps.record(query)
    return found
