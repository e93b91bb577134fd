"""Issue 20: nothing an answer, a snippet or a client does takes the service down or corrupts what
others see. One test (or more) per failed probe of the round-3 review
(`../shared/reviews/security.md`, rows cited by number); each failed before the fix.

Through the public surfaces: the service (Flask's test client, or a threaded server where requests
must overlap), `kb check`, `kb gaps`, `kb build`. `tests/test_hostile_service.py` and
`tests/test_runner_escape.py` hold the earlier rounds' cases.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import answer_text, check_json, descendants, run_cli, settle
from test_hostile_service import QuietHandler, request
from test_runner_escape import _as, _unprivileged
from werkzeug.serving import make_server

from kb.run.server import SPARES
from kb.store.evidence import MAX_CHECKS, MAX_CLAIM, MAX_MESSAGE
from service import create_app

INNOCENT = 'check("one and one make two", 1 + 1 == 2, 1 + 1)'


def make_app(tmp_path, answers: dict[str, str], **config):
    folder = tmp_path / "answers"
    folder.mkdir(exist_ok=True)
    for slug, code in answers.items():
        (folder / f"{slug}.md").write_text(answer_text(title=f"What does {slug} do?", snippets=[code]))
    return create_app({"KB_ANSWERS": str(folder), "KB_DB": str(tmp_path / "kb.sqlite3"), "TESTING": True,
                       "KB_RUN_MISSING": "off", "KB_RUN_COOLDOWN": 0, **config})


@pytest.fixture
def apps():
    made = []
    yield made
    for app in made:
        app.extensions["kb"].close()


def run(client, slug):
    response = client.post(f"/api/answers/{slug}/run", json={})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def sleepers(marker: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout.split()


# --- 1. The fork server cannot be touched by its children (rows 38, 39) --------------------------

STOPPER = '''import os, signal, subprocess
subprocess.Popen(["setsid", "sleep", "4244.5"])
os.kill(os.getppid(), signal.SIGSTOP)
os.kill(os.getppid(), signal.SIGKILL)
check("ran on", True)'''


@pytest.mark.parametrize("namespace", ["on", "off"])
def test_a_snippet_cannot_stop_or_kill_its_fork_server(tmp_path, apps, monkeypatch, namespace):
    """Rows 38-39. In a PID namespace the server is the children's init: the kernel drops their
    signals to it, and nothing they start outlives it. Without one (`KB_PID_NAMESPACE=off`, as where
    the kernel refuses) the runner sees its server stopped or dead, replaces it, and runs the
    innocent answers again: none is published as a timeout."""
    monkeypatch.setenv("KB_PID_NAMESPACE", namespace)
    apps.append(app := make_app(tmp_path, {"stopper": STOPPER, "innocent": INNOCENT}, KB_TIMEOUT=10))
    client = app.test_client()
    first = run(client, "stopper")
    for _ in range(SPARES + 2):  # past the spares forked before the server was touched
        evidence = run(client, "innocent")
        assert evidence["status"] == "passed", evidence["snippets"][0]["error"]
    assert client.get("/api/answers/innocent/evidence").get_json()["status"] == "passed"
    if namespace == "on":
        assert first["status"] == "passed", first["snippets"][0]["error"]  # the signals went nowhere
        assert settle(lambda: not sleepers("4244.5")), "the setsid sleep went with its run"
    else:
        assert first["status"] in ("passed", "error")
        for pid in sleepers("4244.5"):  # the fallback's known limit (README): killed here by PID
            os.kill(int(pid), signal.SIGKILL)


def _serving_pid(before: set[int]) -> int:
    """The fork server's serving process: the one whose children are the spares."""
    found = {pid: parent for pid, (parent, cmd) in descendants(os.getpid()).items()
             if pid not in before and "kb.run.server" in cmd}
    return next((pid for pid in found if list(found.values()).count(pid) >= SPARES), None)


