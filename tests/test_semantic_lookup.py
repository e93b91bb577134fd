"""Hybrid lookup (`kb.search.lookup`, `kb.search.embeddings`, `kb.store.gaps`): quality on dev, confidence, sections,
the embedding cache, `kb gaps` and the pinned model files. Speed is measured in `make bench`."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import threading
import time

import numpy as np
import pytest
from helpers import KB, ROOT, copy_database

from kb.format.answer import Answer, load_answers
from kb.render.markdown import render_answer
from kb.search import evaluation as lookup_data
from kb.search import fit as lookup_fit
from kb.search.embeddings import (
    MODEL_SHA256,
    TOKENIZER_SHA256,
    Embedder,
    EmbeddingCache,
    ModelFileError,
    shared_embedder,
)
from kb.search.index import SearchIndex
from kb.search.lookup import Lookup, default_weights, sections
from kb.store.gaps import Gaps
from service import create_app

# Share of the in-scope dev questions whose first result is the expected answer, each question
# scored by a lookup without the aliases cut from its own fold of dev (`lookup_fit.cross_fitted`:
# dev phrasings are aliases, and a question would otherwise find its own copy; a fold holds whole
# source threads). Measured 0.842 (590 of 701: tests/lookup_eval dev, split by source thread, +
# tests/lookup_cases.py, 77 answers, with the answers' classifier, `kb.search.classifier`); 0.772
# on 659 before it and before 229 more aliases cut from dev questions. The test split is reported by
# `make bench`, never tested against.
DEV_TOP1 = 0.80


def answer(slug, title, summary="A short summary.", body="", aliases=()) -> Answer:
    return Answer(slug=slug, path=f"answers/{slug}.md", title=title, summary=summary, body=body,
                  body_line=1, snippets=[], aliases=list(aliases))


SYNTHETIC = [
    answer("dropout", "How does dropout regularise a network?", "Dropout zeroes random units during training.",
           "## Short answer\n\nUnits are dropped.\n\n## Why divide by keep_prob\n\nSo the expected activation "
           "is unchanged.\n"),
    answer("adam", "What does the Adam optimiser do?", "Adam combines momentum with RMSprop.",
           "## Short answer\n\nIt averages gradients.\n\n## Bias correction\n\nEarly averages are too small.\n"),
    answer("softmax", "Why subtract the max in softmax?", "Exponentials of large scores overflow.",
           "## Short answer\n\nThe shift cancels.\n"),
]


@pytest.fixture(scope="module")
def real_lookup(tmp_path_factory, real_evidence):
    answers, _ = load_answers([ROOT / "answers"])
    path = tmp_path_factory.mktemp("lookup") / "kb.sqlite3"
    copy_database(real_evidence, path)  # the embeddings are computed once per session (WAL included)
    lookup = Lookup(SearchIndex(path), path, shared_embedder())
    lookup.rebuild(answers.values())
    return lookup, answers


def test_top1_rate_on_the_dev_split(real_lookup):
    lookup, _ = real_lookup
    dev = lookup_data.entries("dev")
    scored = lookup_fit.cross_fitted(dev, db_path=lookup.cache.database.path)
    cases = [(q, slug, found) for (q, slug), (found, _, _) in zip(dev, lookup_fit.top(scored, default_weights().weights), strict=True)
             if slug is not None]
    misses = [(q[:80], slug, found) for q, slug, found in cases if found != slug]
    rate = 1 - len(misses) / len(cases)
    print(f"\ndev top-1, cross-fitted {rate:.3f} ({len(cases) - len(misses)} of {len(cases)})")
    assert rate >= DEV_TOP1, misses


def test_out_of_scope_dev_questions_are_not_confident(real_lookup):
    lookup, _ = real_lookup
    outside = [q for q, slug in lookup_data.entries("dev") if slug is None]
    if not outside:  # tests/lookup_eval not there: one the knowledge base clearly does not answer
        outside = ["How do I install the CUDA drivers for my GPU on Windows?"]
    caught = [not lookup.lookup(q, 3)["confident"] for q in outside]
    assert sum(caught) >= 0.8 * len(caught)


def test_results_name_the_best_section_and_a_calibrated_score(real_lookup):
    lookup, answers = real_lookup
    found = lookup.lookup("why subtract the max before exponentiating in softmax", 5)
    assert found["confident"] is True
    best = found["results"][0]
    assert best["slug"] == "softmax"
    anchors = [s.anchor for s in sections(answers["softmax"])]
    assert best["section"]["anchor"] in anchors and best["section"]["anchor"] != "short-answer" or len(anchors) == 1
    scores = [r["score"] for r in found["results"]]
    assert all(0 <= s <= 1 for s in scores) and scores == sorted(scores, reverse=True)


def test_section_anchors_are_the_rendered_heading_ids(real_lookup):
    _, answers = real_lookup
    for found in answers.values():
        rendered = "".join(v for kind, v in render_answer(found).parts if kind == "html")
        ids = re.findall(r'<h[1-6] id="([^"]+)"', rendered)
        assert [s.anchor for s in sections(found) if s.anchor] == ids, found.slug


def test_headings_inside_code_are_not_sections():
    found = answer("x", "X?", body="Intro.\n\n## One\n\ntext\n\n```python\n# not a heading\n```\n\n## One\n\nmore\n")
    assert [(s.anchor, s.title) for s in sections(found)] == [("", "X?"), ("one", "One"), ("one_1", "One")]


@pytest.mark.parametrize("query", [None, 42, "", "   ", "\ud800 adam", "dropout\x00", "🤖", "x" * 10_000,
                                   "why " * 5_000, '"NEAR(adam dropout, 2)" OR *', "σ′(z) ≤ ¼"])
def test_any_query_gives_the_nearest_answers_or_none(tmp_path, query):
    path = tmp_path / "kb.sqlite3"
    lookup = Lookup(SearchIndex(path), path, shared_embedder())
    lookup.rebuild(SYNTHETIC)
    found = lookup.lookup(query, 2)
    assert isinstance(found["confident"], bool) and len(found["results"]) <= 2
    assert all(0 <= hit["score"] <= 1 for hit in found["results"])


# --- the embedding cache -----------------------------------------------------------------------


def test_processes_starting_on_a_fresh_store_embed_each_text_once(tmp_path):
    """gunicorn workers on a fresh store take turns: the one that waits finds the vectors."""
    path = tmp_path / "kb.sqlite3"
    texts = [f"why does layer {i} of the network need a nonlinearity" for i in range(40)]
    caches = [EmbeddingCache(path, Embedder()) for _ in range(2)]  # as two workers would hold them
    start = threading.Barrier(2)
    results = [None, None]

    def worker(k):
        start.wait()
        results[k] = caches[k].vectors(texts)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c.embedder.calls for c in caches) == [0, len(texts)]
    assert np.array_equal(results[0], results[1])



def test_a_restart_embeds_nothing_and_an_edit_only_what_changed(tmp_path):
    path = tmp_path / "kb.sqlite3"
    embedder = shared_embedder()
    first = Lookup(SearchIndex(path), path, embedder)
    before = embedder.calls
    first.rebuild(SYNTHETIC)
    texts = len(first.state.kind)
    assert embedder.calls - before == texts
    before = embedder.calls
    Lookup(SearchIndex(path), path, embedder).rebuild(SYNTHETIC)         # a restart
    assert embedder.calls == before
    edited = [*SYNTHETIC[:2], answer("softmax", "Why subtract the max in softmax?",
                                     "Large scores overflow exp; shifting them changes nothing.",
                                     "## Short answer\n\nThe shift cancels.\n")]
    restarted = Lookup(SearchIndex(path), path, embedder)
    restarted.rebuild(edited)
    assert embedder.calls - before == 1                                  # only the new summary
    assert restarted.lookup("does shifting the scores change softmax", 1)["results"][0]["slug"] == "softmax"


# --- the service: confidence, sections, gaps ----------------------------------------------------


def test_api_results_link_to_their_section(client):
    body = client.get("/api/search?q=how+big+can+the+derivative+of+the+sigmoid+get&limit=3").get_json()
    assert body["confident"] is True
    best = body["results"][0]
    assert best["slug"] == "sigmoid-slope"
    assert best["section"] == {"anchor": "reasoning", "title": "Reasoning"}
    assert best["url"] == "/answers/sigmoid-slope"                      # the answer's top; the section is named
    assert body["fit"] == "one" and body["ready"] is True


def test_an_out_of_scope_question_is_not_confident_and_recorded(client, small_app, tmp_path):
    question = "How do I install the CUDA drivers for my GPU on Windows?"
    body = client.get("/api/search", query_string={"q": question}).get_json()
    assert body["confident"] is False and body["results"]               # the nearest, still listed
    page = client.get("/search", query_string={"q": "  how do I install the CUDA drivers for my GPU on windows? "})
    html = page.get_data(as_text=True)
    assert "No sure answer to" in html and "Deep Learning Specialization" in html
    client.get("/api/search", query_string={"q": "pandas KeyError when reading a csv file"})
    assert client.get("/api/search?q=what+is+the+maximum+of+the+sigmoid%27s+derivative").get_json()["confident"] is True

    db = small_app.config["KB_DB"]
    listed = json.loads(subprocess.run([str(KB), "gaps", "--json", "--db", db], cwd=ROOT,
                                       capture_output=True, text=True, check=True).stdout)["gaps"]
    assert [(g["query"], g["count"]) for g in listed] == [
        ("how do i install the cuda drivers for my gpu on windows?", 2),
        ("pandas keyerror when reading a csv file", 1)]                  # most asked first, nothing else
    assert set(listed[0]) == {"query", "count", "first_seen", "last_seen"}
    text = subprocess.run([str(KB), "gaps", "--db", db], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    assert text.splitlines()[0].split()[0] == "2" and "cuda drivers" in text.splitlines()[0]


def test_gaps_are_bounded(tmp_path):
    gaps = Gaps(tmp_path / "kb.sqlite3", max_entries=3, max_age_days=10)
    for day, query in enumerate(["a", "b", "b", "c", "d", "e"]):
        gaps.record(query, now=day * 86400)
    assert [g["query"] for g in gaps.list()] == ["b", "e", "d"]          # the rarest, oldest went
    gaps.record("f", now=30 * 86400)                                     # 10 days later the rest are old
    assert [g["query"] for g in gaps.list()] == ["f"]


def test_gaps_recorded_by_many_threads_at_once_all_count(tmp_path):
    """A thread that finds another writing gaps leaves its own to that thread's transaction (so a
    search never waits on it): none is lost, none counted twice."""
    gaps = Gaps(tmp_path / "kb.sqlite3")
    write = gaps._write
    gaps._write = lambda batch: (time.sleep(0.002), write(batch))  # a slow disk: the others queue meanwhile
    go = threading.Barrier(8)

    def ask():
        go.wait()
        for i in range(50):
            gaps.record(f"Question  {i % 5}")

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted((g["query"], g["count"]) for g in gaps.list()) == [(f"question {i}", 80) for i in range(5)]


# --- the pinned model files --------------------------------------------------------------------


def test_an_altered_model_file_stops_start_up(tmp_path, answers_dir):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not the model")
    with pytest.raises(ModelFileError) as error:
        create_app({"KB_ANSWERS": str(answers_dir), "KB_DB": str(tmp_path / "kb.sqlite3"),
                    "KB_MODEL_FILE": str(bad), "KB_RUN_MISSING": False})
    assert str(bad) in str(error.value) and MODEL_SHA256 in str(error.value)
    with pytest.raises(ModelFileError, match=f"{tmp_path / 'missing.onnx'}.*{MODEL_SHA256}"):
        Embedder(tmp_path / "missing.onnx")
    with pytest.raises(ModelFileError, match=TOKENIZER_SHA256):
        Embedder(tokenizer_file=bad)
    # `kb build` never loads the model (the export searches by words, in the browser): the bad file is not read.
    result = subprocess.run([str(KB), "build", str(tmp_path / "site"), "--answers", str(answers_dir),
                             "--db", str(tmp_path / "kb.sqlite3")], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "KB_MODEL_FILE": str(bad), "KB_RUN_MISSING": "false"})
    assert result.returncode == 0 and "wrote" in result.stdout, result.stderr


def test_the_classifier_is_trained_once_per_set_of_texts(real_lookup):
    """A rebuild whose searched texts are unchanged (a touched file) keeps the classifier; an
    edit trains a new one, and searching by meaning goes on."""
    lookup, answers = real_lookup
    trained = lookup.state.classifier
    assert trained is not None
    lookup.rebuild(answers.values())
    assert lookup.state.classifier is trained
    edited = [dataclasses.replace(a, aliases=(*a.aliases, "why do we average dW over the examples"))
              if a.slug == "gradient-averaging" else a for a in answers.values()]
    lookup.rebuild(edited)
    assert lookup.state.classifier is not None and lookup.state.classifier is not trained
    assert lookup.lookup("why is dW averaged over the m examples", 3)["results"][0]["slug"] == "gradient-averaging"
    lookup.rebuild(answers.values())
