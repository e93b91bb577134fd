"""The HTML pages through Flask's test client: content, evidence, run again, reloads, safety."""
import hashlib
import re
from html.parser import HTMLParser

from helpers import answer_text
from service_fixtures import write_small_answers

from kb.format.answer import parse_answer
from service import create_app


def test_index_lists_questions_with_summary_tags_status_and_search(reader):
    html = reader.get("/").get_data(as_text=True)
    for title in ["Why is the slope of the sigmoid at most 1/4?", "Why do we average the gradient over the m examples?"]:
        assert title in html
    assert 'class="badge passed"' in html and 'class="badge failed"' in html
    assert html.count('role="search"') == 1, "one search box on the home page"
    assert '<form class="search big" action="/search"' in html
    assert 'href="/tags/activation-functions"' in html
    assert '<link rel="alternate" type="application/json" href="/api/answers">' in html
    assert "<math" in reader.get("/tags/calculus").get_data(as_text=True), "summaries render their math"


def test_answer_page_shows_each_snippet_with_its_evidence(reader):
    response = reader.get("/answers/sigmoid-slope")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'data-status="passed"' in html and "1 of 1 check holds" in html
    assert "✓" in html and "σ&#39;(z) never exceeds 1/4" in html.replace("'", "&#39;")
    assert "max: 0.25" in html, "the snippet's printed output is shown"
    [src] = re.findall(r'<img src="([^"]+)"', html)
    assert re.search(r'<img [^>]*width="\d+" height="\d+"', html), "the figure's size is reserved"
    assert src.startswith("/api/answers/sigmoid-slope/figures/0-0.svg")
    assert reader.get(src).mimetype == "image/svg+xml"
    assert 'alt="The sigmoid&#39;s derivative peaks at 1/4"' in html
    assert "Python 3." in html and "NumPy 2." in html
    assert '<form method="post" action="/answers/sigmoid-slope/run"' in html
    assert 'href="/answers/averaging"' in html, "related answers are linked"
    assert '<link rel="alternate" type="application/json" href="/api/answers/sigmoid-slope">' in html


def test_failed_evidence_is_shown_plainly(reader):
    html = reader.get("/answers/wrong-claim").get_data(as_text=True)
    assert 'class="badge failed"' in html and "✗" in html and "the slope exceeds 1/2" in html
    assert "0 of 1 check holds, 1 fails" in html
    assert re.search(r'<span class="condition">false at line \d+: <code>0.25 &gt; 0.5</code></span>', html)


