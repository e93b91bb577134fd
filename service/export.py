"""`python -m kb build OUTDIR`: the whole knowledge base as static files, linked relatively.

The pages are the service's own, fetched through Flask's test client with `KB_STATIC` set (no
"Run again" form; search runs in the browser over `search-index.js`), then every absolute link
is rewritten relative to the page, so the site works opened from disk and on any static host.
"""
from __future__ import annotations

import json
import posixpath
import re
import shutil
from pathlib import Path

from . import create_app

LINK_RE = re.compile(r'(?P<attr>href|src|action)="(?P<url>/[^"]*)"')


def build(answers_dir, db_path, outdir) -> tuple[int, list]:
    """Write the site into `outdir`; return (pages written, answer format errors)."""
    app = create_app({"KB_ANSWERS": str(answers_dir), "KB_DB": str(db_path), "KB_STATIC": True})
    library = app.extensions["kb"]
    try:
        client = app.test_client()
        answers = sorted(library.answers.values(), key=lambda a: a.slug)
        tags = sorted({t for a in answers for t in a.tags})
        files = {"/": "index.html", "/search": "search.html", "/static/style.css": "static/style.css",
                 "/static/search.js": "static/search.js", "/static/favicon.svg": "static/favicon.svg", "/pygments.css": "pygments.css",
                 "/api/answers": "api/answers.json"}
        files.update({f"/answers/{a.slug}": f"answers/{a.slug}.html" for a in answers})
        files.update({f"/api/answers/{a.slug}": f"api/answers/{a.slug}.json" for a in answers})
        files.update({f"/tags/{t}": f"tags/{t}.html" for t in tags})
        for answer in answers:
            for snippet in library.evidence(answer)["snippets"]:
                for figure in snippet["figures"]:
                    files[f"/api/answers/{answer.slug}/figures/{figure['name']}"] = f"figures/{answer.slug}/{figure['name']}"

        out = Path(outdir)
        if out.exists():
            shutil.rmtree(out)
        for url, name in files.items():
            response = client.get(url)
            if response.status_code != 200:
                raise RuntimeError(f"GET {url} gave {response.status_code} while exporting")
            data = response.data
            if response.mimetype == "text/html":
                data = _relative_links(response.get_data(as_text=True), name, files).encode()
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        index = [{"slug": a.slug, "title": a.title, "summary": a.summary, "url": f"answers/{a.slug}.html",
                  "aliases": a.aliases, "tags": a.tags} for a in answers]
        (out / "search-index.json").write_text(json.dumps(index, ensure_ascii=False, indent=1), encoding="utf-8")
        (out / "search-index.js").write_text(f"window.KB_SEARCH_INDEX = {json.dumps(index, ensure_ascii=False)};\n",
                                             encoding="utf-8")
        pages = sum(1 for name in files.values() if name.endswith(".html"))
        return pages, library.errors
    finally:
        library.close()


def _relative_links(html: str, page: str, files: dict) -> str:
    """Point every site-absolute link at the exported file, relative to `page`."""
    here = posixpath.dirname(page)

    def rewrite(match):
        url = match["url"]
        path, _, fragment = url.partition("#")
        path = path.split("?", 1)[0]
        target = files.get(path)
        if target is None:
            raise RuntimeError(f"{page} links to {url}, which the export does not write")
        relative = posixpath.relpath(target, here or ".")
        return f'{match["attr"]}="{relative}{"#" + fragment if fragment else ""}"'

    return LINK_RE.sub(rewrite, html)

