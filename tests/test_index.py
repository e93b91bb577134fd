"""The index (`kb.search.index.SearchIndex`): the lexical stage of the lookup, `candidates`.

FTS5 over each answer's questions (title, aliases) and tags. Synthetic answers, so the tests hold
whatever the knowledge base contains; the lookup's quality on real questions is measured in
tests/test_semantic_lookup.py. (The whole-answer ranker these tests gated until it went is a
baseline in bench/baseline_ranker.py.)
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kb.format.answer import Answer
from kb.search.index import PAD_ROWS_PER_ANSWER, SearchIndex
from kb.search.lookup import clean_body
from kb.store.cache import Store

ROOT = Path(__file__).resolve().parent.parent


def answer(slug, title, summary="A short summary.", body="", aliases=(), tags=()) -> Answer:
    """A synthetic answer, as `kb.format.answer.parse_answer` would return it."""
    return Answer(slug=slug, path=f"answers/{slug}.md", title=title, summary=summary, body=body,
                  body_line=1, snippets=[], aliases=list(aliases), tags=list(tags))


SYNTHETIC = [
    answer("dropout", "How does dropout regularise a network?",
           summary="Dropout zeroes random units during training so no unit can rely on another.",
           body="Inverted dropout divides by keep_prob so the expected activation is unchanged.",
           aliases=["What is keep_prob?"], tags=["regularization"]),
    answer("adam", "What does the Adam optimiser do?",
           summary="Adam combines momentum with RMSprop and corrects the bias of both averages.",
           body="The first moment is an exponentially weighted average of the gradients.",
           aliases=["Why does Adam need bias correction?"], tags=["optimization"]),
    answer("batch-norm", "Why does batch normalisation speed up training?",
           summary="It normalises each layer's pre-activations over the mini-batch.",
           body="With $\\gamma$ and $\\beta$ the network can undo the normalisation: "
                "$\\tilde{z} = \\gamma \\frac{z - \\mu}{\\sqrt{\\sigma^2 + \\varepsilon}} + \\beta$.\n\n"
                "```python\nrng = np.random.default_rng(0)  # a seeded generator\n"
                "check(\"the normalised batch has zero mean\", True)\n```\n",
           aliases=["What are gamma and beta in batch norm?"], tags=["optimization"]),
    answer("learning-rate", "How do I choose the learning rate?",
           summary="Try values on a log scale and watch the cost.",
           body="Too large a learning rate makes the cost diverge; too small and training crawls.",
           tags=["optimization"]),
]


def rows_per_slug(db_path) -> dict:
    with sqlite3.connect(db_path) as db:
        return dict(db.execute("SELECT slug, count(*) FROM search_short WHERE slug IS NOT NULL GROUP BY slug"))


def fts_rows(db_path) -> dict:
    with sqlite3.connect(db_path) as db:
        return dict(db.execute("SELECT slug, rowid FROM search_short WHERE slug IS NOT NULL"))


def padding_rows(db_path) -> int:
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT count(*) FROM search_short WHERE slug IS NULL").fetchone()[0]


@pytest.fixture
def index(tmp_path):
    idx = SearchIndex(tmp_path / "kb.sqlite3")
    idx.rebuild(SYNTHETIC)
    return idx


# --- ranking on synthetic answers ---------------------------------------------------------------


def candidates(index, query, limit=30):
    return [slug for slug, _ in index.candidates(query, limit)]


def test_candidates_are_slugs_and_scores_best_first(index):
    hits = index.candidates("adam optimiser momentum", 10)
    assert hits and hits[0][0] == "adam"
    for slug, score in hits:
        assert isinstance(slug, str) and isinstance(score, float) and score > 0
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


@pytest.mark.parametrize("query, slug", [
    ("keep_prob", "dropout"),                              # alias, split like FTS5 splits it
    ("regularize with dropout", "dropout"),                # American spelling of "regularise"
    ("batch normalization", "batch-norm"),                 # -ization finds -isation
    ("normalising the batches", "batch-norm"),             # porter: normalising ~ normalise
    ("bias corrected adam", "adam"),                       # stemmed words of the alias
    ("gamma beta", "batch-norm"),
    ("what learning rate should I pick", "learning-rate"),
    ("ADAM", "adam"),
])
def test_synthetic_lookups(index, query, slug):
    assert candidates(index, query)[0] == slug


def test_the_questions_outrank_the_tags(tmp_path):
    idx = SearchIndex(tmp_path / "kb.sqlite3")
    idx.rebuild([
        answer("tagged", "Why average the gradient?", tags=["momentum"]),
        answer("title", "What is momentum?", tags=["optimization"]),
        answer("other", "What is dropout?"),
    ])
    assert candidates(idx, "momentum") == ["title", "tagged"]


def test_summaries_and_bodies_are_not_indexed(index):
    """The semantic stage reads them; the lexical stage holds a few words per answer."""
    assert candidates(index, "inverted keep") == ["dropout"]          # "keep_prob" from an alias
    assert candidates(index, "exponentially weighted average") == []  # body of "adam" only


def test_a_word_found_in_most_answers_still_counts(tmp_path):
    # Without padding rows, FTS5 gives "sigmoid" (in 3 of 4 answers) an IDF of ~0 and the
    # ranking of "sigmoid slope" would depend on "slope" alone.
    idx = SearchIndex(tmp_path / "kb.sqlite3")
    idx.rebuild([
        answer("sigmoid", "Why is the sigmoid's slope at most 1/4?"),
        answer("relu", "Why is ReLU better than sigmoid?", body="The slope of ReLU is 1."),
        answer("tanh", "Why is tanh better than sigmoid?", body="tanh has a larger slope at 0."),
        answer("other", "What is dropout?"),
    ])
    hits = idx.candidates("sigmoid slope", 30)
    assert hits[0][0] == "sigmoid" and hits[0][1] > 1.5 * hits[1][1]
    assert idx.candidates("sigmoid", 30)[-1][1] > 0.1


def test_clean_body_keeps_words_not_markup_or_code_identifiers():
    """The body text the lookup's semantic stage embeds, section by section."""
    body = next(a for a in SYNTHETIC if a.slug == "batch-norm").body
    words = set(clean_body(body).split())
    assert not {"frac", "sqrt", "tilde"} & words                       # LaTeX layout commands
    assert "epsilon" in words                                          # from \varepsilon
    assert not {"rng", "default_rng"} & words                          # code, apart from comments and strings
    assert {"seeded", "generator"} <= words                            # a code comment
    assert "the normalised batch has zero mean" in clean_body(body)    # a check claim


