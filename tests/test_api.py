"""The JSON API through Flask's test client: shapes, errors, ETags, re-runs, the OpenAPI spec."""
import json
import threading
from importlib import metadata

import pytest
from helpers import answer_text
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from kb.store import evidence as ev
from service import create_app
from service.context import state
from service.openapi import spec


def conforms(payload, schema_name):
    """Validate a response body against a schema of the served OpenAPI document."""
    document = spec()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    errors = list(Draft202012Validator(schema).iter_errors(payload))
    assert not errors, [e.message for e in errors]


def assert_problem(response, status):
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    conforms(body, "Problem")
    assert body["status"] == status and body["detail"]
    return body


def test_healthz_names_the_package_version(reader):
    body = reader.get("/healthz").get_json()
    assert body == {"status": "ok", "answers": 3, "version": metadata.version("kb-answers")}
    conforms(body, "Health")
    assert reader.get("/api/openapi.json").get_json()["info"]["version"] == body["version"]


def test_answers_list_and_tag_filter(reader):
    body = reader.get("/api/answers").get_json()
    conforms(body, "AnswerList")
    assert {a["slug"]: a["status"] for a in body["answers"]} == {
        "sigmoid-slope": "passed", "averaging": "passed", "wrong-claim": "failed"}
    assert [a["url"] for a in body["answers"] if a["slug"] == "averaging"] == ["/answers/averaging"]
    titles = [a["title"] for a in body["answers"]]
    assert titles == sorted(titles)
    tagged = reader.get("/api/answers?tag=calculus").get_json()["answers"]
    assert sorted(a["slug"] for a in tagged) == ["sigmoid-slope", "wrong-claim"]


def test_one_answer_with_html_and_evidence(reader):
    response = reader.get("/api/answers/sigmoid-slope")
    body = response.get_json()
    conforms(body, "Answer")
    assert body["related"] == ["averaging"] and body["aliases"] == ["What is the maximum of the sigmoid derivative?"]
    assert "<math" in body["html"] and "highlight" in body["html"]
    evidence = body["evidence"]
    assert evidence["status"] == "passed"
    [snippet] = evidence["snippets"]
    assert snippet["checks"][0]["passed"] and snippet["checks"][0]["value"].startswith("0.25")
    assert snippet["figures"] == ["/api/answers/sigmoid-slope/figures/0-0.svg"]
    figure = reader.get(snippet["figures"][0])
    assert figure.status_code == 200 and figure.mimetype == "image/svg+xml"
    assert figure.data.lstrip().startswith(b"<?xml") and b"<svg" in figure.data
    # Opened on its own, the SVG may use matplotlib's inline styles but run nothing.
    policy = figure.headers["Content-Security-Policy"]
    assert "style-src 'unsafe-inline'" in policy and "default-src 'none'" in policy and "sandbox" in policy
    assert "unsafe-inline" not in reader.get("/answers/sigmoid-slope").headers["Content-Security-Policy"]


def test_evidence_endpoint(reader):
    body = reader.get("/api/answers/wrong-claim/evidence").get_json()
    conforms(body, "Evidence")
    assert body["status"] == "failed"
    assert body["snippets"][0]["checks"][0] == {"claim": "the slope exceeds 1/2", "passed": False,
                                                "value": "0.25", "line": 11}


@pytest.mark.parametrize("path", [
    "/api/answers/nope", "/api/answers/nope/evidence", "/api/answers/UPPER", "/api/answers/a_b",
    "/api/answers/..%2F..%2Fetc%2Fpasswd", "/api/answers/sigmoid-slope/figures/9-9.svg",
    "/api/answers/sigmoid-slope/figures/..%2Fkb.sqlite3", "/api/nothing-here", "/api"])
def test_unknown_things_are_404_problems(reader, path):
    assert_problem(reader.get(path), 404)


def test_wrong_method_is_405_with_allow(reader):
    response = reader.get("/api/answers/averaging/run")
    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]
    assert_problem(reader.delete("/api/answers"), 405)


