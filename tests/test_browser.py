"""The answer pages in real headless Chromium (Debian's package, driven by Playwright).

A learner's path: open the index, search for a question, open the answer, see its checks hold
and its figure drawn, press "Run again", see fresh evidence; no console errors, no CSP violations.
Then what a designer checks at 1280 and 390 px: nothing clipped, nothing scrolls the page
sideways, primes drawn at a legible size in the served math font. Screenshots go to
test-artifacts/ (after-*.png; before-*.png were taken on the branch before issue 11).
"""
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
from helpers import ROOT, copy_database
from werkzeug.serving import make_server

from service import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: install Debian's chromium (.ci/run does)")
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, real_evidence):
    db = tmp_path_factory.mktemp("db") / "kb.sqlite3"
    copy_database(real_evidence, db)  # with its write-ahead log: the vectors are there
    app = create_app({"KB_ANSWERS": str(ROOT / "answers"), "KB_DB": str(db),
                      "KB_RUN_COOLDOWN": 0})  # "Run again" right after start-up runs again
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
    expect(page).to_have_url(re.compile(r"/answers/gradient-averaging$"))  # at the top: title, summary, short answer
    expect(page.locator("article.answer h1")).to_be_in_viewport()

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
    # What the button says once the form is submitting (window's listener runs after page.js's on
    # document), kept in sessionStorage across the navigation the POST starts.
    page.evaluate("""() => window.addEventListener('submit', () => { const b = document.querySelector('form.run button');
        sessionStorage.setItem('busy', JSON.stringify([b.textContent, b.disabled])); })""")
    page.click("form.run button")
    expect(page).to_have_url(re.compile(r"/answers/gradient-averaging\?was=passed\.\d+\.\d+#evidence$"))
    after = page.locator(".meta time").get_attribute("datetime")
    assert after > before, "fresh evidence after Run again"
    expect(page.locator(".meta .badge")).to_have_text("passed")
    assert page.evaluate("JSON.parse(sessionStorage.getItem('busy'))") == ["Running…", True], "busy while running"
    expect(page.locator(".announce")).to_have_text(re.compile(r"re-ran in \d+\.\d s: (\d+) of \1 checks still hold"))
    title = page.locator("article h1").bounding_box()
    assert 0 <= title["y"] and title["y"] + title["height"] <= 900, "the title stays in view"
    assert page.problems == []


def test_static_export_works_opened_from_disk(browser, real_site):
    site = real_site
    page = browser.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto((site / "index.html").as_uri())
    page.fill("form.search.big input[name=q]", "softmax overflow")
    page.click("form.search.big button")
    first = page.locator("#search-results a.question").first
    expect(first).to_have_text(re.compile("softmax", re.I))
    first.click()
    expect(page).to_have_url(re.compile(r"answers/softmax\.html$"))
    expect(page.locator(".meta .badge")).to_have_text("passed")
    image = page.locator("figure img").first
    image.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    page.evaluate("document.fonts.ready")  # the math font, linked with ?v= from the stylesheet, loads from disk
    assert page.evaluate("""() => [...document.fonts].some(f => f.family.includes('Noto Sans Math') && f.status === 'loaded')""")
    assert page.locator("form.run").count() == 0
    page.close()
    assert problems == []


# One round trip per page: what overflows (clipped, scrolling without a cue, the page itself), the
# figures drawn without a size, and the evidence badge.
SIDEWAYS = """() => { const found = { clipped: [], bare: [], scrollers: 0 };
  for (const el of document.querySelectorAll('body *')) {
    if (el.clientWidth === 0 || el.scrollWidth <= el.clientWidth + 1) continue;
    const s = getComputedStyle(el), name = el.tagName.toLowerCase() + '.' + el.className;
    if (s.overflowX === 'hidden' || s.overflowX === 'clip') found.clipped.push(name);
    else if (s.overflowX === 'auto' || s.overflowX === 'scroll') {
      if (s.backgroundImage.includes('gradient')) found.scrollers += 1; else found.bare.push(name);
    }
  }
  found.page = document.scrollingElement.scrollWidth - innerWidth;
  found.unsized = [...document.querySelectorAll('figure img')]
    .filter(i => !(parseInt(i.getAttribute('width')) > 0 && parseInt(i.getAttribute('height')) > 0)).map(i => i.src);
  found.badge = document.querySelector('.meta .badge')?.textContent ?? null;
  return found; }"""


