"""The static export's search (service/static/search.js) ranks as the server's lexical stage.

search.js is run in headless Chromium over an export of the real answers; its ranking and its
Porter stemmer are compared with `SearchIndex.candidates` and with FTS5's own "porter" tokenizer.
"""
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import ROOT, copy_database
from lookup_cases import CASES

from kb.search.index import TOKENIZE, WORD_RE, SearchIndex

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: install Debian's chromium (.ci/run does)")
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402

QUERIES = [q for q, _ in CASES] + [
    "Why is the logistic regression cost function scaled by the number of examples? regularizer",
    "Nan when trying different learning rates", "naïve normalising behaviour centred", "rectified linear nn init",
    "", "   ", "🤖", '"adam" NOT OR (', "x" * 300, "why " * 50]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, real_site):
    db = copy_database(real_site.parent / "kb.sqlite3", tmp_path_factory.mktemp("static") / "kb.sqlite3")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto((real_site / "search.html").as_uri())
        page.wait_for_function("window.KB_LEXICAL !== undefined && window.KB_RANK !== undefined")
        yield page, SearchIndex(db)
        browser.close()


def test_the_browser_ranks_as_the_lexical_stage(exported):
    page, index = exported
    ranked = page.evaluate("qs => qs.map(q => window.KB_RANK(q, window.KB_LEXICAL).slice(0, 30))", QUERIES)
    for query, browser in zip(QUERIES, ranked, strict=True):
        server = index.candidates(query, 30)
        assert [slug for _, slug in browser] == [slug for slug, _ in server], query
        assert [round(score, 6) for score, _ in browser] == [round(score, 6) for _, score in server], query


def test_the_browser_stems_as_fts5(exported):
    page, _ = exported
    words = sorted({w for path in (ROOT / "answers").glob("*.md") for w in WORD_RE.findall(path.read_text().casefold())}
                   | {"agreed", "happy", "sky", "generalizations", "controlling", "hopping", "filing", "conflated",
                      "troubles", "sized", "rational", "electricity", "adjustable", "irritant", "replacement",
                      "adoption", "bowdlerize", "caresses", "ponies", "feed", "fall", "yyy", "ab"})
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE VIRTUAL TABLE t USING fts5(w, tokenize = '{TOKENIZE}')")
    db.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
    db.executemany("INSERT INTO t (rowid, w) VALUES (?, ?)", enumerate(words))
    fts5 = dict((row, term) for term, row in db.execute("SELECT term, doc FROM v WHERE offset = 0"))
    browser = page.evaluate("ws => ws.map(w => window.KB_STEM(w))", words)
    wrong = [(w, fts5[i], b) for i, (w, b) in enumerate(zip(words, browser, strict=True)) if fts5.get(i) != b and i in fts5]
    assert not wrong and len(words) > 1000
