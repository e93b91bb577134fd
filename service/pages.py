"""HTML pages for people; each links its JSON twin with <link rel="alternate">."""
from __future__ import annotations

from flask import Blueprint, Response, abort, redirect, render_template, request, url_for
from markupsafe import Markup

from kb import evidence as ev
from kb.render import highlight_python, pygments_css, render_inline

from .api import lookup
from .knowledge import answer_or_404, answer_response, figure_url, library, run_slot

pages = Blueprint("pages", __name__)


@pages.app_template_filter("inline")
def inline_markdown(text: str):
    return Markup(render_inline(text))


@pages.get("/")
def index():
    lib = library()
    chosen = sorted(lib.answers.values(), key=lambda a: a.title)
    statuses = lib.store.statuses(chosen)
    entries = [(a, statuses[a.slug]) for a in chosen]
    tags = sorted({t for a in lib.answers.values() for t in a.tags})
    return render_template("index.html", entries=entries, tags=tags, errors=lib.errors,
                           alternate=url_for("api.answers"))


@pages.get("/answers/<slug>")
def answer(slug):
    found = answer_or_404(slug)
    return answer_response("page", found, lambda evidence: _answer_page(found, evidence), "text/html")


def _answer_page(answer, evidence) -> str:
    lib = library()
    by_index = {s["index"]: s for s in evidence["snippets"]}
    rendered = lib.rendered(answer)
    parts = []
    for kind, value in rendered.parts:
        if kind == "html":
            parts.append(("html", value, None, None))
        else:
            snippet = answer.snippets[value]
            parts.append(("snippet", highlight_python(snippet.code), snippet, by_index.get(value)))
    passed, total = ev.checks_count(evidence)
    related = [lib.answers[s] for s in answer.related if s in lib.answers]
    version = evidence["ran_at"] or ""
    return render_template("answer.html", answer=answer, evidence=evidence, parts=parts, related=related,
                           passed=passed, total=total, toc=rendered.toc,
                           figure_url=lambda name: f"{figure_url(answer.slug, name)}?v={version}",
                           alternate=url_for("api.answer", slug=answer.slug))


@pages.post("/answers/<slug>/run")
def run(slug):
    found = answer_or_404(slug)
    with run_slot():
        library().run(found)
    return redirect(url_for("pages.answer", slug=found.slug, _anchor="evidence"), code=303)


@pages.get("/search")
def search():
    query = request.args.get("q", "").strip()[:500]
    found = lookup(query, 10) if query else {"confident": False, "results": []}
    alternate = url_for("api.search", q=query) if query else None
    return render_template("search.html", query=query, results=found["results"], confident=found["confident"],
                           alternate=alternate)


@pages.get("/tags/<tag>")
def tag(tag):
    lib = library()
    chosen = [a for a in sorted(lib.answers.values(), key=lambda a: a.title) if tag in a.tags]
    if not chosen:
        abort(404, f"No answer is tagged '{tag}'.")
    statuses = lib.store.statuses(chosen)
    entries = [(a, statuses[a.slug]) for a in chosen]
    return render_template("tag.html", tag=tag, entries=entries, alternate=url_for("api.answers", tag=tag))


@pages.get("/pygments.css")
def pygments_stylesheet():
    return Response(pygments_css(), mimetype="text/css")
