"""The HTML pages through Flask's test client: content, evidence, run again, reloads, safety."""
import re
import time
from html.parser import HTMLParser

from conftest import answer_text
from kb.answer import parse_answer
from service import create_app
from service_fixtures import write_small_answers


def test_index_lists_questions_with_summary_tags_status_and_search(client):
    html = client.get("/").get_data(as_text=True)
    for title in ["Why is the slope of the sigmoid at most 1/4?", "Why do we average the gradient over the m examples?"]:
        assert title in html
    assert 'class="badge passed"' in html and 'class="badge failed"' in html
    assert '<form class="search big" action="/search"' in html
    assert 'href="/tags/activation-functions"' in html
    assert '<link rel="alternate" type="application/json" href="/api/answers">' in html
    assert "<math" in html, "summaries render their math"


def test_answer_page_shows_each_snippet_with_its_evidence(client):
    response = client.get("/answers/sigmoid-slope")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'data-status="passed"' in html and "1/1 checks hold" in html
    assert "✓" in html and "σ&#39;(z) never exceeds 1/4" in html.replace("'", "&#39;")
    assert "max: 0.25" in html, "the snippet's printed output is shown"
    [src] = re.findall(r'<img src="([^"]+)"', html)
    assert src.startswith("/api/answers/sigmoid-slope/figures/0-0.svg")
    assert client.get(src).mimetype == "image/svg+xml"
    assert 'alt="The sigmoid&#39;s derivative peaks at 1/4"' in html
    assert "Python 3." in html and "NumPy 2." in html
    assert '<form method="post" action="/answers/sigmoid-slope/run"' in html
    assert 'href="/answers/averaging"' in html, "related answers are linked"
    assert '<link rel="alternate" type="application/json" href="/api/answers/sigmoid-slope">' in html


def test_failed_evidence_is_shown_plainly(client):
    html = client.get("/answers/wrong-claim").get_data(as_text=True)
    assert 'class="badge failed"' in html and "✗" in html and "the slope exceeds 1/2" in html
    assert "0/1 checks hold" in html


def test_run_again_is_a_plain_form_post_that_comes_back_with_fresh_evidence(client):
    before = re.search(r'datetime="([^"]+)"', client.get("/answers/averaging").get_data(as_text=True))[1]
    time.sleep(1.1)  # ran_at has one-second resolution
    response = client.post("/answers/averaging/run")
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/answers/averaging#evidence")
    after = re.search(r'datetime="([^"]+)"', client.get("/answers/averaging").get_data(as_text=True))[1]
    assert after > before


def test_search_and_tag_pages(client):
    html = client.get("/search?q=average+gradient+over+examples").get_data(as_text=True)
    assert html.index("/answers/averaging") < html.index("</ol>")
    assert "Type your question" in client.get("/search").get_data(as_text=True)
    unsure = client.get("/search?q=zebra+quantum").get_data(as_text=True)   # nearest answers, said plainly
    assert "No confident answer" in unsure and '<a class="question"' in unsure
    tag = client.get("/tags/calculus").get_data(as_text=True)
    assert "/answers/sigmoid-slope" in tag and "/answers/wrong-claim" in tag and "/answers/averaging" not in tag


def test_unknown_pages_get_the_404_page(client):
    for path in ["/answers/nope", "/answers/..%2Fsecret", "/tags/nope", "/nowhere", "/answers/UPPER"]:
        response = client.get(path)
        assert response.status_code == 404 and response.mimetype == "text/html"
        assert "404" in response.get_data(as_text=True)


def test_broken_answer_file_is_reported_and_the_others_served(tmp_path):
    folder = write_small_answers(tmp_path / "answers")
    (folder / "broken.md").write_text("---\ntitle: t\nsummary: s\nwhat: 1\n---\n")
    app = create_app({"KB_ANSWERS": str(folder), "KB_DB": str(tmp_path / "db")})
    client = app.test_client()
    html = client.get("/").get_data(as_text=True)
    assert "answers/broken.md:4: unknown key &#39;what&#39;" in html
    assert client.get("/answers/averaging").status_code == 200
    assert client.get("/answers/broken").status_code == 404
    app.extensions["kb"].close()


