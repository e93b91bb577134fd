"""Data safety: the SQLite store survives the service being killed mid-run.

gunicorn (docs/service.md's production shape, one worker) serves a temporary copy of a few answers,
one of them slow. While that answer is re-running, and quick re-runs keep writing evidence, the
whole server process group gets `kill -9`. Then: no runner process is left, not even the one
the slow answer started (the fork server, in a session of its own, sees its stdin close and kills
its children's process groups), the answers directory is byte-for-byte unchanged, and a restarted service opens
on the same file with every answer's evidence intact and the file passing `PRAGMA integrity_check`.
On the restarted service, `kill -9` of the worker alone shows the fork server leaving with its
parent (its stdin closes); a clean stop leaves no process and no scratch directory behind.
"""
import hashlib
import http.client
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from helpers import alive, answer_text, descendants, run_cli, settle
from service_fixtures import write_small_answers

from kb.library import Library

SLOW = "slow-answer"
# It starts a process of its own, which must not outlive the service either.
SLOW_CODE = ('import subprocess, time\nhelper = subprocess.Popen(["sleep", "300"])\ntime.sleep(3)\n'
             'helper.kill()\ncheck("woke up", True)')



def _request(url, method):
    """A POST is a run: the API takes it as JSON only."""
    if method != "POST":
        return urllib.request.Request(url, method=method)
    return urllib.request.Request(url, data=b"{}", method=method, headers={"Content-Type": "application/json"})