# --- hostile and degenerate queries -------------------------------------------------------------


HOSTILE = ['"', '""', "'", 'NEAR(', "NEAR(adam dropout, 2)", "a AND", "AND", "OR OR", "NOT", "NOT adam",
           "*", "adam*", "-", "-adam", "^x", "^", "(", ")))", "{title}: adam", "title:adam", "adam:",
           "a + b", "dropout\x00", "\ud800 adam", "σ′(z) ≤ ¼", "naïve café", "🤖 adam 🚀", "🤖",
           "x" * 10_000, "adam " * 2_000, "why " * 5_000, "\n\t\r", "SELECT * FROM search_short; --",
           "'; DROP TABLE search_short; --", "%", "_", "\\", "ADAM NEAR/3 momentum", None, 42]


@pytest.mark.parametrize("query", HOSTILE, ids=lambda q: repr(q)[:30])
def test_hostile_queries_do_not_raise(index, query):
    hits = index.candidates(query, 5)
    assert isinstance(hits, list) and len(hits) <= 5
    assert all(score > 0 for _, score in hits)
    assert index.count() == len(SYNTHETIC)               # and the table is still there


@pytest.mark.parametrize("query", ['"adam', 'adam"', "NOT adam", "adam*", "(adam)", "adam:",
                                   "🤖 adam 🚀"])
def test_query_syntax_characters_are_taken_as_text(index, query):
    assert candidates(index, query)[0] == "adam"


@pytest.mark.parametrize("query", ["", "   ", "why is the", "What is it and how do we do it?", "?!", "🤖"])
def test_a_query_without_searchable_words_finds_nothing(index, query):
    assert index.candidates(query, 30) == []


def test_limit_is_respected(index):
    everything = candidates(index, "adam dropout batch learning rate", 50)
    assert len(everything) == 4
    assert candidates(index, "adam dropout batch learning rate", 2) == everything[:2]
    assert len(candidates(index, "adam dropout batch learning rate", 1)) == 1
    assert candidates(index, "adam", 0) == []


# --- rebuilding ---------------------------------------------------------------------------------


def test_rebuild_only_when_the_indexed_text_changes(tmp_path):
    path = tmp_path / "kb.sqlite3"
    idx = SearchIndex(path)
    assert idx.count() == 0 and candidates(idx, "adam") == []
    assert idx.rebuild(SYNTHETIC) is True
    assert idx.rebuild(SYNTHETIC) is False
    assert idx.rebuild(list(reversed(SYNTHETIC))) is False          # order does not matter
    assert SearchIndex(path).rebuild(SYNTHETIC) is False             # nor does the process
    prose_only = [*SYNTHETIC[:-1], answer("learning-rate", "How do I choose the learning rate?",
                                          summary="Try values on a log scale.", body="Use a range test.",
                                          tags=["optimization"])]
    assert idx.rebuild(prose_only) is False                          # summary and body are not indexed
    edited = [*SYNTHETIC[:-1], answer("learning-rate", "How do I choose the learning rate?",
                                      aliases=["What is a learning rate range test?"], tags=["optimization"])]
    before = fts_rows(path)
    assert idx.rebuild(edited) is True
    assert candidates(idx, "range test")[0] == "learning-rate"
    after = fts_rows(path)                                           # only the edited answer's row is new
    assert {s: r for s, r in after.items() if s != "learning-rate"} == {s: r for s, r in before.items() if s != "learning-rate"}
    assert after["learning-rate"] != before["learning-rate"]
    assert idx.rebuild(edited[:2]) is True                           # answers removed
    assert idx.count() == 2 and rows_per_slug(path) == {"dropout": 1, "adam": 1}
    assert padding_rows(path) == PAD_ROWS_PER_ANSWER * 2
    assert candidates(idx, "learning rate") == []
    assert idx.rebuild(edited) is True and padding_rows(path) == PAD_ROWS_PER_ANSWER * len(edited)
    assert idx.rebuild([]) is True and idx.count() == 0 and candidates(idx, "adam") == []
    assert padding_rows(path) == 0 and rows_per_slug(path) == {}