def test_edited_answer_is_noticed_without_restart(small_app, monkeypatch):
    import kb.library

    parsed = []
    monkeypatch.setattr(kb.library, "parse_answer", lambda path: parsed.append(path.name) or parse_answer(path))
    library = small_app.extensions["kb"]
    library.watch_interval = 0
    client = small_app.test_client()
    path = library.answers_dir / "averaging.md"
    path.write_text(path.read_text().replace("Why do we average the gradient", "Why on earth do we average the gradient"))
    assert "Why on earth do we average" in client.get("/answers/averaging").get_data(as_text=True)
    assert client.get("/api/search?q=earth").get_json()["results"][0]["slug"] == "averaging"
    assert parsed == ["averaging.md"], "only the edited file is parsed again"

    broken = library.answers_dir / "broken-new.md"  # a new broken file: reported, the rest still served
    broken.write_text("---\ntitle: [oops\n---\n")
    assert client.get("/answers/averaging").status_code == 200
    assert any("broken-new.md:3: invalid YAML" in str(error) for error in library.errors)
    broken.unlink()
    (library.answers_dir / "wrong-claim.md").unlink()  # a removed answer is gone
    assert client.get("/answers/wrong-claim").status_code == 404 and library.errors == []
    assert client.get("/api/search?q=earth").get_json()["results"][0]["slug"] == "averaging"
    assert parsed == ["averaging.md", "broken-new.md"]


class Tags(HTMLParser):
    """Every start tag of a page with its attributes: what a browser would build."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def handle_starttag(self, tag, attrs):
        self.seen.append((tag, attrs))


def test_raw_html_and_script_in_answers_are_neutralised(tmp_path):
    folder = tmp_path / "answers"
    folder.mkdir()
    (folder / "evil.md").write_text(answer_text(
        title="Is <script>alert(1)</script> safe?", summary="<img src=x onerror=alert(1)>",
        prose='<script>alert(2)</script>\n\n[click](javascript:alert(3)) <iframe src="https://example.com"></iframe>',
        snippets=['print("<script>alert(4)</script>")\ncheck("<b>bold</b> claim", True, "<script>")']))
    app = create_app({"KB_ANSWERS": str(folder), "KB_DB": str(tmp_path / "db")})
    for path in ["/", "/answers/evil", "/search?q=script"]:
        html = app.test_client().get(path).get_data(as_text=True)
        tags = Tags()
        tags.feed(html)
        assert not {"script", "iframe", "b"} & {name for name, _ in tags.seen}, path
        for name, attrs in tags.seen:
            assert not any(key.startswith("on") for key, _ in attrs), (name, attrs)
            assert not any((value or "").lower().startswith("javascript:") for _, value in attrs), (name, attrs)
        assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html or path != "/answers/evil", "raw HTML is shown as text"
    app.extensions["kb"].close()


def test_edited_code_is_rerun_in_the_background_and_prose_edits_are_not(small_app):
    library = small_app.extensions["kb"]
    library.watch_interval = 0
    client = small_app.test_client()
    ran_before = client.get("/api/answers/averaging/evidence").get_json()["duration_ms"]
    path = library.answers_dir / "averaging.md"
    assert "Some prose." in path.read_text()
    path.write_text(path.read_text().replace("Some prose.", "Some reworded prose."))
    client.get("/")
    library._background.submit(lambda: None).result(timeout=30)  # wait for queued re-runs
    assert client.get("/api/answers/averaging/evidence").get_json()["duration_ms"] == ran_before, "prose: cache hit"
    path.write_text(path.read_text().replace("g = np.arange(4.0)", "g = np.arange(4.0) * 1.0"))
    client.get("/")
    library._background.submit(lambda: None).result(timeout=30)
    fresh = client.get("/api/answers/averaging/evidence").get_json()
    assert fresh["status"] == "passed" and "* 1.0" in fresh["snippets"][0]["code"]
