"""Guarded runs and hardened responses (service/guard.py): cross-site run requests are refused,
the API run takes JSON only, a run that just finished is returned instead of running again,
KB_RUNS=off turns runs off; every response carries Permissions-Policy and CORP, no redirect
names the client's Host, and the static export's pages carry their CSP in a <meta> tag.
"""
import re

import pytest
from helpers import answer_text, copy_database, run_cli
from service_fixtures import write_small_answers

from service import create_app

CLOCK = 'import time\nprint(time.time_ns())\ncheck("ran", True)'  # each run prints something new


@pytest.fixture
def make_app(tmp_path, small_template):
    apps = []

    def make(**config):
        folder = tmp_path / f"answers-{len(apps)}"
        write_small_answers(folder)
        (folder / "clock.md").write_text(answer_text(title="What time is it?", snippets=[CLOCK]))
        db = copy_database(small_template, tmp_path / f"db-{len(apps)}")  # the small answers' vectors
        app = create_app({"KB_ANSWERS": str(folder), "KB_DB": str(db), "TESTING": True,
                          "KB_RUN_MISSING": False, **config})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["kb"].close()


def token_of(client, slug):
    html = client.get(f"/answers/{slug}").get_data(as_text=True)
    return re.search(r'name="token" value="([0-9a-f]+)"', html)[1]


def assert_problem(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["status"] == status


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"},  # Sec-Fetch-Site decides
    {"Origin": "https://attacker.example"}, {"Origin": "null"}, {}])
def test_cross_site_form_posts_are_refused(make_app, headers):
    client = make_app().test_client()
    response = client.post("/answers/clock/run", headers=headers)
    assert response.status_code == 403 and response.mimetype == "text/html"
    assert "this site" in response.get_data(as_text=True)
    assert client.get("/api/answers/clock/evidence").get_json()["status"] == "pending", "nothing ran"


@pytest.mark.parametrize("headers", [{"Sec-Fetch-Site": "same-origin"}, {"Origin": "http://localhost"}])
def test_same_origin_form_posts_run(make_app, headers):
    client = make_app().test_client()
    response = client.post("/answers/clock/run", headers=headers)
    location = response.headers["Location"]
    assert response.status_code == 303 and location.startswith("/answers/clock?") and location.endswith("#evidence")
    assert client.get("/api/answers/clock/evidence").get_json()["status"] == "passed"


def test_a_form_from_a_browser_that_sends_neither_header_needs_the_pages_token(make_app):
    app = make_app()
    client = app.test_client()
    token = token_of(client, "clock")
    assert client.post("/answers/clock/run", data={"token": "0" * 32}).status_code == 403
    assert client.post("/answers/clock/run", data={"token": token_of(client, "averaging")}).status_code == 403
    assert client.post("/answers/clock/run", data={"token": token}).status_code == 303
    # (Evidence from start-up: pages of apps in one process are cached by answer and evidence.)
    other = make_app(KB_SECRET_KEY="another deployment", KB_RUN_MISSING="wait")
    assert token_of(other.test_client(), "clock") != token, "the token is signed with the app's key"
    shared = [make_app(KB_SECRET_KEY="one site", KB_RUN_MISSING="wait") for _ in range(2)]
    assert token_of(shared[0].test_client(), "clock") == token_of(shared[1].test_client(), "clock"), \
        "processes sharing KB_SECRET_KEY accept each other's forms"


