"""`python -m kb build OUTDIR`: a static site whose every internal link resolves."""
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

from helpers import ROOT, run_cli
from service_fixtures import write_small_answers


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for key, value in attrs if key in ("href", "src", "action") and value]


def internal_links(page: Path):
    parser = Links()
    parser.feed(page.read_text())
    return [u for u in parser.urls if not re.match(r"[a-z]+:", u)]


def build(answers, tmp_path, db=None):
    out = tmp_path / "site"
    proc = run_cli("build", out, "--answers", answers, "--db", db or tmp_path / "db", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_export_links_resolve_and_pages_carry_evidence(tmp_path):
    out = build(write_small_answers(tmp_path / "answers"), tmp_path)
    pages = sorted(out.rglob("*.html"))
    assert {p.relative_to(out).as_posix() for p in pages} >= {
        "index.html", "search.html", "answers/sigmoid-slope.html", "answers/averaging.html", "tags/calculus.html"}
    for page in pages:
        for url in internal_links(page):
            assert not url.startswith("/"), f"{page}: absolute link {url}"
            target = (page.parent / unquote(url.split("#")[0].split("?")[0])).resolve()
            assert target.exists(), f"{page.relative_to(out)} links to missing {url}"
    answer = (out / "answers/sigmoid-slope.html").read_text()
    assert "✓" in answer and "never exceeds 1/4" in answer and "<math" in answer
    assert 'src="../figures/sigmoid-slope/0-0.svg"' in answer
    assert "Run again" not in answer, "a static page cannot re-run"
    assert (out / "figures/sigmoid-slope/0-0.svg").read_text().lstrip().startswith("<?xml")
    index = json.loads((out / "search-index.json").read_text())
    assert {"slug", "title", "summary", "url"} <= set(index[0])
    assert all((out / entry["url"]).exists() for entry in index)
    twin = json.loads((out / "api/answers/sigmoid-slope.json").read_text())
    assert twin["evidence"]["status"] == "passed"
    [figure] = [url for snippet in twin["evidence"]["snippets"] for url in snippet["figures"]]
    assert figure == "../../figures/sigmoid-slope/0-0.svg" and (out / "api/answers" / figure).resolve().exists()
    listing = json.loads((out / "api/answers.json").read_text())["answers"]
    assert all((out / "api" / entry["url"]).resolve().exists() for entry in listing)


def test_build_never_replaces_what_it_did_not_write(tmp_path):
    answers = write_small_answers(tmp_path / "answers")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    before = sorted(p.read_bytes() for p in answers.iterdir())
    for target in (answers, tmp_path, notes):
        proc = run_cli("build", target, "--answers", answers, "--db", tmp_path / "db", cwd=tmp_path)
        assert proc.returncode == 2 and "kb build: " in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.read_bytes() for p in answers.iterdir()) == before
    assert (notes / "mine.txt").read_text() == "keep me"

    out = build(answers, tmp_path)  # an earlier export is replaced, whole, by the next build
    (out / "stale.html").write_text("from an older build")
    assert build(answers, tmp_path) == out and not (out / "stale.html").exists()
    assert (out / "index.html").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".site")] == []


def test_export_of_the_knowledge_base_has_every_answer_with_evidence(real_site):
    for source in (ROOT / "answers").glob("*.md"):
        page = real_site / "answers" / f"{source.stem}.html"
        html = page.read_text()
        assert 'class="badge passed"' in html and 'class="check passed"' in html, source.stem
