"""State belongs to one app and a request reads one reload: regression tests for two bugs.

1. A process-wide response cache let app B serve app A's page, and a static-export app serve the
   live page with its "Run again" form.
2. A reload between looking an answer up and rendering it cached the old body under the new
   reload's key, so every later request served the stale page.
"""
from __future__ import annotations

from helpers import answer_text

import kb.library
from service import create_app


def _app(tmp_path, name, prose, **config):
    answers = tmp_path / name / "answers"
    answers.mkdir(parents=True)
    (answers / "same-slug.md").write_text(answer_text(title=f"Question of {name}?", prose=prose,
                                                      snippets=['check("one is one", 1 + 0 == 1, 1)']))
    return create_app({"KB_ANSWERS": str(answers), "KB_DB": str(tmp_path / name / "kb.sqlite3"),
                       "TESTING": True, **config})


def test_two_apps_in_one_process_serve_their_own_pages(tmp_path):
    # Neither has evidence yet: the same slug, reload generation and evidence stamp in both.
    first = _app(tmp_path, "first", "Prose of the first app.", KB_RUN_MISSING=False)
    second = _app(tmp_path, "second", "Prose of the second app.", KB_RUN_MISSING=False, KB_STATIC=True)
    try:
        assert "Prose of the first app." in first.test_client().get("/answers/same-slug").get_data(as_text=True)
        page = second.test_client().get("/answers/same-slug").get_data(as_text=True)
        assert "Prose of the second app." in page and "Prose of the first app." not in page
        assert 'action="/answers/same-slug/run"' not in page, "a static app's page has no Run again form"
        api = second.test_client().get("/api/answers/same-slug").get_json()
        assert api["title"] == "Question of second?"
    finally:
        first.extensions["kb"].close()
        second.extensions["kb"].close()


def test_a_reload_during_a_request_never_caches_a_stale_page(tmp_path, monkeypatch):
    app = _app(tmp_path, "only", "The first version.")
    library = app.extensions["kb"].library
    path = library.answers_dir / "same-slug.md"
    real_render = kb.library.render_answer
    reloaded = []

    def render_while_someone_edits(answer):
        if not reloaded:  # another request reloads between this one's look-up and its render
            path.write_text(path.read_text().replace("The first version.", "The second version."))
            library.refresh(force=True)
            reloaded.append(library.generation)
        return real_render(answer)

    monkeypatch.setattr(kb.library, "render_answer", render_while_someone_edits)
    client = app.test_client()
    try:
        during = client.get("/answers/same-slug").get_data(as_text=True)
        assert reloaded and "The first version." in during, "the request shows the answer it looked up"
        after = client.get("/answers/same-slug").get_data(as_text=True)
        assert "The second version." in after and "The first version." not in after
    finally:
        library.close()


def test_first_start_answers_at_once_and_runs_missing_evidence_in_the_background(tmp_path, visible):
    gate = visible / "gate"
    answers = tmp_path / "answers"
    answers.mkdir()
    waits = (f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.02)\n"
             'check("the gate opened", os.path.exists(%r), True)' % str(gate))
    (answers / "gated.md").write_text(answer_text(title="Gated?", snippets=[waits]))
    app = create_app({"KB_ANSWERS": str(answers), "KB_DB": str(tmp_path / "kb.sqlite3"), "TESTING": True,
                      "KB_RUN_MISSING": "background"})
    library = app.extensions["kb"].library
    client = app.test_client()
    try:
        assert client.get("/api/answers/gated/evidence").get_json()["status"] == "pending"
        assert client.get("/healthz").status_code == 200, "the service answers while the answer runs"
        found = client.get("/api/search?q=is+the+gate+open").get_json()  # at once: by words until the vectors are in
        assert found["results"][0]["slug"] == "gated"
        gate.touch()
        library.wait_for_evidence(timeout=60)
        assert client.get("/api/answers/gated/evidence").get_json()["status"] == "passed"
    finally:
        gate.touch()
        library.close()
