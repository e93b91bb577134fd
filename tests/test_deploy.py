"""The deployment as deployed: `deploy/serve-local.sh` starts gunicorn behind nginx
(`deploy/nginx.conf`) on loopback, over an evidence database built beforehand by `kb check`
as CI builds it.

Shown: the service started on that database runs nothing; 60 connections sending their headers
a byte at a time do not stop normal GETs through nginx (every GET completes; p50/p99 go to
test-artifacts/slow-clients.json, timings are not asserted: bench/slow_clients.py compares
direct and proxied); ETags and 304s, the CSP and the other headers, problem+json, the run
guard and relative redirects all survive the proxy; nginx serves /static/ and caches figures.
The nginx tests need Debian's nginx (`.ci/run` installs it); skipped without it, except in CI.
"""
import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import ROOT, SlowClients, descendants, run_cli, settle
from service_fixtures import write_small_answers

from service import create_app
from service.assets import IMMUTABLE

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ARTIFACTS = ROOT / "test-artifacts"
SLOW_CLIENTS = 60
PROBE_SECONDS = 8
GETS = ["/", "/answers/averaging", "/api/answers/sigmoid-slope", "/api/search?q=sigmoid+slope", "/static/style.css",
        "/tags/calculus"]

if not Path(NGINX).exists() and os.environ.get("CI"):
    raise RuntimeError("CI must run the deployment tests: install Debian's nginx (.ci/run does)")


