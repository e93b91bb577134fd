"""What an operator relies on: `kb --version`, `/metrics`, JSON logs, a quiet exit into a closed
pipe, the licences on every page."""
from __future__ import annotations

import json
import logging
import socket
import subprocess
from importlib import metadata

from helpers import KB, ROOT, answer_text, copy_database, run_cli
from prometheus_client.parser import text_string_to_metric_families
from service_fixtures import write_small_answers

from service import create_app
from service.context import state
from service.logs import JsonFormatter


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(name, sorted labels): value} of a Prometheus text exposition (parsed by prometheus-client)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_kb_version(tmp_path):
    done = run_cli("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"kb {metadata.version('kb-answers')}"


def test_metrics_count_requests_runs_and_searches(small_app):
    client = small_app.test_client()
    before = samples(client.get("/metrics").get_data(as_text=True))
    client.get("/answers/averaging")
    client.get("/answers/nothing-here")
    client.get("/no/such/page")
    client.get("/api/search?q=why+average+the+gradient+over+m+examples")
    client.get("/api/search?q=how+do+I+renew+my+passport")
    assert client.post("/api/answers/wrong-claim/run", json={}).status_code == 200  # runs, and fails
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain" and "version=" in response.headers["Content-Type"]
    after = samples(response.get_data(as_text=True))

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    page = {"route": "/answers/<slug>", "method": "GET"}
    assert grew("kb_http_requests_total", **page, status="200") == 1
    assert grew("kb_http_requests_total", **page, status="404") == 1
    assert grew("kb_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert grew("kb_http_request_duration_seconds_count", route="/answers/<slug>") == 2
    assert grew("kb_runs_total", outcome="started") == 1
    assert grew("kb_runs_total", outcome="failed") == 1
    assert grew("kb_runs_total", outcome="limited") == 0
    assert grew("kb_searches_total", confident="true") + grew("kb_searches_total", confident="false") == 2
    assert after[("kb_answers", (("status", "passed"),))] == 2
    assert after[("kb_answers", (("status", "failed"),))] == 1
    oldest = after[("kb_evidence_age_seconds", (("which", "oldest"),))]
    newest = after[("kb_evidence_age_seconds", (("which", "newest"),))]
    assert oldest >= newest >= 0


def test_a_run_within_the_cooldown_counts_as_coalesced(tmp_path, small_template):
    answers = write_small_answers(tmp_path / "answers")
    app = create_app({"KB_ANSWERS": str(answers), "KB_DB": str(copy_database(small_template, tmp_path / "db")),
                      "KB_RUN_COOLDOWN": "1000h", "TESTING": True})
    try:
        client = app.test_client()
        # The template's evidence ran during this session: within the cooldown, a run returns it.
        assert client.post("/api/answers/averaging/run", json={}).status_code == 200
        after = samples(client.get("/metrics").get_data(as_text=True))
        assert after[("kb_runs_total", (("outcome", "coalesced"),))] == 1
        assert after[("kb_runs_total", (("outcome", "started"),))] == 0
    finally:
        app.extensions["kb"].close()


def test_a_run_past_the_slots_counts_as_limited(small_app):
    client = small_app.test_client()
    slots = state(small_app).run_slots
    held = [slots.acquire(blocking=False) for _ in range(2)]  # KB_MAX_RUNS=2: both taken
    try:
        assert held == [True, True]
        assert client.post("/api/answers/averaging/run", json={}).status_code == 429
    finally:
        for _ in held:
            slots.release()
    after = samples(client.get("/metrics").get_data(as_text=True))
    assert after[("kb_runs_total", (("outcome", "limited"),))] == 1
    assert after[("kb_runs_total", (("outcome", "started"),))] == 0


def test_json_log_lines():
    record = logging.LogRecord("kb", logging.WARNING, __file__, 1, "answers/%s.md:3: %s", ("x", "bad"), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["logger"] == "kb"
    assert line["message"] == "answers/x.md:3: bad" and line["time"].endswith("Z")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        record = logging.LogRecord("kb", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in line["exception"]


def test_json_logs_setting_formats_the_services_records(tmp_path, monkeypatch):
    (tmp_path / "answers").mkdir()
    monkeypatch.setenv("KB_LOG_FORMAT", "json")
    app = create_app({"KB_ANSWERS": str(tmp_path / "answers"), "KB_DB": str(tmp_path / "kb.sqlite3")})
    try:
        for name in ("kb", "service"):
            assert any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger(name).handlers), name
    finally:
        app.extensions["kb"].close()
        for name in ("kb", "service"):
            logger = logging.getLogger(name)
            for handler in [h for h in logger.handlers if isinstance(h.formatter, JsonFormatter)]:
                logger.removeHandler(handler)
            logger.propagate = True


def test_check_json_into_a_closed_pipe_exits_quietly(tmp_path):
    """`kb check --json | head`: the reader leaves early. A real pipe, so a real process."""
    answers = tmp_path / "answers"
    answers.mkdir()
    (answers / "one.md").write_text(answer_text(snippets=['check("holds", True)']))
    process = subprocess.Popen([str(KB), "check", answers, "--json", "--db", tmp_path / "db"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the JSON is written: the write meets a closed pipe
    with process.stderr:
        stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, stderr  # the answer passed: that is the exit status
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_pages_show_the_licences(reader):
    html = reader.get("/").get_data(as_text=True)
    assert '<a rel="license" href="https://creativecommons.org/licenses/by-sa/4.0/">CC BY-SA 4.0</a>' in html
    assert "Apache-2.0" in html


def test_serve_local_refuses_a_port_that_is_taken(tmp_path):
    """It used to print "serving" when another server held its ports (its probe reached that one)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(ROOT / "deploy" / "serve-local.sh"), str(port)], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is taken" in done.stderr
    assert "serving" not in done.stdout