@pytest.mark.parametrize("query", ["", "?q=", "?q=%20%20", "?q=dW&limit=0", "?q=dW&limit=51", "?q=dW&limit=abc",
                                   "?q=dW&limit=-1"])
def test_search_rejects_bad_parameters(reader, query):
    assert_problem(reader.get(f"/api/search{query}"), 400)


def test_search_finds_answers_best_first(reader):
    # (Not "maximum slope of the sigmoid": "Is the sigmoid's slope ever above 1/2?" answers that as well.)
    body = reader.get("/api/search?q=how+big+can+the+derivative+of+the+sigmoid+get&limit=2").get_json()
    conforms(body, "SearchResults")
    assert body["query"] == "how big can the derivative of the sigmoid get"
    assert body["results"][0]["slug"] == "sigmoid-slope"
    assert len(body["results"]) <= 2
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_run_returns_fresh_evidence(client, small_app):
    library = state(small_app).library
    answer = library.answers["averaging"]
    stored_before = library.stamp(answer)  # when the start-up run's evidence was stored (ns)
    response = client.post("/api/answers/averaging/run", json={})
    assert response.status_code == 200
    fresh = response.get_json()
    conforms(fresh, "Evidence")
    assert fresh["status"] == "passed"
    assert library.stamp(answer) > stored_before, "the run stored new evidence (ran_at has 1 s resolution)"
    served = client.get("/api/answers/averaging/evidence").get_json()
    assert served == fresh, "the fresh run is what is now served"


def test_run_flood_gets_429_with_retry_after(tmp_path):
    folder = tmp_path / "answers"
    folder.mkdir()
    for n in range(4):  # four answers: runs of one answer wait for each other rather than for a slot
        (folder / f"slow-{n}.md").write_text(answer_text(snippets=['import time\ntime.sleep(1.0)\ncheck("slept", True)']))
    app = create_app({"KB_ANSWERS": str(folder), "KB_DB": str(tmp_path / "db"), "KB_MAX_RUNS": 1,
                      "KB_RUN_MISSING": False})
    responses = []

    def post(n):
        responses.append(app.test_client().post(f"/api/answers/slow-{n}/run", json={}))

    threads = [threading.Thread(target=post, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    app.extensions["kb"].close()
    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200 and statuses.count(429) >= 2, statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert_problem(limited, 429)
    assert int(limited.headers["Retry-After"]) > 0


@pytest.mark.parametrize("path", ["/api/answers", "/api/answers/averaging", "/api/answers/averaging/evidence",
                                  "/api/search?q=average", "/healthz", "/", "/answers/averaging"])
def test_get_responses_carry_etags_and_honour_if_none_match(reader, path):
    first = reader.get(path)
    assert first.status_code == 200 and first.headers["ETag"]
    again = reader.get(path, headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""


def test_openapi_is_valid_and_lists_every_route(shared_app):
    document = shared_app.test_client().get("/api/openapi.json").get_json()
    validate(document)
    documented = set(document["paths"])
    served = {rule.rule.replace("<", "{").replace(">", "}") for rule in shared_app.url_map.iter_rules()
              if rule.rule.startswith(("/api", "/healthz"))}
    assert served == documented


def test_nan_and_infinity_become_null():
    record = {"slug": "x", "status": "passed", "ran_at": None, "duration_ms": float("nan"),
              "environment": {}, "snippets": [{"index": 0, "line": 5, "code": "x = 1", "status": "passed", "stdout": "",
                                                "stderr": "", "truncated": False, "duration_ms": float("inf"),
                                                "error": None, "figures": [], "checks": []}]}
    out = ev.public(record, lambda slug, name: name)
    assert out["duration_ms"] is None and out["snippets"][0]["duration_ms"] is None
    json.dumps(out, allow_nan=False)


def test_security_headers_everywhere(reader):
    for path in ["/", "/api/answers", "/answers/averaging", "/api/answers/nope", "/nowhere"]:
        headers = reader.get(path).headers
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Frame-Options"] == "DENY"
