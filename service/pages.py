"""HTML pages for people; each links its JSON twin with <link rel="alternate">."""
from __future__ import annotations

import ast
import re

from flask import Blueprint, Response, abort, current_app, redirect, render_template, request, url_for
from markupsafe import Markup, escape

from kb.format import syntax
from kb.format.draft import is_draft
from kb.format.topics import BY_KEY, TOPICS
from kb.notebook import MIMETYPE, build_notebook, notebook_json
from kb.render.markdown import figure_size, highlight_python, pygments_css, render_inline
from kb.store import evidence as ev

from .context import answer_or_404, audited, library, snapshot
from .guard import allow_run
from .lookup import lookup
from .openapi import spec
from .responses import answer_response
from .runs import run_or_reuse
from .serialize import figure_url

pages = Blueprint("pages", __name__)


@pages.app_template_filter("inline")
def inline_markdown(text: str):
    return Markup(render_inline(text))


@pages.app_template_filter("backticks")
def backticks(text: str):
    """`kb audit`'s description of a breakage ("`1/m` → `2/m`") with its code in <code>."""
    parts = re.split(r"`([^`]*)`", text or "")
    return Markup("".join(str(escape(p)) if i % 2 == 0 else f"<code>{escape(p)}</code>" for i, p in enumerate(parts)))


@pages.before_app_request
def without_trailing_slash():
    """`/answers/x/` → 301 `/answers/x`: one URL per page (pages only: API URLs are exact, as
    documented). The Location is a path, never built from the Host header, and leading slashes
    collapse so `//host/` cannot become an off-site redirect."""
    path = request.path
    if path != "/" and path.endswith("/") and request.method in ("GET", "HEAD") and not path.startswith("/api/"):
        target = "/" + path.strip("/")
        query = request.query_string.decode("latin-1")
        return redirect(target + ("?" + query if query else ""), 301)
    return None


@pages.get("/favicon.ico")
def favicon():
    return redirect(url_for("static", filename="favicon.svg"), 301)


def _entries(answers):
    """The listed answers with their statuses: drafts (kb new's placeholders still in) are not listed."""
    chosen = sorted((a for a in answers if not is_draft(a)), key=lambda a: a.title)
    statuses = library().statuses(chosen)
    return [(a, statuses[a.slug]) for a in chosen]


@pages.get("/")
def index():
    known = snapshot()
    entries = _entries(known.answers.values())
    groups = [(topic, [e for e in entries if e[0].topic == topic.key]) for topic in TOPICS]
    groups = [(topic, chosen) for topic, chosen in groups if chosen]
    other = [e for e in entries if e[0].topic not in BY_KEY]
    tags = sorted({t for a, _ in entries for t in a.tags})
    return render_template("index.html", groups=groups, other=other, total=len(entries), tags=tags,
                           errors=known.errors, alternate=url_for("api.answers"), home=True)


@pages.get("/topics/<key>")
def topic(key):
    found = BY_KEY.get(key)
    if found is None:
        if key.lower() in BY_KEY:
            return redirect(url_for("pages.topic", key=key.lower()), 301)
        abort(404, f"There is no topic named '{key}'.")
    entries = _entries(a for a in snapshot().answers.values() if a.topic == key)
    position = TOPICS.index(found)
    neighbours = (TOPICS[position - 1] if position else None, TOPICS[position + 1] if position + 1 < len(TOPICS) else None)
    return render_template("topic.html", topic=found, entries=entries, neighbours=neighbours,
                           alternate=url_for("api.answers", topic=key))


@pages.get("/answers/<slug>")
def answer(slug):
    if slug != slug.lower() and slug.lower() in snapshot().answers:
        return redirect(url_for("pages.answer", slug=slug.lower()), 301)
    found = answer_or_404(slug)
    response = answer_response("page", found, lambda evidence: _answer_page(found, evidence), "text/html")
    was = request.args.get("was")
    announce = _changes(was, library().evidence(found)) if was is not None else None
    if announce:  # just re-run: the cached page, with one line saying what changed
        line = Markup('<p class="announce" role="status">{}</p>').format(announce)
        response.set_data(response.get_data().replace(ANNOUNCE, str(line).encode(), 1))
        del response.headers["ETag"]
    return response


@pages.get("/answers/<slug>.ipynb")
def notebook(slug):
    """The answer as a Jupyter notebook, its evidence as the saved outputs (kb/notebook.py)."""
    found = answer_or_404(slug)
    static = current_app.config["KB_STATIC"]  # the export's pages are <slug>.html, beside the notebook
    answers = snapshot().answers

    def make(evidence) -> str:
        return notebook_json(build_notebook(
            found, evidence, titles={s: a.title for s, a in answers.items() if s in found.related},
            page=lambda s: f"{s}.html" if static else s, figure=lambda name: library().figure(found, name)))

    response = answer_response("notebook", found, make, MIMETYPE)
    response.headers["Content-Disposition"] = f'attachment; filename="{found.slug}.ipynb"'
    return response


ANNOUNCE = b"<!--kb:announce-->"  # where answer.html puts the line "Run again" comes back to


