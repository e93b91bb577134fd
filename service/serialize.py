"""The JSON shapes of answers and evidence, for the API, the pages and the export.

`ANSWER_FIELDS` is the one description of an answer's fields as programs see them, each with its
JSON Schema: the answer's JSON (`api.answer`), the listing (`listing`) and the OpenAPI schemas
(`openapi.py`) are all made from it, so a new front-matter field is added to the API here, once.
"""
from __future__ import annotations

from typing import Any

from flask import url_for

from kb.format.answer import SLUG_RE, Answer
from kb.store import evidence as ev

from .context import audited, snapshot

STRING_LIST = {"type": "array", "items": {"type": "string"}}
ANSWER_FIELDS: dict[str, dict[str, Any]] = {
    "slug": {"type": "string", "pattern": f"^{SLUG_RE.pattern}$"},
    "title": {"type": "string"},
    "summary": {"type": "string"},
    "tags": STRING_LIST,
    "topic": {"$ref": "#/components/schemas/Topic"},
    "aliases": STRING_LIST,
    "related": STRING_LIST,
    "sources": STRING_LIST,
}
LISTED = ("slug", "title", "summary", "tags", "topic")  # of those, what a list of answers shows


def fields(answer: Answer, names=tuple(ANSWER_FIELDS)) -> dict[str, Any]:
    """The answer's fields `names`, as its JSON shows them."""
    return {name: getattr(answer, name) for name in names}


def figure_url(slug: str, name: str) -> str:
    return url_for("api.figure", slug=slug, name=name)


def public_evidence(evidence: ev.Evidence) -> dict:
    return ev.public(audited(evidence), figure_url, snapshot().answers.get(evidence["slug"]))


def listing(answer: Answer, status: str) -> dict:
    return {**fields(answer, LISTED), "status": status, "url": url_for("pages.answer", slug=answer.slug)}
