"""What the learner's search page says (issue 19, items 2, 3 and 7): a result opens its answer at
the top, the matching section is a secondary link, the verdict is said in words (one answer, two
that fit, or none yet), nothing near zero is listed, no percentages; drafts are kept out; `kb new`
warns when an answer already fits."""
from __future__ import annotations

import dataclasses
import re

import pytest
from helpers import run_cli
from service_fixtures import write_small_answers

import kb.search.lookup as lk
from service import create_app


def results(html: str) -> list[str]:
    return re.findall(r'<a class="question" href="([^"]+)"', html)


def test_a_confident_answer_is_one_result_opening_at_the_top(client):
    body = client.get("/api/search?q=what+is+the+maximum+of+the+sigmoid+derivative").get_json()
    assert body["fit"] == "one" and body["confident"] is True
    html = client.get("/search?q=what+is+the+maximum+of+the+sigmoid+derivative").get_data(as_text=True)
    assert "The answer to “what is the maximum of the sigmoid derivative”" in html
    assert results(html)[0] == "/answers/sigmoid-slope"                   # the top of the answer
    assert '<ol class="answers results best">' in html and html.count('class="question"') <= 3
    assert 'Jump to <a href="/answers/sigmoid-slope#reasoning">Reasoning</a>' in html  # the section, secondary
    assert not re.search(r"\d%", html), "no percentages on the learner's page"


def test_no_answer_says_what_the_site_covers_and_lists_at_most_three(client):
    html = client.get("/search?q=how+do+I+get+a+certificate+for+the+course").get_data(as_text=True)
    assert "No sure answer to “how do I get a certificate for the course” yet" in html
    assert "Deep Learning Specialization (courses 1 to 5)" in html
    assert "has been noted" not in html and "will be written" not in html
    assert len(results(html)) <= 3
    if results(html):
        assert "The closest answers, which may not answer your question" in html


def test_two_answers_that_fit_are_offered_side_by_side(small_app, monkeypatch):
    weights = lk.default_weights()
    every_question_two = dataclasses.replace(weights, confident=(-100.0,) + (0.0,) * len(lk.CONFIDENCE_FEATURES),  # never sure
                                             thresholds={**weights.thresholds, "two": 0.0, "two_gap": 1.0})
    monkeypatch.setattr(small_app.extensions["kb"].library.lookup_engine, "weights", every_question_two)
    client = small_app.test_client()
    body = client.get("/api/search?q=slope+of+the+sigmoid").get_json()
    assert body["fit"] == "two" and body["confident"] is False
    html = client.get("/search?q=slope+of+the+sigmoid").get_data(as_text=True)
    assert "Two answers fit “slope of the sigmoid”" in html and "pick the one" in html
    assert len(results(html)) == 2 and html.count('<p class="summary">') == 2   # each with its scope


def test_a_long_question_is_cut_in_the_heading(client):
    html = client.get("/search", query_string={"q": "why " * 200}).get_data(as_text=True)
    heading = re.search(r"<h1[^>]*>(.*?)</h1>", html, re.S)[1]
    assert len(heading) < 200 and "…" in heading


@pytest.fixture
def with_draft(tmp_path):
    answers = write_small_answers(tmp_path / "answers")
    made = run_cli("new", "How does dropout regularise a network?", "--dir", answers, "--no-lookup", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    app = create_app({"KB_ANSWERS": str(answers), "KB_DB": str(tmp_path / "kb.sqlite3"), "TESTING": True})
    yield app
    app.extensions["kb"].close()


def test_a_skeleton_is_a_draft_kept_off_the_home_page_and_out_of_search(with_draft):
    client = with_draft.test_client()
    slug = "how-does-dropout-regularise-a-network"
    assert slug in with_draft.extensions["kb"].library.answers
    assert f"/answers/{slug}" not in client.get("/").get_data(as_text=True)
    found = client.get("/api/search?q=how+does+dropout+regularise+a+network&limit=10").get_json()
    assert slug not in [r["slug"] for r in found["results"]]
    page = client.get(f"/answers/{slug}").get_data(as_text=True)
    assert "Draft: this answer still holds the text <code>kb new</code> wrote." in page


def test_kb_new_names_the_answer_that_already_fits(tmp_path):
    answers = write_small_answers(tmp_path / "answers")
    made = run_cli("new", "What is the maximum of the sigmoid's derivative?", "--dir", answers,
                   "--db", tmp_path / "kb.sqlite3", cwd=tmp_path)
    assert made.returncode == 0
    assert "sigmoid-slope.md already answers this" in made.stderr
    fresh = run_cli("new", "How do I choose the number of filters in a convolutional layer?", "--dir", answers,
                    "--db", tmp_path / "kb.sqlite3", cwd=tmp_path)
    assert fresh.returncode == 0 and "already answers" not in fresh.stderr
