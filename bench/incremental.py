"""Benchmark 4: how much work an edit costs, for `kb check` and for a running service.

In a temporary copy of answers/: `kb check` with a fresh database (everything runs), then one
answer's prose is edited (a paragraph inserted above its snippets, so their lines move) and
`kb check` runs again, then one of its snippets' code is edited and `kb check` runs again. The
CLI's lines say `cached` or the run's time: counted. Then the same two edits against a service
(`create_app` with the service's defaults over another copy, the database of the first check):
after each edit `library.refresh(force=True)`, counting the runner's runs (wrapping
`Runner.run`) and the index rebuilds that did work (`SearchIndex.rebuild` returning True), and
reading the edited answer's evidence status through the API.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .common import PYTHON, ROOT, env, log, table

SLUG = "gradient-averaging"
LINE_RE = re.compile(r"^\[\d+/\d+\]\s+(\S+)\s+(\S+)\s+\d+/\d+ checks\s+(.+)$")


def edit_prose(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    lines[end + 1:end + 1] = ["", "A sentence added by the benchmark: prose only, the snippets move down.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def edit_code(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    fence = next(i for i, line in enumerate(lines) if re.match(r"^```python(\s+hide)?\s*$", line))
    lines.insert(fence + 1, "edited_by_benchmark = 1")
    path.write_text("\n".join(lines), encoding="utf-8")


def kb_check(answers: Path, db: Path) -> dict:
    started = time.perf_counter()
    out = subprocess.run([PYTHON, "-m", "kb", "check", "--db", str(db), str(answers)], cwd=ROOT, env=env(),
                         capture_output=True, text=True)
    seconds = time.perf_counter() - started
    rows = [m.groups() for m in map(LINE_RE.match, out.stdout.splitlines()) if m]
    ran = sorted(slug for _, slug, took in rows if took.strip() != "cached")
    return {"answers": len(rows), "ran": ran, "cached": len(rows) - len(ran), "seconds": seconds,
            "status": out.returncode, "failed": [slug for status, slug, _ in rows if status != "passed"]}


def service_reload(answers: Path, db: Path) -> dict:
    """The two edits against a Library inside create_app (the service's defaults)."""
    from kb.run.runner import Runner
    from kb.search.index import SearchIndex
    from service import create_app

    runs, rebuilds = [], []
    run, rebuild = Runner.run, SearchIndex.rebuild

    def counting_run(self, answer):
        runs.append(answer.slug)
        return run(self, answer)

    def counting_rebuild(self, answers_):
        did = rebuild(self, answers_)
        rebuilds.append(did)
        return did

    Runner.run, SearchIndex.rebuild = counting_run, counting_rebuild
    steps = []
    try:
        started = time.perf_counter()
        app = create_app({"KB_ANSWERS": str(answers), "KB_DB": str(db)})
        library = app.extensions["kb"].library
        client = app.test_client()

        def settle():
            """Wait for re-runs the library may have queued in the background."""
            background = getattr(library, "_background", None)
            if background is not None:
                background.submit(lambda: None).result(timeout=300)

        settle()
        steps.append({"step": "start (create_app)", "ms": (time.perf_counter() - started) * 1000,
                      "runs": list(runs), "rebuilt": sum(rebuilds),
                      "status": client.get(f"/api/answers/{SLUG}/evidence").get_json()["status"]})
        for name, edit in (("edit prose", edit_prose), ("edit code", edit_code)):
            runs.clear()
            rebuilds.clear()
            edit(answers / f"{SLUG}.md")
            started = time.perf_counter()
            library.refresh(force=True)
            refresh_ms = (time.perf_counter() - started) * 1000
            settle()
            status = client.get(f"/api/answers/{SLUG}/evidence").get_json()["status"]
            steps.append({"step": name, "ms": refresh_ms, "runs": list(runs), "rebuilt": sum(rebuilds),
                          "status": status, "background": getattr(library, "_background", None) is not None})
        library.close()
    finally:
        Runner.run, SearchIndex.rebuild = run, rebuild
    return {"steps": steps}


def run(work: Path) -> dict:
    """Returns the counts, and leaves `work/checked.sqlite3`: evidence of every answer (for serving)."""
    answers, db = work / "answers", work / "kb.sqlite3"
    shutil.copytree(ROOT / "answers", answers)
    pristine = Path(tempfile.mkdtemp(prefix="answers-", dir=work))
    shutil.copytree(ROOT / "answers", pristine, dirs_exist_ok=True)
    results = {}
    log("incremental: kb check with a fresh database")
    results["fresh"] = kb_check(answers, db)
    shutil.copyfile(db, work / "checked.sqlite3")
    edit_prose(answers / f"{SLUG}.md")
    log("incremental: kb check after editing prose")
    results["prose"] = kb_check(answers, db)
    edit_code(answers / f"{SLUG}.md")
    log("incremental: kb check after editing code")
    results["code"] = kb_check(answers, db)
    log("incremental: service reload after editing prose, then code")
    service_db = work / "service.sqlite3"
    shutil.copyfile(work / "checked.sqlite3", service_db)
    results["service"] = service_reload(pristine, service_db)
    return results


def report(r: dict) -> tuple[str, dict]:
    expected = {"fresh": None, "prose": [], "code": [SLUG]}
    rows = []
    for key, label in (("fresh", "fresh database"), ("prose", f"after editing prose of `{SLUG}`"),
                       ("code", f"after editing code of `{SLUG}`")):
        x = r[key]
        rows.append([label, f"{len(x['ran'])} of {x['answers']}", x["cached"], f"{x['seconds']:.1f}",
                     "—" if expected[key] is None else ("yes" if x["ran"] == expected[key] else f"**no**: {x['ran']}")])
    service_rows = []
    want = {"start (create_app)": [], "edit prose": [], "edit code": [SLUG]}
    for step in r["service"]["steps"]:
        service_rows.append([step["step"], f"{step['ms']:.0f}", len(step["runs"]),
                             ", ".join(step["runs"]) or "–", step["rebuilt"], step["status"],
                             "yes" if step["runs"] == want[step["step"]] else "**no**"])
    targets = {
        "kb check: prose edit re-runs nothing": r["prose"]["ran"] == [],
        "kb check: code edit re-runs only that answer": r["code"]["ran"] == [SLUG],
        "service: prose edit re-runs nothing": r["service"]["steps"][1]["runs"] == [],
        "service: code edit re-runs only that answer": r["service"]["steps"][2]["runs"] == [SLUG],
    }
    code_step = r["service"]["steps"][2]
    text = [
        "## 4. Incremental work after an edit",
        "",
        "`python -m kb check --db DB DIR` on a temporary copy of answers/; an answer counts as re-run when its "
        "line shows a time instead of `cached`. The prose edit inserts a paragraph above the snippets (their "
        "lines move; cached evidence is re-based); the code edit adds a line to the first snippet.",
        "",
        table(["kb check", "answers re-run", "cached", "wall time, s", "as expected"], rows),
        "",
        "A running service (`create_app` with the service's defaults over another copy and the database of the "
        "first check), after each edit `library.refresh(force=True)` (what the once-a-second change check does "
        "when a file changed); runs counted by wrapping `Runner.run`, index rebuilds that did work by "
        "`SearchIndex.rebuild` returning True; then the edited answer's evidence status from "
        f"`/api/answers/{SLUG}/evidence`.",
        "",
        table(["service", "refresh, ms", "runs", "which", "index rebuilds", "evidence status after", "as expected"],
              service_rows),
        "",
        ("After the code edit the service re-ran the edited answer itself (in the background), so its page shows "
         "fresh evidence." if code_step["runs"] == [SLUG] else
         "After the code edit the service re-ran nothing: the edited answer shows `pending` evidence until "
         "someone presses \"Run again\" or runs `kb check`." if not code_step["runs"] else
         f"After the code edit the service re-ran: {code_step['runs']}."),
        "",
    ]
    return "\n".join(text), targets