def test_shares_the_file_with_the_evidence_store(tmp_path):
    path = tmp_path / "kb.sqlite3"
    Store(path)
    idx = SearchIndex(path)
    idx.rebuild(SYNTHETIC)
    Store(path)
    assert SearchIndex(path).count() == len(SYNTHETIC)
    with sqlite3.connect(path) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"evidence", "figures", "search_short", "search_meta"} <= tables


def test_an_index_built_by_another_version_is_rebuilt(tmp_path):
    path = tmp_path / "kb.sqlite3"
    SearchIndex(path).rebuild(SYNTHETIC)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE search_meta SET value = 'an older schema' WHERE key = 'schema'")
    idx = SearchIndex(path)
    assert idx.count() == 0
    assert idx.rebuild(SYNTHETIC) is True and candidates(idx, "adam")[0] == "adam"


@pytest.mark.parametrize("shared", [True, False], ids=["one-instance", "one-instance-per-thread"])
def test_threads_rebuilding_at_once_leave_one_row_per_answer(tmp_path, shared):
    path = tmp_path / "kb.sqlite3"
    first = SearchIndex(path)
    barrier, results, errors = threading.Barrier(8), [], []

    def work():
        try:
            idx = first if shared else SearchIndex(path)
            barrier.wait()
            results.append(idx.rebuild(SYNTHETIC))
            idx.candidates("adam", 30)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(results) == [False] * 7 + [True]
    assert rows_per_slug(path) == {a.slug: 1 for a in SYNTHETIC}


CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from kb.format.answer import Answer
from kb.search.index import SearchIndex

db_path, start, rounds = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])

def answers(n):
    return [Answer(slug=f"a{i}", path=f"answers/a{i}.md", title=f"Question {i} about topic{i}?",
                   summary=f"Summary {i}.", body=("word " * 200) + f"topic{i}", body_line=1,
                   snippets=[], tags=["t"]) for i in range(n)]

while time.time() < start:
    time.sleep(0.001)
index = SearchIndex(db_path)           # several processes create the tables at once, too
rebuilt, seen = [], []
for r in range(rounds):
    rebuilt.append(index.rebuild(answers(3 if r % 2 == 0 else 5)))
    counts = dict(index.connection().execute("SELECT slug, count(*) FROM search_short GROUP BY slug"))
    padding = counts.pop(None, 0)          # one statement: one snapshot of the table
    seen.append([sorted(counts.items()), padding])
    index.candidates("question topic1", 30)
print(json.dumps({"rebuilt": rebuilt, "seen": seen}))
"""


def run_children(db_path, processes, rounds):
    start = time.time() + 1.5            # after every child has started and imported kb.search.index
    command = [sys.executable, "-c", CHILD, str(ROOT), str(db_path), str(start), str(rounds)]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(processes)]
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        outputs.append(json.loads(out))
    return outputs


def test_processes_rebuilding_at_once_leave_one_row_per_answer(tmp_path):
    path = tmp_path / "kb.sqlite3"
    outputs = run_children(path, processes=4, rounds=1)
    assert sorted(o["rebuilt"][0] for o in outputs) == [False, False, False, True]
    assert rows_per_slug(path) == {"a0": 1, "a1": 1, "a2": 1}
    assert SearchIndex(path).count() == 3


def test_processes_rebuilding_different_answers_never_see_a_mixed_index(tmp_path):
    path = tmp_path / "kb.sqlite3"
    outputs = run_children(path, processes=4, rounds=12)
    assert sum(sum(o["rebuilt"]) for o in outputs) > 12      # they did fight over the index
    for output in outputs:
        for rows, padding in output["seen"]:
            # each snapshot is one whole build: 3 or 5 answers, one row each, and their padding
            assert rows in ([[f"a{i}", 1] for i in range(3)], [[f"a{i}", 1] for i in range(5)])
            assert padding == PAD_ROWS_PER_ANSWER * len(rows)
    final = SearchIndex(path)
    final.rebuild([answer(f"a{i}", f"Question {i}?") for i in range(2)])
    assert rows_per_slug(path) == {"a0": 1, "a1": 1}


def test_a_thousand_answers(tmp_path):
    many = [answer(f"a{i}", f"Question {i} about topic{i}?", summary=f"Summary of topic{i}.",
                   body=" ".join(f"word{(i * 7 + k) % 500}" for k in range(300)), tags=[f"tag{i % 20}"])
            for i in range(1000)]
    idx = SearchIndex(tmp_path / "kb.sqlite3")
    assert idx.rebuild(many) and idx.count() == 1000
    assert candidates(idx, "topic123")[0] == "a123"
    assert len(candidates(idx, "tag7 tag8", 50)) == 50                  # 100 answers match
    assert idx.rebuild(many) is False
