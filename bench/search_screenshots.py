"""Screenshots of the search page (issue 19): a confident result, "two answers fit" and no answer,
at 390 and 1280 px, into docs/screenshots/search-<case>-<width>.png.

    .venv/bin/python -m bench.search_screenshots [DB]   # DB: a database holding the answers' vectors

Starts the service (Flask's server, `KB_RUN_MISSING=off`) on a copy of DB, drives Debian's
Chromium through playwright, and stops the server it started.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from .common import PYTHON, ROOT, env
from .serving import free_port

CASES = {
    "confident": "my cost becomes nan",
    "two-fit": "relu or tanh for hidden layers",
    "no-answer": "how do I get a certificate for the course",
}
OUT = ROOT / "docs" / "screenshots"


def main(db: Path) -> None:
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="kb-shots-"))
    shutil.copyfile(db, work / "kb.sqlite3")
    port = free_port()
    server = subprocess.Popen([PYTHON, "-m", "flask", "--app", "service", "run", "--port", str(port)], cwd=ROOT,
                              env=env(KB_ANSWERS="answers", KB_DB=str(work / "kb.sqlite3"), KB_RUN_MISSING="off"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        OUT.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            for width, height in ((390, 844), (1280, 900)):
                page = browser.new_page(viewport={"width": width, "height": height})
                for name, query in CASES.items():
                    page.goto(f"{base}/search?q={urllib.parse.quote_plus(query)}")
                    page.screenshot(path=str(OUT / f"search-{name}-{width}.png"))
                    print(name, width, page.locator("#verdict").inner_text()[:80].replace("\n", " "))
                page.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".kb" / "bench-lookup.sqlite3")