def test_run_again_is_a_plain_form_post_that_comes_back_with_fresh_evidence(small_app, client):
    library = small_app.extensions["kb"].library
    before = library.stamp(library.answers["averaging"])  # when the evidence was stored, in ns
    response = client.post("/answers/averaging/run", headers={"Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 303
    location = response.headers["Location"]
    assert location.startswith("/answers/averaging?was=passed.1.1") and location.endswith("#evidence")
    assert re.match(r'<header id="evidence">\s*<h1>', client.get("/answers/averaging").get_data(as_text=True)
                    .split('<article class="answer">')[1].strip()), "the anchor keeps the title in view"
    page = client.get(location.split("#")[0]).get_data(as_text=True)
    assert re.search(r'<p class="announce" role="status">re-ran in \d+\.\d s: 1 of 1 check still holds', page)
    assert library.stamp(library.answers["averaging"]) > before, "the run stored fresh evidence"


def test_static_files_are_linked_by_content_and_kept_for_good(reader):
    """Pages link the stylesheets, scripts and icon with ?v=<hash of the file>, and the stylesheet
    its math font: such a link is kept for a year (a page view then asks for none of them again);
    the bare path is revalidated."""
    from service.assets import IMMUTABLE

    page = reader.get("/").get_data(as_text=True)
    links = re.findall(r'(?:href|src)="(/(?:static/[\w./-]+|pygments\.css)\?v=[0-9a-f]{12})"', page)
    assert {link.split("?")[0] for link in links} == {"/static/favicon.svg", "/static/style.css", "/pygments.css",
                                                       "/static/page.js"}
    with reader.get("/static/style.css") as style:  # and the stylesheet its font, whose link it carries itself
        fonts = re.findall(r"url\(([\w./-]+\?v=[0-9a-f]{12})\)", style.get_data(as_text=True))
    assert fonts == ["fonts/NotoSansMath-Regular.woff2?v=" + fonts[0][-12:]]
    links += ["/static/" + font for font in fonts]
    for link in links:  # each response closed: a static file's holds the file open
        path, version = link.split("?v=")
        with reader.get(link) as kept:
            assert kept.status_code == 200 and kept.headers["Cache-Control"] == IMMUTABLE, link
            assert hashlib.sha256(kept.data).hexdigest()[:12] == version, "named by its content"
        with reader.get(link, headers={"If-None-Match": kept.headers["ETag"]}) as again:
            assert again.status_code == 304 and again.headers["Cache-Control"] == IMMUTABLE, link
        with reader.get(path) as bare:
            assert "immutable" not in bare.headers.get("Cache-Control", ""), link


def test_search_and_tag_pages(reader):
    html = reader.get("/search?q=average+gradient+over+examples").get_data(as_text=True)
    assert html.index("/answers/averaging") < html.index("</ol>")
    assert "Type your question" in reader.get("/search").get_data(as_text=True)
    unsure = reader.get("/search?q=zebra+quantum").get_data(as_text=True)   # said plainly, nothing near zero listed
    assert "No sure answer to" in unsure and "Deep Learning Specialization" in unsure and "%" not in unsure
    tag = reader.get("/tags/calculus").get_data(as_text=True)
    assert "/answers/sigmoid-slope" in tag and "/answers/wrong-claim" in tag and "/answers/averaging" not in tag


def test_unknown_pages_get_the_404_page(reader):
    for path in ["/answers/nope", "/answers/..%2Fsecret", "/tags/nope", "/nowhere", "/answers/UPPER"]:
        response = reader.get(path)
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
    library = small_app.extensions["kb"].library
    library.watch_interval = 0
    client = small_app.test_client()
    path = library.answers_dir / "averaging.md"
    path.write_text(path.read_text().replace("Why do we average the gradient", "Why on earth do we average the gradient"))
    assert "Why on earth do we average" in client.get("/answers/averaging").get_data(as_text=True)
    assert library.lookup_engine.wait(timeout=60)  # search follows on its background thread
    assert client.get("/api/search?q=earth").get_json()["results"][0]["slug"] == "averaging"
    assert parsed == ["averaging.md"], "only the edited file is parsed again"

    broken = library.answers_dir / "broken-new.md"  # a new broken file: reported, the rest still served
    broken.write_text("---\ntitle: [oops\n---\n")
    assert client.get("/answers/averaging").status_code == 200
    assert any("broken-new.md:3: invalid YAML" in str(error) for error in library.errors)
    broken.unlink()
    (library.answers_dir / "wrong-claim.md").unlink()  # a removed answer is gone
    assert client.get("/answers/wrong-claim").status_code == 404 and library.errors == ()
    assert library.lookup_engine.wait(timeout=60)
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
        assert not {"iframe", "b"} & {name for name, _ in tags.seen}, path
        scripts = [dict(attrs) for name, attrs in tags.seen if name == "script"]
        assert len(scripts) == 1 and scripts[0].keys() == {"src", "defer"}, "only the site's own script"
        assert re.fullmatch(r"/static/page\.js\?v=[0-9a-f]{12}", scripts[0]["src"]) and scripts[0]["defer"] is None
        for name, attrs in tags.seen:
            assert not any(key.startswith("on") for key, _ in attrs), (name, attrs)
            assert not any((value or "").lower().startswith("javascript:") for _, value in attrs), (name, attrs)
        if path == "/answers/evil":
            assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html, "raw HTML is shown as text"
    app.extensions["kb"].close()


def test_edited_code_is_rerun_in_the_background_and_prose_edits_are_not(small_app):
    library = small_app.extensions["kb"].library
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


def topic_answers(folder):
    """Answers in two topics, one without a topic, one that stops at an error, one whose body
    opens with a "Short answer" section repeating its summary."""
    folder.mkdir()
    (folder / "first.md").write_text(answer_text(
        title="What is a shallow network?", summary="One hidden layer.", extra="topic: shallow-networks\n",
        snippets=['check("one is one", 1 == 1, 1)']))
    (folder / "stops.md").write_text(answer_text(
        title="What happens when a snippet raises?", summary="The answer stops there.", extra="topic: deep-networks\n",
        snippets=['check("before", True, 1)\ncheck(\n    "spans lines",\n    1 + 1\n    == 3,\n    2,\n)\n'
                  'raise ValueError("boom")\ncheck("after", True)',
                  'check("later", True)\ncheck("later again", True)']))
    (folder / "loose.md").write_text(answer_text(title="Where does this belong?", summary="Nowhere yet.",
                                                 snippets=['check("fine", True)']))
    (folder / "repeats.md").write_text(answer_text(
        title="Does the summary repeat?", summary="Only once on the page, $g'(z)$.", extra="topic: shallow-networks\n",
        prose="## Short answer\n\nOnly once on the page,\n$g'(z)$.\n\n## More\n\nText.", snippets=['check("ok", True)']))
    return folder


def test_home_groups_one_line_entries_by_topic_in_course_order(tmp_path):
    app = create_app({"KB_ANSWERS": str(topic_answers(tmp_path / "answers")), "KB_DB": str(tmp_path / "db")})
    client = app.test_client()
    html = client.get("/").get_data(as_text=True)
    shallow, deep, other = (html.index(f'id="{key}"') for key in ("shallow-networks", "deep-networks", "other"))
    assert shallow < deep < other, "topics in the course's order, answers without one last"
    assert 'id="neural-network-basics"' not in html, "empty topics are not listed"
    assert '<a href="/topics/shallow-networks">Shallow neural networks' in html and "Course 1, week 3" in html
    section = html[shallow:deep]
    assert section.index("Does the summary repeat?") < section.index("What is a shallow network?")
    assert "One hidden layer." not in html, "one-line entries: titles and badges, no summaries"
    assert 'class="badge passed"' in section and 'class="badge error"' in html[deep:other]
    assert html.count('role="search"') == 1

    page = client.get("/topics/shallow-networks").get_data(as_text=True)
    assert "<h1>Shallow neural networks" in page and "One hidden layer." in page and "Where does this" not in page
    assert '<link rel="alternate" type="application/json" href="/api/answers?topic=shallow-networks">' in page
    assert 'rel="next" href="/topics/deep-networks"' in page
    listing = client.get("/api/answers?topic=shallow-networks").get_json()["answers"]
    assert {a["slug"] for a in listing} == {"first", "repeats"} and {a["topic"] for a in listing} == {"shallow-networks"}
    assert client.get("/api/answers/loose").get_json()["topic"] is None
    assert "No answer in this topic yet" in client.get("/topics/sequence-models").get_data(as_text=True)
    assert client.get("/topics/nope").status_code == 404
    assert client.get("/topics/Shallow-Networks").headers["Location"] == "/topics/shallow-networks"
    assert 'href="/topics/shallow-networks">Course 1, week 3' in client.get("/answers/first").get_data(as_text=True)
    app.extensions["kb"].close()


def test_counts_say_how_far_a_stopped_answer_got_with_the_failing_line(tmp_path):
    app = create_app({"KB_ANSWERS": str(topic_answers(tmp_path / "answers")), "KB_DB": str(tmp_path / "db")})
    client = app.test_client()
    html = client.get("/answers/stops").get_data(as_text=True)
    assert "ran 1 of 2 snippets; 1 of 2 checks so far hold, 3 not reached" in html
    assert re.search(r'false at line \d+: <code>1 \+ 1 == 3</code>', html), "the whole condition, on one line"
    assert html.count('class="evidence skipped"') == 1, "the skipped snippet is marked, not green"
    counts = client.get("/api/answers/stops/evidence").get_json()["counts"]
    assert counts == {"snippets": 2, "snippets_ran": 1, "checks": 2, "checks_passed": 1, "checks_not_reached": 3,
                      "summary": "ran 1 of 2 snippets; 1 of 2 checks so far hold, 3 not reached"}
    app.extensions["kb"].close()


def test_the_lead_is_not_repeated_by_a_short_answer_section(tmp_path):
    app = create_app({"KB_ANSWERS": str(topic_answers(tmp_path / "answers")), "KB_DB": str(tmp_path / "db")})
    client = app.test_client()
    repeated = client.get("/answers/repeats").get_data(as_text=True)
    assert 'class="lead"' not in repeated and repeated.count("Only once on the page") == 1
    assert '<p class="lead">One hidden layer.</p>' in client.get("/answers/first").get_data(as_text=True)
    app.extensions["kb"].close()


def test_pending_page_refreshes_itself_only_while_evidence_is_on_its_way(tmp_path):
    app = create_app({"KB_ANSWERS": str(write_small_answers(tmp_path / "answers")), "KB_DB": str(tmp_path / "db"),
                      "KB_RUN_MISSING": False})
    client = app.test_client()
    idle = client.get("/answers/averaging").get_data(as_text=True)
    assert 'http-equiv="refresh"' not in idle and "press “Run again”" in idle, "nothing runs it: no refresh"
    assert 'class="badge pending"' in idle and "not run yet: 1 snippet, 1 check waiting" in idle
    app.config["KB_RUN_MISSING"] = "background"  # as while start-up runs the missing evidence
    waiting = client.get("/answers/sigmoid-slope").get_data(as_text=True)
    assert '<meta http-equiv="refresh" content="3">' in waiting and "refreshes itself" in waiting
    client.post("/answers/sigmoid-slope/run", headers={"Sec-Fetch-Site": "same-origin"})
    assert 'http-equiv="refresh"' not in client.get("/answers/sigmoid-slope").get_data(as_text=True)
    app.extensions["kb"].close()


def test_busy_run_gets_a_429_page_that_links_back(tmp_path):
    app = create_app({"KB_ANSWERS": str(write_small_answers(tmp_path / "answers")), "KB_DB": str(tmp_path / "db"),
                      "KB_MAX_RUNS": 0, "KB_RUN_COOLDOWN": 0})  # no slot, and no recent run to return
    response = app.test_client().post("/answers/averaging/run", headers={"Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 429 and response.headers["Retry-After"]
    assert '<a class="back" href="/answers/averaging">Back to the answer</a>' in response.get_data(as_text=True)
    app.extensions["kb"].close()


def test_redirects_for_case_and_trailing_slash_and_the_favicon(reader):
    for path, target in [("/answers/Sigmoid-Slope", "/answers/sigmoid-slope"),
                         ("/answers/sigmoid-slope/", "/answers/sigmoid-slope"),
                         ("/tags/calculus/?x=1", "/tags/calculus?x=1"),
                         ("/answers//", "/answers"),
                         ("/favicon.ico", "/static/favicon.svg")]:
        response = reader.get(path)
        assert (response.status_code, response.headers["Location"]) == (301, target), path
    response = reader.get("/", environ_overrides={"PATH_INFO": "//evil.example/"})
    assert response.headers["Location"] == "/evil.example", "never an off-site (scheme-relative) Location"
    with reader.get("/static/favicon.svg") as icon:  # a static file's response holds the file open
        assert icon.mimetype == "image/svg+xml"
    assert reader.get("/answers/UPPER").status_code == 404
    assert reader.get("/api/answers/").status_code == 404, "API URLs are exact"


def test_api_page_for_people_is_made_from_the_openapi_document(reader):
    from service.openapi import spec

    response = reader.get("/api/docs")
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    for path, methods in spec()["paths"].items():
        for method in methods:
            assert f'<span class="method">{method.upper()}</span> {path}</code>' in html
    assert 'id="schema-Evidence"' in html and '<a href="#schema-Counts">Counts</a>' in html
    assert '<link rel="alternate" type="application/json" href="/api/openapi.json">' in html
    assert 'href="/api/docs">JSON API</a>' in reader.get("/").get_data(as_text=True)


def test_the_announcement_after_a_run_says_what_changed(reader):
    page = reader.get("/answers/averaging?was=failed.0.1").get_data(as_text=True)
    assert re.search(r"re-ran in \d+\.\d s: now 1 of 1 check holds \(before: 0 of 1\); failed → passed", page)
    page = reader.get("/answers/wrong-claim?was=failed.0.1").get_data(as_text=True)
    assert re.search(r"re-ran in \d+\.\d s: no change, 0 of 1 check holds", page)
    for junk in ["", "passed", "passed.1", "<script>.1.1", "passed.1.1.1"]:
        assert 'class="announce"' not in reader.get(f"/answers/averaging?was={junk}").get_data(as_text=True)