def _answer_page(answer, evidence) -> str:
    known = snapshot()
    evidence = audited(evidence, answer)
    by_index = {s["index"]: s for s in evidence["snippets"]}
    rendered = known.rendered(answer)
    parts = []
    for kind, value in rendered.parts:
        if kind == "html":
            parts.append(("html", value, None, None))
        else:
            snippet = answer.snippets[value]
            parts.append(("snippet", highlight_python(snippet.code), snippet, by_index.get(value)))
    related = [known.answers[s] for s in answer.related if s in known.answers]
    version = evidence["ran_at"] or ""
    sizes = {(s["index"], f["name"]): figure_size(library().figure(answer, f["name"]) or "")
             for s in evidence["snippets"] for f in s["figures"]}
    return render_template("answer.html", answer=answer, evidence=evidence, parts=parts, related=related,
                           counts=ev.describe(ev.counts(evidence, answer)), toc=rendered.toc,
                           topic=BY_KEY.get(answer.topic), draft=is_draft(answer),
                           show_lead=not repeats_lead(answer.summary, rendered.parts),
                           figure_url=lambda name: f"{figure_url(answer.slug, name)}?v={version}",
                           figure_size=lambda index, name: sizes.get((index, name)),
                           source_line=source_line, alternate=url_for("api.answer", slug=answer.slug))


def repeats_lead(summary: str, parts) -> bool:
    """True if the body opens with a section (e.g. "Short answer") whose text is the summary.

    The page then leaves out the lead paragraph rather than the section: the section keeps its
    place in the contents and its permalink, and the reader sees the summary once, in place.
    """
    first = next((value for kind, value in parts if kind == "html"), "")
    match = re.match(r"\s*<h2[^>]*>.*?</h2>\s*(.*?)(?=<h[1-6][ >]|$)", first, re.S)
    if not match:
        return False
    return _text(match[1]) == _text(render_inline(summary))


def _text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def source_line(snippet: dict, line) -> str | None:
    """The condition a failed check tested, as written: `check(claim, condition, value)`'s second
    argument at .md line `line`, taken from the code that ran (a check often spans lines)."""
    if not line:
        return None
    code, at = snippet["code"], line - snippet["line"]  # the code starts on the line after the fence
    try:
        calls = [node for node in ast.walk(syntax.parse(code)) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Name) and node.func.id == "check" and node.lineno <= at <= node.end_lineno]
    except SyntaxError:
        calls = []
    for call in sorted(calls, key=lambda node: node.lineno, reverse=True):  # the innermost call
        condition = call.args[1] if len(call.args) > 1 else next(
            (k.value for k in call.keywords if k.arg == "condition"), None)
        segment = ast.get_source_segment(code, condition) if condition is not None else None
        if segment is not None:
            return " ".join(segment.split())
    lines = code.splitlines()
    return lines[at - 1].strip() if 0 < at <= len(lines) else None


def _was(evidence) -> str:
    c = ev.counts(evidence)
    return f"{evidence['status']}.{c['checks_passed']}.{c['checks']}"


def _changes(was: str, evidence) -> str | None:
    """What a re-run changed, as one sentence: "re-ran in 1.4 s: 10 of 10 checks still hold"."""
    match = re.fullmatch(r"(passed|failed|error|timeout|pending)\.(\d{1,6})\.(\d{1,6})", was)
    if not match or evidence["duration_ms"] is None:
        return None
    status, passed, total = match[1], int(match[2]), int(match[3])
    now = ev.counts(evidence)
    took = f"re-ran in {evidence['duration_ms'] / 1000:.1f} s"
    held = f"{now['checks_passed']} of {now['checks']} check{'s' if now['checks'] != 1 else ''}"
    hold = "holds" if now["checks"] == 1 else "hold"
    if (status, passed, total) == (evidence["status"], now["checks_passed"], now["checks"]):
        return f"{took}: {held} still {hold}" if evidence["status"] == "passed" else f"{took}: no change, {held} {hold}"
    change = f"{took}: now {held} {hold} (before: {passed} of {total})"
    return change + (f"; {status} → {evidence['status']}" if status != evidence["status"] else "")


@pages.post("/answers/<slug>/run")
def run(slug):
    allow_run(slug, api=False)
    found = answer_or_404(slug)
    before = _was(library().evidence(found))
    run_or_reuse(found)
    return redirect(url_for("pages.answer", slug=found.slug, was=before, _anchor="evidence"), code=303)


@pages.get("/search")
def search():
    query = request.args.get("q", "").strip()[:500]
    found = lookup(query, 3) if query else {"confident": False, "fit": "none", "ready": True, "shown": 0, "results": []}
    alternate = url_for("api.search", q=query) if query else None
    return render_template("search.html", query=query, results=found["results"], found=found, alternate=alternate)


@pages.get("/tags/<tag>")
def tag(tag):
    chosen = [a for a in snapshot().answers.values() if tag in a.tags]
    if not chosen:
        abort(404, f"No answer is tagged '{tag}'.")
    return render_template("tag.html", tag=tag, entries=_entries(chosen), alternate=url_for("api.answers", tag=tag))


@pages.get("/api/docs")
def api_docs():
    """The OpenAPI document as a page for people: every path, its parameters and responses."""
    document = spec()
    return render_template("api.html", spec=document, schemas=document["components"]["schemas"],
                           alternate=url_for("api.openapi"))


@pages.get("/pygments.css")
def pygments_stylesheet():
    return Response(pygments_css(), mimetype="text/css")