def test_a_service_on_a_database_kb_check_built_starts_without_running_anything(tmp_path):
    """The scaling recipe's premise, without nginx: CI's database, a new service, no run."""
    answers = write_small_answers(tmp_path / "answers")
    built = run_cli("check", answers, "--db", tmp_path / "kb.sqlite3", "--json", cwd=tmp_path)
    ci = {e["slug"]: e["ran_at"] for e in json.loads(built.stdout)}
    before = set(descendants(os.getpid()))
    app = create_app({"KB_ANSWERS": str(answers), "KB_DB": str(tmp_path / "kb.sqlite3"), "TESTING": True})
    try:
        client = app.test_client()
        served = {slug: client.get(f"/api/answers/{slug}/evidence").get_json()["ran_at"] for slug in ci}
        lookup = app.extensions["kb"].library.lookup_engine
        assert lookup.wait(timeout=60) and lookup.ready and lookup.status.embedded == 0, "kb check stored every vector"
        assert client.get("/api/search?q=sigmoid+slope").get_json()["ready"] is True
        started = {pid: cmd for pid, (_, cmd) in descendants(os.getpid()).items() if pid not in before}
    finally:
        app.extensions["kb"].close()
    assert served == ci, "the evidence served is CI's"
    assert not any("kb.run.server" in cmd for cmd in started.values()), started


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Deployed:
    def __init__(self, root: Path):
        self.root = root
        self.answers = write_small_answers(root / "answers")
        self.db = root / "kb.sqlite3"
        built = run_cli("check", self.answers, "--db", self.db, "--json", cwd=root)  # as CI does
        self.ci_evidence = {e["slug"]: e for e in json.loads(built.stdout)}
        self.scratch = Path(tempfile.mkdtemp(prefix="kbd-"))
        self.port, upstream = free_port(), free_port()
        env = {**os.environ, "KB_ANSWERS": str(self.answers), "KB_DB": str(self.db), "TMPDIR": str(self.scratch),
               "KB_UPSTREAM_PORT": str(upstream), "PYTHON": sys.executable}
        self.log = root / "serve-local.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen([str(ROOT / "deploy" / "serve-local.sh"), str(self.port)], cwd=root, env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        up = settle(lambda: "serving http" in self.log.read_text() or self.process.poll() is not None, within=120)
        assert up and self.process.poll() is None, self.log.read_text()

    def request(self, method, path, body=None, headers=None, timeout=30):
        """(status, headers, body) of one request through nginx, on a fresh connection."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def in_session(sid: int) -> list[int]:
    """The live processes of session `sid` (serve-local.sh leads its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split() if stat else []
        if fields and fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (apt-get install nginx)")
    pair = Deployed(tmp_path_factory.mktemp("deploy"))
    try:
        yield pair
    finally:
        pair.stop()
        left = settle(lambda: not in_session(pair.process.pid)) or in_session(pair.process.pid)
        assert left is True, f"serve-local.sh left processes behind: {left}"
        assert not any(pair.scratch.iterdir()), f"nginx's prefix or runner files left: {list(pair.scratch.iterdir())}"
        shutil.rmtree(pair.scratch, ignore_errors=True)


def test_a_service_on_a_prebuilt_database_runs_nothing_at_start(deployed):
    processes = [cmd for _, cmd in descendants(deployed.process.pid).values()]
    assert sum("gunicorn" in cmd for cmd in processes) == 3 and any("nginx: worker" in cmd for cmd in processes), processes
    assert not any("kb.run.server" in cmd for cmd in processes), "no fork server: nothing ran"
    for slug, built in deployed.ci_evidence.items():
        status, _, body = deployed.request("GET", f"/api/answers/{slug}/evidence")
        served = json.loads(body)
        assert status == 200 and served["ran_at"] == built["ran_at"] and served["status"] == built["status"], slug


def test_slow_clients_do_not_stall_normal_gets(deployed):
    slow = SlowClients(deployed.port, SLOW_CLIENTS, limit=PROBE_SECONDS + 30)
    slow.start()
    timings, failures = [], []
    try:
        end = time.monotonic() + PROBE_SECONDS  # past nginx's 5 s header timeout: it keeps trickling clients
        while time.monotonic() < end:
            path = GETS[len(timings) % len(GETS)]
            started = time.monotonic()
            try:
                status = deployed.request("GET", path, timeout=20)[0]
            except OSError as exc:
                status = repr(exc)
            timings.append(time.monotonic() - started)
            if status != 200 and not (status == 429 and "search" in path):  # nginx's search budget (5/s): by design
                failures.append((path, status))
    finally:
        slow.stop.set()
        slow.join(10)
    ordered = sorted(timings)
    figures = {"slow_connections": SLOW_CLIENTS, "dropped_by_nginx_and_reopened": slow.reopened, "gets": len(timings),
               "p50_ms": round(statistics.median(ordered) * 1000, 2),
               "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
               "max_ms": round(ordered[-1] * 1000, 2)}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "slow-clients.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"\nbehind nginx with {SLOW_CLIENTS} slow-header connections: {figures}")
    assert not failures, failures


def test_etags_csp_and_problems_survive_the_proxy(deployed):
    for path in ("/answers/averaging", "/api/answers/averaging", "/static/style.css"):
        status, headers, _ = deployed.request("GET", path)
        assert status == 200 and headers["ETag"], path
        assert "default-src 'self'" in headers["Content-Security-Policy"], path
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cross-Origin-Resource-Policy"] == "same-origin"
        assert "camera=()" in headers["Permissions-Policy"]
        status, _, body = deployed.request("GET", path, headers={"If-None-Match": headers["ETag"]})
        assert status == 304 and body == b"", path
    # nginx serves /static/ itself, with the service's caching: kept for good when linked by content.
    for path, cache in (("/static/style.css", "no-cache"), ("/static/style.css?v=0123456789ab", IMMUTABLE)):
        status, headers, _ = deployed.request("GET", path)
        assert status == 200 and headers["Cache-Control"] == cache, (path, headers["Cache-Control"])
    for path, code in (("/api/answers/no-such-answer", 404), ("/api/search?q=x&limit=%C2%B2", 400)):
        status, headers, body = deployed.request("GET", path)
        for _ in range(20):  # the module's earlier searches may have spent this address's budget (5/s)
            if status != 429:
                break
            time.sleep(0.25)  # nginx's bucket refills one search every 0.2 s
            status, headers, body = deployed.request("GET", path)
        assert status == code and headers["Content-Type"] == "application/problem+json", path
        assert json.loads(body)["status"] == code


def test_nginx_caches_figures_with_their_own_policy(deployed):
    path = "/api/answers/sigmoid-slope/figures/0-0.svg"
    seen = [deployed.request("GET", path) for _ in range(2)]
    for status, headers, body in seen:
        assert status == 200 and headers["Content-Type"].startswith("image/svg+xml") and body.startswith(b"<?xml")
        assert "sandbox" in headers["Content-Security-Policy"]
    assert [headers["X-Cache"] for _, headers, _ in seen] == ["MISS", "HIT"]


def test_the_run_guard_and_redirects_work_through_the_proxy(deployed):
    origin = f"http://127.0.0.1:{deployed.port}"
    json_headers = {"Content-Type": "application/json"}
    status, _, body = deployed.request("POST", "/api/answers/averaging/run", "{}", {**json_headers, "Origin": origin},
                                       timeout=90)
    assert status == 200 and json.loads(body)["slug"] == "averaging", body
    status, headers, _ = deployed.request("POST", "/api/answers/averaging/run", "{}",
                                          {**json_headers, "Origin": "https://attacker.example"})
    assert status == 403 and headers["Content-Type"] == "application/problem+json"
    status, headers, _ = deployed.request("POST", "/answers/averaging/run", "",
                                          {"Sec-Fetch-Site": "same-origin", "Content-Type": "application/x-www-form-urlencoded"},
                                          timeout=90)
    assert status == 303 and headers["Location"].startswith("/answers/averaging?was=")  # a path, never a host
    assert headers["Location"].endswith("#evidence")
    status, headers, _ = deployed.request("GET", "/answers//averaging")
    assert status == 308 and headers["Location"] == "/answers/averaging"


def test_unknown_hosts_are_dropped_and_nginx_errors_are_problems(deployed):
    """Issue 20 (probe rows 9, 26, 57, 58): a rebound DNS name gets no answer at all; nginx's own
    errors are problem+json with the service's headers, never stored; searches are throttled."""
    for method, path in (("GET", "/"), ("POST", "/api/answers/averaging/run")):
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            deployed.request(method, path, "{}" if method == "POST" else None,
                             {"Host": f"evil.example:{deployed.port}", "Content-Type": "application/json"})
    for path, code in (("/api/search?q=" + "a" * 9000, 414), ("/" + "b" * 9000, 414)):
        status, headers, body = deployed.request("GET", path)
        assert status == code and headers["Content-Type"] == "application/problem+json", (status, body[:200])
        assert json.loads(body)["status"] == code
        assert headers["Cache-Control"] == "no-store" and "default-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff" and "Permissions-Policy" in headers
    status, headers, _ = deployed.request("GET", "/api/answers/no-such-answer")  # the service's own: passed through
    assert status == 404 and headers["Content-Type"] == "application/problem+json" and headers["Cache-Control"] == "no-store"
    # A burst of searches from one address: past nginx's budget (5/s, burst 20), 429 problem+json.
    statuses = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for status, headers, _ in pool.map(lambda n: deployed.request("GET", f"/api/search?q=burst+{n}"), range(40)):
            statuses.append(status)
            if status == 429:
                assert headers["Content-Type"] == "application/problem+json" and headers["Cache-Control"] == "no-store"
    assert 429 in statuses and 200 in statuses, statuses