@pytest.mark.parametrize("width, height", [(1280, 900), (390, 844)])
def test_nothing_is_clipped_and_the_page_never_scrolls_sideways(browser, base_url, width, height):
    """Every page at a desktop's width and on a phone (dark, as many phones are set): wide code and
    display math scroll inside boxes that show they do (a shadow on the side that hides more);
    nothing is cut off, no page is wider than the screen, every answer's evidence has passed, and
    no page logs an error or a warning."""
    phone = width < 500
    context = browser.new_context(viewport={"width": width, "height": height}, is_mobile=phone,
                                  color_scheme="dark" if phone else "light")
    page = context.new_page()
    problems = []
    page.on("console", lambda m: problems.append(f"{page.url}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"{page.url}: {e}"))
    page.goto(base_url + "/")
    slugs = [href.rsplit("/", 1)[1] for href in
             page.locator("ul.entries a.question").evaluate_all("els => els.map(e => e.getAttribute('href'))")]
    assert len(slugs) >= 20
    assert page.locator("section.topic h2").count() >= 3, "the home page groups questions by topic"
    assert page.locator("input[type=search]").count() == 1, "one search box"
    box = page.locator("input[type=search]").bounding_box()
    assert box["width"] >= 200 and box["x"] + box["width"] <= width, "the search box fits, placeholder and all"
    badges = page.locator("ul.entries li .badge")
    assert badges.count() == len(slugs) and badges.first.bounding_box()["x"] + badges.first.bounding_box()["width"] <= width
    scrollers = 0
    for path in ["/", "/api/docs", "/topics/shallow-networks", *(f"/answers/{slug}" for slug in slugs)]:
        page.goto(base_url + path)
        found = page.evaluate(SIDEWAYS)
        assert found["page"] <= 0, f"{path} scrolls sideways by {found['page']}px at {width}px"
        assert found["clipped"] == [], f"{path}: clipped at {width}px: {found['clipped']}"
        assert found["bare"] == [], f"{path}: scrolls without a visible cue at {width}px: {found['bare']}"
        assert found["unsized"] == [], f"{path}: figures without width and height: {found['unsized']}"
        if path.startswith("/answers/"):
            assert found["badge"] == "passed", f"{path}: evidence {found['badge']}"
        scrollers += found["scrollers"]
    if phone:
        assert scrollers > 10, "wide code does meet a phone: the check above is not vacuous"
        page.goto(base_url + "/no-such-page")
        expect(page.locator("h1")).to_contain_text("404")
    else:  # on a desktop, code may be wider than the prose
        page.goto(base_url + "/answers/relu-vs-sigmoid")
        code, prose = (page.locator(sel).first.bounding_box()["width"] for sel in (".snippet", ".body > p"))
        assert code > prose * 1.2
    context.close()
    assert [p for p in problems if "404" not in p] == []


def test_primes_are_drawn_at_a_legible_size_in_the_served_math_font(browser, base_url):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(base_url + "/answers/relu-vs-sigmoid")
    page.evaluate("document.fonts.ready")
    assert page.evaluate("""() => [...document.fonts].some(f => f.family.includes('Noto Sans Math') && f.status === 'loaded')""")
    primes = page.evaluate("""() => [...document.querySelectorAll('math mo')].filter(m => m.textContent === '′').map(m => {
        const box = m.getBoundingClientRect(), base = m.previousElementSibling;
        return {width: box.width, height: box.height, size: parseFloat(getComputedStyle(m).fontSize),
                base: parseFloat(getComputedStyle(base).fontSize)}; })""")
    assert len(primes) >= 3
    for prime in primes:  # a superscript prime was 0.6 of the letter's size: 2.5 x 3 px at 17.6 px
        assert prime["size"] == prime["base"], "the prime is not shrunk to a script size"
        assert prime["width"] >= 0.2 * prime["base"] and prime["height"] >= 0.25 * prime["base"], prime
    page.close()


def test_after_screenshots_of_an_answer_and_the_home_page(browser, base_url):
    ARTIFACTS.mkdir(exist_ok=True)
    for width, height in ((1280, 900), (390, 844)):
        context = browser.new_context(viewport={"width": width, "height": height}, is_mobile=width < 500)
        page = context.new_page()
        for name, path in (("answer", "/answers/relu-vs-sigmoid"), ("home", "/")):
            page.goto(base_url + path)
            page.evaluate("document.fonts.ready")
            for image in page.locator("figure img").all():
                image.scroll_into_view_if_needed()
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
            expect(page.locator("main h1")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / f"after-{name}-{width}.png"), full_page=True)
        context.close()