@pytest.mark.parametrize("namespace", ["on", "off"])
def test_a_wedged_fork_server_is_replaced_without_a_false_timeout(tmp_path, apps, monkeypatch, namespace):
    """Row 39 from outside: whatever stops the fork server, the next run finds out within a fraction
    of a second, starts a new one and runs the answer there; `timeout` is never stored for it."""
    monkeypatch.setenv("KB_PID_NAMESPACE", namespace)
    before = set(descendants(os.getpid()))
    apps.append(app := make_app(tmp_path, {"innocent": INNOCENT}, KB_TIMEOUT=30))
    client = app.test_client()
    assert run(client, "innocent")["status"] == "passed"
    server = settle(lambda: _serving_pid(before))
    for pid in [server, *(p for p, (parent, _) in descendants(server).items() if parent == server)]:
        os.kill(pid, signal.SIGSTOP)  # the server and its waiting spares: nothing can take a run
    try:
        evidence = run(client, "innocent")
    finally:
        for pid in [server, *descendants(server)]:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert evidence["status"] == "passed", evidence["snippets"][0]["error"]
    assert evidence["duration_ms"] < 30_000  # bounded by the answer's own time, not a timeout
    assert client.get("/api/answers/innocent/evidence").get_json()["status"] == "passed"
    assert settle(lambda: _serving_pid(before) not in (None, server)), "a new fork server took over"


# --- 2. Per-answer bounds, not per process (row 29) --------------------------------------------------

FORKED_HOGS = '''import os, time
import numpy as np
kids = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        hoard = np.ones(150 * 2**20 // 8)  # 150 MiB, touched: resident
        time.sleep(60)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)'''
PROCESS_FLOOD = '''import subprocess
kids = [subprocess.Popen(["sleep", "4245.5"]) for _ in range(100)]
for kid in kids:
    kid.wait()'''