def test_the_api_run_takes_json_only(make_app):
    client = make_app().test_client()
    assert_problem(client.post("/api/answers/clock/run"), 415)
    assert_problem(client.post("/api/answers/clock/run", data="{}", content_type="text/plain"), 415)
    assert_problem(client.post("/api/answers/clock/run", data={"a": "b"}), 415)  # a form
    assert_problem(client.post("/api/answers/clock/run", json={}, headers={"Sec-Fetch-Site": "cross-site"}), 403)
    assert_problem(client.post("/api/answers/clock/run", json={}, headers={"Origin": "https://attacker.example"}), 403)
    response = client.post("/api/answers/clock/run", json={})
    assert response.status_code == 200 and response.get_json()["status"] == "passed"
    # A preflight for a cross-site JSON POST grants nothing, so the browser never sends it.
    preflight = client.options("/api/answers/clock/run", headers={
        "Origin": "https://attacker.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_a_run_that_just_finished_is_returned_instead_of_running_again(make_app):
    client = make_app(KB_RUN_COOLDOWN=60).test_client()
    first = client.post("/api/answers/clock/run", json={}).get_json()
    again = client.post("/api/answers/clock/run", json={}).get_json()
    assert again["snippets"][0]["stdout"] == first["snippets"][0]["stdout"] and again["ran_at"] == first["ran_at"]
    assert client.post("/answers/clock/run", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 303
    assert client.get("/api/answers/clock/evidence").get_json()["snippets"][0]["stdout"] == first["snippets"][0]["stdout"]
    # Without a cooldown every request runs.
    client = make_app(KB_RUN_COOLDOWN=0).test_client()
    outputs = {client.post("/api/answers/clock/run", json={}).get_json()["snippets"][0]["stdout"] for _ in range(2)}
    assert len(outputs) == 2


def test_kb_runs_off_hides_the_button_and_refuses_runs(make_app, monkeypatch):
    built = make_app(KB_RUN_MISSING="wait")  # evidence from a deployment that runs: the page is a real one
    monkeypatch.setenv("KB_RUNS", "off")
    # KB_RUNS=off runs nothing, even asked to at start-up (issue 20): it serves the stored evidence.
    app = make_app(KB_RUN_MISSING="wait", KB_DB=built.config["KB_DB"])
    client = app.test_client()
    html = client.get("/answers/clock").get_data(as_text=True)
    assert 'data-status="passed"' in html and "Run again" not in html and "<form method=\"post\"" not in html
    assert_problem(client.post("/api/answers/clock/run", json={}), 403)
    assert "KB_RUNS=off" in client.post("/api/answers/clock/run", json={}).get_json()["detail"]
    response = client.post("/answers/clock/run", headers={"Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 403 and response.mimetype == "text/html"
    monkeypatch.setenv("KB_RUNS", "on")
    assert "Run again" in make_app().test_client().get("/answers/clock").get_data(as_text=True)


@pytest.mark.parametrize("path", ["/", "/answers/averaging", "/api/answers", "/api/search?q=x&limit=²",
                                  "/static/style.css", "/nowhere"])
def test_every_response_carries_permissions_policy_and_corp(make_app, path):
    with make_app().test_client().get(path) as response:  # a static file's response holds the file open
        assert response.headers["Cross-Origin-Resource-Policy"] == "same-origin"
        assert "camera=()" in response.headers["Permissions-Policy"]
        assert "microphone=()" in response.headers["Permissions-Policy"]


@pytest.mark.parametrize("path, location", [("/answers//averaging", "/answers/averaging"),
                                            ("/api//answers?tag=calculus", "/api/answers?tag=calculus")])
def test_redirects_do_not_name_the_clients_host(make_app, path, location):
    response = make_app(KB_TRUSTED_HOSTS="*").test_client().get(path, headers={"Host": "attacker.example"})
    assert response.status_code == 308
    assert response.headers["Location"] == location


def test_the_static_exports_pages_carry_their_csp(tmp_path):
    answers = write_small_answers(tmp_path / "answers")
    site = tmp_path / "site"
    built = run_cli("build", site, "--answers", answers, "--db", tmp_path / "db", cwd=tmp_path, timeout=300)
    assert built.returncode == 0, built.stderr
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 6
    for page in pages:
        head = page.read_text().split("</head>")[0]
        [policy] = re.findall(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', head)
        assert "default-src 'self'" in policy and "script-src 'self'" in policy and "'unsafe-inline'" not in policy
        assert head.index("Content-Security-Policy") < head.index("<link"), "before anything it governs"


def test_workers_on_one_database_sign_alike_without_a_configured_secret(tmp_path):
    """gunicorn's workers are separate processes: a form one rendered must pass another, and their
    pages (hence ETags) must agree, so the default key is kept beside the database, not per process."""
    answers = write_small_answers(tmp_path / "answers")
    config = {"KB_ANSWERS": str(answers), "KB_DB": str(tmp_path / "kb.sqlite3"), "KB_RUN_MISSING": "wait"}
    workers = [create_app(dict(config)) for _ in range(2)]
    try:
        pages = [w.test_client().get("/answers/averaging") for w in workers]
        assert token_of(workers[0].test_client(), "averaging") == token_of(workers[1].test_client(), "averaging")
        assert pages[0].headers["ETag"] == pages[1].headers["ETag"]
        key = tmp_path / "kb.sqlite3.key"
        assert len(key.read_bytes()) == 32 and key.stat().st_mode & 0o777 == 0o600
        other = create_app({**config, "KB_DB": str(tmp_path / "elsewhere.sqlite3")})
        assert token_of(other.test_client(), "averaging") != token_of(workers[0].test_client(), "averaging")
        other.extensions["kb"].close()
    finally:
        for worker in workers:
            worker.extensions["kb"].close()
