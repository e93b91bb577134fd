"""The JSON shapes of answers and evidence that the API, the pages and the export share."""
from __future__ import annotations

from flask import url_for

from kb.store import evidence as ev

from .context import snapshot


def figure_url(slug: str, name: str) -> str:
    return url_for("api.figure", slug=slug, name=name)


def public_evidence(evidence: ev.Evidence) -> dict:
    return ev.public(evidence, figure_url, snapshot().answers.get(evidence["slug"]))


def listing(answer, status: str) -> dict:
    return {"slug": answer.slug, "title": answer.title, "summary": answer.summary, "tags": answer.tags,
            "topic": answer.topic, "status": status, "url": url_for("pages.answer", slug=answer.slug)}