@pytest.mark.parametrize("who", ["root", "nobody"])
def test_memory_and_processes_are_bounded_per_answer(tmp_path, who):
    """Row 29: three forks of 150 MiB each under a 256 MiB cap are one run over its cap; 100
    processes at once are over the run's 64 (as root, whom RLIMIT_NPROC does not bind)."""
    user = None
    if who == "nobody":
        if os.geteuid() != 0:
            user = None  # already unprivileged: run as is
        else:
            user = _unprivileged()
            if user is None:
                pytest.skip("running as root and cannot switch to an unprivileged user that can run this Python "
                            "(and start it again) and read the project")
    elif os.geteuid() != 0:
        pytest.skip("not root")
    work = tmp_path / "work"
    (work / "answers").mkdir(parents=True)
    (work / "answers" / "hogs.md").write_text(answer_text(snippets=[FORKED_HOGS]))
    (work / "answers" / "flood.md").write_text(answer_text(snippets=[PROCESS_FLOOD]))
    if user is not None:
        for path in [work, *work.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
    env = {"PATH": os.environ["PATH"], "HOME": str(work), "TMPDIR": str(work)}
    if user is not None:  # its capability to read root's Python does not reach a user namespace
        env["KB_PID_NAMESPACE"] = "off"
    proc = subprocess.run([*(_as(user) if user else []), sys.executable, "-m", "kb", "check", str(work / "answers"),
                           "--json", "--memory-mb", "256", "--timeout", "40", "--db", str(work / "kb.sqlite3")],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    evidence = {e["slug"]: e for e in json.loads(proc.stdout)}
    hogs = evidence["hogs"]["snippets"][0]
    assert hogs["status"] == "error" and hogs["error"]["type"] == "MemoryError", hogs
    assert "together" in hogs["error"]["message"] and "256 MiB" in hogs["error"]["message"]
    flood = evidence["flood"]["snippets"][0]
    if user is None:
        assert flood["status"] == "error" and "processes at once" in flood["error"]["message"], flood
    else:  # RLIMIT_NPROC binds an unprivileged user first: Popen fails inside the snippet
        assert flood["status"] == "error", flood
    assert settle(lambda: not sleepers("4245.5"))


# --- 3. Bounds wherever input grows (rows 44, 45, 59) -----------------------------------------------

HUGE_EVIDENCE = f'''check("h" * (2 << 20), True)
for i in range({MAX_CHECKS} + 499):
    check(f"claim {{i}}", i < {MAX_CHECKS} + 399)
raise ValueError("m" * (2 << 20))'''


def test_huge_evidence_is_cut_and_flagged_and_pages_come_from_cache(tmp_path, apps, monkeypatch):
    """Row 44: 1,500 checks, a 2 MiB claim and a 2 MiB message are cut to the bounds, flagged
    `truncated` with notes, shown on the page and by `kb check` at file:line. Row 59: `?was=`
    serves the cached page with one line added; it never renders the answer again."""
    apps.append(app := make_app(tmp_path, {"huge": HUGE_EVIDENCE}))
    client = app.test_client()
    evidence = run(client, "huge")
    snippet = evidence["snippets"][0]
    assert len(snippet["checks"]) == MAX_CHECKS and snippet["truncated"] is True
    assert snippet["error"]["type"] == "ValueError" and len(snippet["error"]["message"]) <= MAX_MESSAGE + 1
    assert any("not kept (100 of them failed)" in note for note in snippet["notes"]), snippet["notes"]
    assert evidence["status"] == "error"
    page = client.get("/answers/huge")
    assert page.status_code == 200 and len(page.data) < 1 << 20 and b"Cut or replaced" in page.data

    pages = sys.modules["service.pages"]  # the module (`service.pages` is its blueprint)
    renders = []
    render = pages._answer_page
    monkeypatch.setattr(pages, "_answer_page", lambda *a: renders.append(a) or render(*a))
    plain = client.get("/answers/huge").data
    for was in ("x", "error.1000.1000", "passed.3.4", "pending.0.0"):
        response = client.get(f"/answers/huge?was={was}")
        assert response.status_code == 200
        assert response.data.replace(b"\n", b"") .startswith(plain.split(b"<!--kb:announce-->")[0].replace(b"\n", b""))
    assert b"re-ran in" in client.get("/answers/huge?was=passed.3.4").data
    assert renders == [], "every ?was= page came from the page cache"

    proc = run_cli("check", tmp_path / "answers", "--db", tmp_path / "cli.sqlite3", cwd=tmp_path)
    shown = proc.stdout + proc.stderr
    assert "huge.md:8: 500 checks beyond the first 1,000 not kept" in shown, shown[-3000:]
    assert f"a claim cut at {MAX_CLAIM:,}" in shown and "the error message cut at" in shown
    assert len(shown) < 300_000


def test_an_oversized_answer_file_is_refused_at_file_and_line(tmp_path, apps):
    """Row 45: a 2 MiB answer file is a format error (`file:1: …`), not minutes of parsing and
    embedding; the other answers are served."""
    apps.append(app := make_app(tmp_path, {"innocent": INNOCENT}))
    (tmp_path / "answers" / "big.md").write_text(answer_text(prose="w" * (2 << 20)))
    app.extensions["kb"].library.refresh(force=True)
    client = app.test_client()
    assert client.get("/answers/big").status_code == 404
    assert "big.md:1: the file is 2.0 MiB; an answer file may be at most 1 MiB" in client.get("/").get_data(as_text=True)
    assert client.get("/answers/innocent").status_code == 200
    proc = run_cli("check", tmp_path / "answers" / "big.md", cwd=tmp_path)
    assert proc.returncode == 2 and "big.md:1: the file is 2.0 MiB" in proc.stdout + proc.stderr


def test_oversized_figures_are_dropped_with_a_note(tmp_path):
    code = '''import matplotlib.pyplot as plt
import numpy as np
plt.figure().suptitle("small")
plt.plot([0, 1], [1, 0])
plt.figure().suptitle("huge")
plt.scatter(np.arange(40000), np.arange(40000) % 97)'''
    (tmp_path / "answers").mkdir()
    (tmp_path / "answers" / "figs.md").write_text(answer_text(snippets=[code]))
    _, evidence = check_json(tmp_path / "answers", cwd=tmp_path)
    snippet = evidence["figs"]["snippets"][0]
    assert snippet["figure_alts"] == ["small"] and snippet["truncated"] is True
    assert any("not kept" in note and "MiB of SVG" in note for note in snippet["notes"]), snippet["notes"]


# --- 4. Text that cannot be encoded is shown, never fatal (rows 35, 60) ---------------------------

SURROGATES = r'''import sys
print("out \udcff")
sys.stderr.write("err \ud800\n")
check("claim \udfff", True, "value \udc80")
check("a claim with \x1b[31mred\x1b[0m in it", False)
raise ValueError("message \udcfe")'''


def test_lone_surrogates_are_replaced_and_flagged_everywhere(tmp_path, apps):
    """Row 35: `print("\\udcff")` made the page, the API and `kb build` fail for good. Now every
    surface shows U+FFFD and says so; `kb check` prints no terminal escape from a claim."""
    apps.append(app := make_app(tmp_path, {"surrogates": SURROGATES}))
    client = app.test_client()
    evidence = run(client, "surrogates")
    snippet = evidence["snippets"][0]
    assert snippet["stdout"] == "out \ufffd\n" and snippet["stderr"] == "err \ufffd\n"
    assert snippet["checks"][0]["claim"] == "claim \ufffd" and snippet["checks"][0]["value"] == "value \ufffd"
    assert snippet["error"]["message"] == "message \ufffd"
    assert any("lone surrogates" in note for note in snippet["notes"]) and snippet["truncated"] is True
    for url in ("/answers/surrogates", "/api/answers/surrogates", "/api/answers/surrogates/evidence", "/"):
        response = client.get(url)
        assert response.status_code == 200 and "\ufffd" in response.get_data(as_text=True) or url == "/", url
    proc = run_cli("build", tmp_path / "site", "--answers", tmp_path / "answers", "--db", tmp_path / "kb.sqlite3",
                   cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\ufffd" in (tmp_path / "site" / "answers" / "surrogates.html").read_text()
    proc = run_cli("check", tmp_path / "answers", "--db", tmp_path / "cli.sqlite3", cwd=tmp_path)
    shown = proc.stdout + proc.stderr
    assert "\x1b" not in shown and "\\x1b[31mred" in shown and "\ufffd" in shown, shown


def test_old_evidence_with_surrogates_is_cleaned_when_read(tmp_path, apps):
    """Evidence stored before this fix (the surrogate escaped in its JSON) no longer breaks the page."""
    apps.append(app := make_app(tmp_path, {"innocent": INNOCENT}))
    client = app.test_client()
    run(client, "innocent")
    with sqlite3.connect(tmp_path / "kb.sqlite3") as db:
        db.execute("UPDATE evidence SET record = replace(record, 'one and one', 'one \\udcff one')")
    app.extensions["kb"].responses.items.clear()
    for url in ("/answers/innocent", "/api/answers/innocent"):
        response = client.get(url)
        assert response.status_code == 200 and "one \ufffd one" in response.get_data(as_text=True), url


def test_kb_gaps_prints_no_terminal_escapes(tmp_path, apps):
    """Row 60: an anonymous search is printed by `kb gaps` with its control characters escaped."""
    apps.append(app := make_app(tmp_path, {"innocent": INNOCENT}))
    client = app.test_client()
    assert client.get("/api/search", query_string={"q": "zzqx \x1b[31m qqzz \x1b]0;pwned\x07"}).status_code == 200
    proc = run_cli("gaps", "--db", tmp_path / "kb.sqlite3", cwd=tmp_path)
    assert proc.returncode == 0 and "zzqx" in proc.stdout, proc
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout and "\\x1b" in proc.stdout


# --- 5. Runs of one answer are one run (rows 47, 62, 63) ------------------------------------------

def _slow(marker: Path, seconds: float = 3) -> str:
    return f'''import time
with open({str(marker)!r}, "a") as runs:
    runs.write("run\\n")
time.sleep({seconds})
check("slept", True)'''


@pytest.fixture
def threaded(tmp_path, apps):
    def serve(app):
        server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"
    servers: list = []
    yield serve
    for server in servers:
        server.shutdown()


def test_waiters_on_one_answer_are_bounded(tmp_path, visible, apps, threaded):
    """Row 47: ten POSTs for an answer that takes 3 s: one runs, KB_MAX_RUNS wait for it, the
    rest get 429 with Retry-After at once instead of holding a thread for the whole run."""
    marker = visible / "runs.log"
    apps.append(app := make_app(tmp_path, {"slow": _slow(marker)}, KB_MAX_RUNS=1, KB_TIMEOUT=20))
    base = threaded(app)
    results = []

    def post():
        status, headers, body = request(f"{base}/api/answers/slow/run", "POST")
        results.append((status, headers.get("Retry-After"), headers.get("Cache-Control")))

    posts = [threading.Thread(target=post) for _ in range(10)]
    for thread in posts:
        thread.start()
    for thread in posts:
        thread.join(60)
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(200) == 2 and statuses.count(429) == 8, results  # one run + one waiter
    assert all(retry and cache == "no-store" for status, retry, cache in results if status == 429)
    assert marker.read_text() == "run\n", "one run"


def test_the_start_up_run_and_a_posted_run_are_one_run(tmp_path, visible, apps):
    """Row 63: a new answer's background start-up run and a POST for it at once ran twice."""
    marker = visible / "runs.log"
    apps.append(app := make_app(tmp_path, {"slow": _slow(marker, 2)}, KB_RUN_MISSING="background"))
    assert run(app.test_client(), "slow")["status"] == "passed"
    app.extensions["kb"].library.wait_for_evidence(60)
    assert marker.read_text() == "run\n"


def test_kb_runs_off_runs_nothing_ever(tmp_path, visible, apps, monkeypatch):
    """Row 62: KB_RUNS=off ran a new answer's code at start-up (KB_RUN_MISSING's default)."""
    marker = visible / "runs.log"
    monkeypatch.setenv("KB_RUNS", "off")
    monkeypatch.delenv("KB_RUN_MISSING", raising=False)
    apps.append(app := make_app(tmp_path, {"slow": _slow(marker, 0)}, KB_RUN_MISSING="background"))
    app.extensions["kb"].library.wait_for_evidence(60)
    (tmp_path / "answers" / "slow.md").write_text(answer_text(snippets=[_slow(marker, 0) + "\nx = 1"]))
    app.extensions["kb"].library.refresh(force=True)
    client = app.test_client()
    assert client.get("/answers/slow").status_code == 200
    assert client.post("/api/answers/slow/run", json={}).status_code == 403
    app.extensions["kb"].close()
    assert not marker.exists(), "no code ran"


# --- 6. Trusted hosts; no-store on errors (rows 9, 57) ----------------------------------------------

def test_requests_naming_another_host_are_refused(tmp_path, visible, apps):
    """Row 9 (DNS rebinding): a page on evil.example rebound to 127.0.0.1 could start runs."""
    marker = visible / "runs.log"
    apps.append(app := make_app(tmp_path, {"slow": _slow(marker, 0)}))
    client = app.test_client()
    evil = {"Host": "evil.example:5000", "Origin": "http://evil.example:5000"}
    for method, url in (("POST", "/api/answers/slow/run"), ("GET", "/answers/slow"), ("GET", "/")):
        response = client.open(url, method=method, headers=evil, json={} if method == "POST" else None)
        assert response.status_code == 400 and response.mimetype == "application/problem+json", url
        assert response.headers["Cache-Control"] == "no-store"
    response = client.post("/answers/slow/run", headers={**evil, "Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 400
    assert not marker.exists(), "nothing ran"
    for host in ("localhost:5000", "127.0.0.1:8080", "localhost"):
        assert client.get("/answers/slow", headers={"Host": host}).status_code == 200, host
    (tmp_path / "other").mkdir()
    apps.append(other := make_app(tmp_path / "other", {}, KB_TRUSTED_HOSTS="kb.example.org"))
    assert other.test_client().get("/healthz", headers={"Host": "kb.example.org"}).status_code == 200
    assert other.test_client().get("/healthz", headers={"Host": "localhost"}).status_code == 400
    missing = client.get("/api/answers/nope")
    assert missing.status_code == 404 and missing.headers["Cache-Control"] == "no-store"


# --- 7. Corruption is detected and healed per record (rows 51, 52) ---------------------------------

def test_a_corrupt_record_is_dropped_rederived_and_reported(tmp_path, apps):
    apps.append(app := make_app(tmp_path, {"innocent": INNOCENT, "other": INNOCENT + "\nx = 2"},
                                KB_RUN_MISSING="wait"))
    app.extensions["kb"].close()
    with sqlite3.connect(tmp_path / "kb.sqlite3") as db:
        db.execute("UPDATE evidence SET record = substr(record, 1, 40) || 'garbage' WHERE slug = 'innocent'")
    apps.append(app := make_app(tmp_path, {}, KB_RUN_MISSING="off"))
    client = app.test_client()
    health = client.get("/healthz").get_json()
    assert health["status"] == "degraded" and "innocent" in " ".join(health["problems"]), health
    assert client.get("/").status_code == 200 and client.get("/api/answers").status_code == 200
    assert client.get("/answers/innocent").status_code == 200
    assert client.get("/api/answers/other/evidence").get_json()["status"] == "passed"
    # Derived again where runs are on: the next start finds it missing and runs it.
    apps.append(app := make_app(tmp_path, {}, KB_RUN_MISSING="wait"))
    assert app.test_client().get("/api/answers/innocent/evidence").get_json()["status"] == "passed"


def test_the_gaps_survive_a_corrupt_store(tmp_path, apps):
    """Row 51: the gaps (not derived from the answers) were lost with a store moved aside."""
    apps.append(app := make_app(tmp_path, {"innocent": INNOCENT}))
    app.test_client().get("/api/search", query_string={"q": "how do zebras photosynthesise"})
    app.extensions["kb"].close()
    apps.remove(app)
    with open(tmp_path / "kb.sqlite3", "r+b") as db:
        db.write(os.urandom(64))
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / 'kb.sqlite3'}{suffix}").unlink(missing_ok=True)
    apps.append(make_app(tmp_path, {}))
    assert list(tmp_path.glob("kb.sqlite3.corrupt-*")), "the store was moved aside"
    proc = run_cli("gaps", "--db", tmp_path / "kb.sqlite3", cwd=tmp_path)
    assert "how do zebras photosynthesise" in proc.stdout, proc


# --- 8. Answer files are real files inside the answers directory (rows 31, 46) ---------------------

def test_symlinks_out_of_the_answers_directory_are_refused(tmp_path, apps):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.md").write_text(answer_text(title="Outside?", snippets=[INNOCENT]))
    apps.append(app := make_app(tmp_path, {"innocent": INNOCENT}))
    (tmp_path / "answers" / "linked.md").symlink_to(outside / "secret.md")
    (tmp_path / "answers" / "environ.md").symlink_to("/proc/self/environ")
    app.extensions["kb"].library.refresh(force=True)
    client = app.test_client()
    assert client.get("/answers/linked").status_code == 404
    home = client.get("/").get_data(as_text=True)
    assert "linked.md:1: a symbolic link to a file outside its answers directory" in home
    assert str(outside) not in home and "/proc/" not in home and "secret" not in home
    proc = run_cli("check", tmp_path / "answers", "--db", tmp_path / "cli.sqlite3", cwd=tmp_path)
    assert proc.returncode == 2 and "linked.md:1: a symbolic link" in proc.stdout + proc.stderr
