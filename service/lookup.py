"""A learner's question to answers, for the API and the search page alike."""
from __future__ import annotations

from flask import url_for

from .context import state


def lookup(query: str, limit: int) -> dict:
    """{"confident", "fit", "ready", "shown", "results"}: each result's `url` opens its answer at
    the top (title, summary, short answer in view); `section` names the best-matching section, for
    a "jump to" link. A question without a confident answer is counted in the store's gaps
    (`kb gaps`), unless the semantic stage was not ready to judge it."""
    kb = state()
    found = kb.library.lookup(query, limit)
    kb.metrics.search(found["confident"])
    found["results"] = [{"slug": hit["slug"], "title": hit["title"], "summary": hit["summary"], "score": hit["score"],
                         "url": url_for("pages.answer", slug=hit["slug"]),
                         "section": hit["section"]} for hit in found["results"]]
    if not found["confident"] and found["ready"] and not kb.settings.static:
        kb.gaps.record(query)
    return found
