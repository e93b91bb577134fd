"""`kb build OUTDIR`: the whole knowledge base as static files, linked relatively.

The pages are the service's own, fetched through Flask's test client with `KB_STATIC` set (no
"Run again" form; search runs in the browser over `search-index.js`), then every absolute link
is rewritten relative to the page, so the site works opened from disk and on any static host
(in the JSON twins too: their `url`s and figure links point at the exported files).

OUTDIR is replaced as a whole, so `build` only replaces a directory it wrote itself (marked by
a `.kb-export` file) or an empty one, never the answers, and only once the new site is written
in full beside it: a failed build leaves the previous export as it was.
"""
from __future__ import annotations

import json
import posixpath
import re
import shutil
import tempfile
from pathlib import Path

from kb.format.topics import TOPICS

from . import create_app
from .context import state
from .headers import CSP

LINK_RE = re.compile(r'(?P<attr>href|src|action)="(?P<url>/[^"]*)"')
MARKER = ".kb-export"
# A static host sends no headers of ours: the pages carry the policy themselves (frame-ancestors
# is not allowed in a <meta> policy; the rest is the service's).
CSP_META = ('<meta http-equiv="Content-Security-Policy" content="'
            + "; ".join(d for d in CSP.split("; ") if not d.startswith("frame-ancestors")) + '">')


class ExportError(Exception):
    """The export cannot be written where it was asked to be (a usage error, not a crash)."""


def check_target(outdir, answers_dir) -> Path:
    """OUTDIR, if replacing it cannot lose anything that `build` did not write itself."""
    out, answers = Path(outdir).resolve(), Path(answers_dir).resolve()
    if out == answers or out in answers.parents:
        raise ExportError(f"{outdir} holds the answers ({answers_dir}): choose another output directory")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise ExportError(f"{outdir} exists and is not an export written by `kb build` (no {MARKER} file in it): "
                          "choose an empty or new directory, or remove it yourself")
    return out


def build(answers_dir, db_path, outdir) -> tuple[int, list]:
    """Write the site into `outdir`; return (pages written, answer format errors)."""
    out = check_target(outdir, answers_dir)
    app = create_app({"KB_ANSWERS": str(answers_dir), "KB_DB": str(db_path), "KB_STATIC": True,
                      "KB_RUN_MISSING": "wait"})
    library = state(app).library
    try:
        client = app.test_client()
        answers = sorted(library.answers.values(), key=lambda a: a.slug)
        tags = sorted({t for a in answers for t in a.tags})
        files = {"/": "index.html", "/search": "search.html", "/static/style.css": "static/style.css",
                 "/static/search.js": "static/search.js", "/static/favicon.svg": "static/favicon.svg", "/pygments.css": "pygments.css",
                 "/static/page.js": "static/page.js", "/static/fonts/NotoSansMath-Regular.woff2": "static/fonts/NotoSansMath-Regular.woff2",
                 "/static/fonts/OFL.txt": "static/fonts/OFL.txt", "/api/answers": "api/answers.json"}
        files.update({f"/answers/{a.slug}": f"answers/{a.slug}.html" for a in answers})
        files.update({f"/api/answers/{a.slug}": f"api/answers/{a.slug}.json" for a in answers})
        files.update({f"/answers/{a.slug}.ipynb": f"answers/{a.slug}.ipynb" for a in answers})
        files.update({f"/tags/{t}": f"tags/{t}.html" for t in tags})
        files.update({f"/topics/{t.key}": f"topics/{t.key}.html" for t in TOPICS})
        for answer in answers:
            for snippet in library.evidence(answer)["snippets"]:
                for figure in snippet["figures"]:
                    files[f"/api/answers/{answer.slug}/figures/{figure['name']}"] = f"figures/{answer.slug}/{figure['name']}"

        out.parent.mkdir(parents=True, exist_ok=True)
        site = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            for url, name in files.items():
                with client.get(url) as response:  # closed: a static file's response holds it open
                    if response.status_code != 200:
                        raise RuntimeError(f"GET {url} gave {response.status_code} while exporting")
                    data = response.data
                    if response.mimetype == "text/html":
                        html = _relative_links(response.get_data(as_text=True), name, files)
                        data = html.replace('<meta charset="utf-8">', '<meta charset="utf-8">\n' + CSP_META, 1).encode()
                    elif response.mimetype == "application/json":
                        data = json.dumps(_relative_json(response.get_json(), name, files), ensure_ascii=False).encode()
                target = site / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            index = [{"slug": a.slug, "title": a.title, "summary": a.summary, "url": f"answers/{a.slug}.html",
                      "aliases": a.aliases, "tags": a.tags} for a in answers]
            (site / "search-index.json").write_text(json.dumps(index, ensure_ascii=False, indent=1), encoding="utf-8")
            # The lexical tables come from kb/search/index.py, so the browser ranks as the server's lexical stage.
            tables = json.dumps(library.index.static_tables(), ensure_ascii=False, separators=(",", ":"))
            (site / "search-index.js").write_text(f"window.KB_SEARCH_INDEX = {json.dumps(index, ensure_ascii=False)};\n"
                                                  f"window.KB_LEXICAL = {tables};\n", encoding="utf-8")
            (site / MARKER).write_text("Written by `python -m kb build`; the next build replaces this directory.\n")
            site.chmod(0o755)  # mkdtemp makes it private; a site is for serving
            if out.exists():
                shutil.rmtree(out)
            site.rename(out)
        finally:
            shutil.rmtree(site, ignore_errors=True)
        pages = sum(1 for name in files.values() if name.endswith(".html"))
        return pages, list(library.errors)
    finally:
        library.close()


def _relative_json(value, page: str, files: dict):
    """The JSON twin with its links relative: `url`s, `figures` and the links in `html`."""
    if isinstance(value, list):
        return [_relative_json(v, page, files) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, object] = {}
    for key, item in value.items():
        if key == "url" and item in files:
            out[key] = _relative(files[item], page)
        elif key == "figures" and isinstance(item, list) and all(url in files for url in item):
            out[key] = [_relative(files[url], page) for url in item]
        elif key == "html" and isinstance(item, str):
            out[key] = _relative_links(item, page, files)
        else:
            out[key] = _relative_json(item, page, files)
    return out


def _relative(target: str, page: str) -> str:
    """The path of exported file `target` as seen from exported file `page`."""
    return posixpath.relpath(target, posixpath.dirname(page) or ".")


def _relative_links(html: str, page: str, files: dict) -> str:
    """Point every site-absolute link at the exported file, relative to `page`."""
    def rewrite(match):
        url = match["url"]
        path, _, fragment = url.partition("#")
        path = path.split("?", 1)[0]
        target = files.get(path)
        if target is None:
            raise RuntimeError(f"{page} links to {url}, which the export does not write")
        return f'{match["attr"]}="{_relative(target, page)}{"#" + fragment if fragment else ""}"'

    return LINK_RE.sub(rewrite, html)