def request(url, method="GET", timeout=30):
    try:
        with urllib.request.urlopen(_request(url, method), timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def fingerprint(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


class Service:
    """gunicorn in its own process group (so that one kill reaches all of it), on a free port."""

    def __init__(self, root: Path, answers: Path, db: Path, scratch: Path):
        env = {**os.environ, "KB_ANSWERS": str(answers), "KB_DB": str(db), "KB_RUN_COOLDOWN": "0",
               "TMPDIR": str(scratch)}  # the runner's scratch directories (kill -9 leaves them behind)
        self.log = root / f"gunicorn-{time.monotonic_ns()}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads", "4",
                 "-b", "127.0.0.1:0", "--no-control-socket", "service:create_app()"],
                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        found = settle(lambda: re.search(r"Listening at: (http://\S+)", self.log.read_text()), within=30)
        assert found, self.log.read_text()
        self.url = found[1]
        # Up once it answers (start-up runs the answers without cached evidence).
        assert settle(lambda: self._healthy(), within=90), self.log.read_text()

    def _healthy(self):
        try:
            return request(f"{self.url}/healthz", timeout=5)[0] == 200
        except OSError:
            return False

    def processes(self) -> dict[int, str]:
        return {self.process.pid: "gunicorn master", **{p: cmd for p, (_, cmd) in descendants(self.process.pid).items()}}

    def kill(self):
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


def evidence_by_slug(url: str, slugs) -> dict:
    found = {}
    for slug in slugs:
        status, body = request(f"{url}/api/answers/{slug}/evidence")
        assert status == 200, (slug, status, body)
        found[slug] = json.loads(body)
    return found


def outcome(evidence: dict):
    """What a run showed, without when and how long."""
    return (evidence["status"], [(s["index"], s["status"], s["stdout"], s["checks"], s["error"])
                                 for s in evidence["snippets"]])


def test_kill_9_mid_run_leaves_the_store_and_the_answers_intact(tmp_path, scratch):
    answers = write_small_answers(tmp_path / "answers")
    (answers / f"{SLOW}.md").write_text(answer_text(title="Does a slow answer survive a crash?", snippets=[SLOW_CODE]))
    slugs = sorted(p.stem for p in answers.glob("*.md"))
    db = tmp_path / "kb.sqlite3"
    before_files = fingerprint(answers)

    service = Service(tmp_path, answers, db, scratch)
    try:
        before = evidence_by_slug(service.url, slugs)
        assert all(e["status"] != "pending" for e in before.values()), "start-up ran every answer"

        slow_result = []
        slow_run = threading.Thread(daemon=True, target=lambda: slow_result.append(
            _swallow(request, f"{service.url}/api/answers/{SLOW}/run", "POST")))
        slow_run.start()
        stop_writes = threading.Event()

        def keep_writing():  # quick re-runs: evidence is being written when the kill lands
            while not stop_writes.is_set():
                _swallow(request, f"{service.url}/api/answers/averaging/run", "POST", timeout=10)

        writer = threading.Thread(target=keep_writing, daemon=True)
        writer.start()

        # Mid-run: the child running the slow answer is up, in its scratch directory.
        assert settle(lambda: list(scratch.glob(f"kb-{SLOW}-*")), within=15), "the slow run never started"

        def running_slow_answer():  # the child and the process it starts are both up
            tree = service.processes()
            child = [pid for pid in tree if _cwd(pid).startswith(str(scratch / f"kb-{SLOW}-"))
                     and "kb.run.server" in tree[pid]]
            return (tree, child) if child and "sleep 300" in tree.values() else None
        tree, slow_child = settle(running_slow_answer, within=15) or (service.processes(), [])
        service.kill()
        stop_writes.set()
        writer.join(15)
        slow_run.join(15)

        assert slow_result == [None], "the kill landed while the slow answer was running"
        assert len(slow_child) == 1 and "kb.run.server" in tree[slow_child[0]], tree
        assert "sleep 300" in tree.values(), "the slow answer's own process is up"
        # The fork server has a session of its own, so the kill does not reach it: it sees its
        # stdin close and kills the process group of every child (the running answer with the
        # process it started, and the spare) before it exits.
        gone = settle(lambda: not [pid for pid in tree if alive(pid)], within=10)
        assert gone, f"left after kill -9: { {pid: tree[pid] for pid in tree if alive(pid)} }"
    finally:
        service.stop()

    assert fingerprint(answers) == before_files, "the answers directory is untouched"

    restarted = Service(tmp_path, answers, db, scratch)
    try:
        after = evidence_by_slug(restarted.url, slugs)
        for slug in slugs:
            assert after[slug]["status"] != "pending", slug
            assert outcome(after[slug]) == outcome(before[slug]), slug
        # ...and it still runs answers and stores their evidence.
        status, body = request(f"{restarted.url}/api/answers/wrong-claim/run", "POST")
        assert status == 200 and json.loads(body)["status"] == "failed"

        # kill -9 of the worker alone: its fork server sees its stdin close, kills its spare and
        # exits; gunicorn boots a new worker, which starts a fork server of its own.
        tree = restarted.processes()
        [worker] = [pid for pid in tree if _parent(pid) == restarted.process.pid]
        os.kill(worker, signal.SIGKILL)
        gone = settle(lambda: not [pid for pid in tree if pid != restarted.process.pid and alive(pid)], within=10)
        assert gone, f"left after the worker's kill -9: { {pid: tree[pid] for pid in tree if alive(pid)} }"
        assert settle(lambda: _swallow(request, f"{restarted.url}/api/answers/averaging/run", "POST", timeout=10),
                      within=60)[0] == 200
        tree = restarted.processes()
        [socket] = {cmd.split()[-1] for cmd in tree.values() if "kb.run.server" in cmd}
    finally:
        restarted.stop()
    # A clean stop: the worker exits, its fork server sees stdin close and exits, killing its spare.
    gone = settle(lambda: not [pid for pid in tree if alive(pid)], within=10)
    assert gone, f"left after a clean stop: { {pid: tree[pid] for pid in tree if alive(pid)} }"
    assert not Path(socket).parent.exists(), "the runner's scratch directory goes with a clean stop"

    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("SELECT count(*) FROM evidence").fetchone()[0] == len(slugs)
    assert fingerprint(answers) == before_files, "the answers directory is untouched"


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _swallow(function, *args, **kwargs):
    """Call, ignoring the connection errors a killed server causes (a kill that lands mid-response
    leaves the body short: `http.client.IncompleteRead`, not an OSError)."""
    try:
        return function(*args, **kwargs)
    except (OSError, http.client.HTTPException):
        return None


def test_an_unreadable_database_file_is_set_aside_and_derived_again(tmp_path, caplog):
    from service import create_app

    answers = write_small_answers(tmp_path / "answers")
    db = tmp_path / "kb.sqlite3"
    db.write_bytes(b"this is not an SQLite file, perhaps a disk went bad " * 100)
    app = create_app({"KB_ANSWERS": str(answers), "KB_DB": str(db), "TESTING": True})
    try:
        evidence = app.test_client().get("/api/answers/averaging/evidence").get_json()
        assert evidence["status"] == "passed", "the answers were run again into a fresh file"
    finally:
        app.extensions["kb"].close()
    [aside] = tmp_path.glob("kb.sqlite3.corrupt-*")
    assert aside.read_bytes().startswith(b"this is not an SQLite file")
    assert "could not be read" in caplog.text and aside.name in caplog.text

    proc = run_cli("check", answers, "--db", db, cwd=tmp_path)  # and the CLI, on a damaged copy
    assert proc.returncode == 1 and "2 passed, 1 not passed" in proc.stdout  # wrong-claim fails
    checkpoint = sqlite3.connect(db)  # everything into the main file, then damage its header
    checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpoint.close()
    db.write_bytes(b"overwritten head" + db.read_bytes()[16:])  # SQLite's 16-byte magic string is gone
    proc = run_cli("check", answers, "--db", db, cwd=tmp_path)
    assert proc.returncode == 1 and "2 passed, 1 not passed" in proc.stdout and "Traceback" not in proc.stderr, proc.stderr
    assert "could not be read" in proc.stderr and len(list(tmp_path.glob("kb.sqlite3.corrupt-*"))) == 2


def test_processes_sharing_a_fresh_database_run_each_answer_once(tmp_path):
    """gunicorn workers starting together on a new file take turns: the second finds the work done."""
    answers = write_small_answers(tmp_path / "answers")
    workers = [Library(answers, tmp_path / "kb.sqlite3") for _ in range(2)]
    ran = []
    try:
        threads = [threading.Thread(target=lambda w=w: ran.append(w.run_missing())) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert sorted(ran) == [0, len(workers[0].answers)]
        assert all(workers[1].store.get(a) for a in workers[1].answers.values())
    finally:
        for worker in workers:
            worker.close()
