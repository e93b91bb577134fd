"""The answer pages in real headless Chromium (Debian's package, driven by Playwright).

A learner's path: open the index, search for a question, open the answer, see its checks hold
and its figure drawn, press "Run again", see fresh evidence; no console errors, no CSP violations.
"""
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from conftest import ROOT
from service import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: install Debian's chromium (.ci/run does)")
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    app = create_app({"KB_ANSWERS": str(ROOT / "answers"), "KB_DB": str(tmp_path_factory.mktemp("db") / "kb.sqlite3")})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    app.extensions["kb"].close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: page.problems.append(f"request failed: {r.url}"))
    yield page
    context.close()


def test_learner_searches_opens_the_answer_and_runs_it_again(page, base_url):
    page.goto(base_url + "/")
    expect(page.locator("h1")).to_contain_text("Questions")
    page.fill("form.search.big input[name=q]", "why do we sum dZ times X over the training examples")
    page.click("form.search.big button")
    expect(page).to_have_url(re.compile(r"/search\?q="))
    page.locator("ol.results a.question").first.click()
    expect(page).to_have_url(re.compile(r"/answers/gradient-averaging#[\w-]+$"))  # at the best section
    expect(page.locator(f"[id='{page.url.split('#')[1]}']")).to_be_visible()

    expect(page.locator(".meta .badge")).to_have_text("passed")
    checks = page.locator("li.check")
    assert checks.count() >= 4
    assert page.locator("li.check.failed").count() == 0
    expect(checks.first.locator(".mark")).to_have_text("✓")
    figure = page.locator("figure img").first
    figure.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=figure.element_handle())
    assert page.locator("math").count() > 0, "math is rendered as MathML"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "answer-page.png"), full_page=True)
    answer_url = page.url

    # The figure opened on its own ("open image in new tab") is drawn, with no CSP violation.
    page.goto(base_url + figure.get_attribute("src"))
    assert page.locator("svg").count() == 1 and page.locator("svg path").count() > 10
    page.screenshot(path=str(ARTIFACTS / "figure-alone.png"))
    page.goto(answer_url)

    before = page.locator(".meta time").get_attribute("datetime")
    page.wait_for_timeout(1100)  # ran_at has one-second resolution
    page.click("form.run button")
    expect(page).to_have_url(re.compile(r"/answers/gradient-averaging#evidence$"))
    after = page.locator(".meta time").get_attribute("datetime")
    assert after > before, "fresh evidence after Run again"
    expect(page.locator(".meta .badge")).to_have_text("passed")
    assert page.problems == []


def test_every_answer_page_is_clean_on_a_phone(browser, base_url):
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark", is_mobile=True)
    page = context.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.goto(base_url + "/")
    links = page.locator("ul.answers a.question")
    slugs = [href.rsplit("/", 1)[1] for href in links.evaluate_all("els => els.map(e => e.getAttribute('href'))")]
    assert len(slugs) >= 3
    for slug in slugs:
        page.goto(f"{base_url}/answers/{slug}")
        expect(page.locator(".meta .badge")).to_have_text("passed")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{slug} scrolls sideways on a phone by {overflow}px"
    page.goto(base_url + "/no-such-page")
    expect(page.locator("h1")).to_contain_text("404")
    context.close()
    assert [p for p in problems if "404" not in p] == []


def test_static_export_works_opened_from_disk(browser, tmp_path):
    from conftest import run_cli

    site = tmp_path / "site"
    built = run_cli("build", site, "--answers", ROOT / "answers", "--db", tmp_path / "db", cwd=tmp_path, timeout=300)
    assert built.returncode == 0, built.stderr
    page = browser.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto((site / "index.html").as_uri())
    page.fill("header.site input[name=q]", "softmax overflow with big logits")
    page.click("header.site button")
    first = page.locator("#search-results a.question").first
    expect(first).to_have_text(re.compile("softmax", re.I))
    first.click()
    expect(page).to_have_url(re.compile(r"answers/softmax\.html$"))
    expect(page.locator(".meta .badge")).to_have_text("passed")
    image = page.locator("figure img").first
    image.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert page.locator("form.run").count() == 0
    page.close()
    assert problems == []
