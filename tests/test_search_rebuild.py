"""Search never blocks a request (issue 19, item 1): `Library.refresh` swaps the snapshot at once,
the lookup rebuilds incrementally on a single-flight background worker, searches answer from the
lexical stage until the vectors are ready, and a failed rebuild leaves nobody waiting.

The embedder here is deliberately slow: it embeds nothing until the test opens its gate, so
"during a cold embedding" is a state the test holds, not a race against a clock. The assertions
are on behaviour (states, what was embedded and sectioned), never on times; the `join` timeouts
only stop a broken build from hanging the suite.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from service_fixtures import write_small_answers

from kb.library import Library
from kb.search.embeddings import DIMENSION
from service import create_app

HANG = 60  # seconds before a call that should return at once is declared hung


class SlowEmbedder:
    """Deterministic unit vectors from a hash of the text; document batches wait for `gate`."""

    def __init__(self, fail_first: bool = False) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()   # a document batch is waiting at the gate
        self.calls = 0
        self.texts: list[str] = []
        self.fail_first = fail_first

    def _vectors(self, texts):
        out = np.zeros((len(texts), DIMENSION), np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.lower().encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(DIMENSION)
            out[i] = v / np.linalg.norm(v)
        return out

    def embed(self, texts, max_tokens=256):
        self.started.set()
        assert self.gate.wait(HANG), "the test never opened the gate"
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("the model ran out of memory (on purpose)")
        self.calls += len(texts)
        self.texts += texts
        return self._vectors(texts)

    def query(self, text):
        return self._vectors([text])[0]


def in_thread(call):
    """Run `call` on a thread and return its result, failing (not hanging) if it blocks."""
    box = {}

    def run():
        try:
            box["value"] = call()
        except BaseException as exc:  # re-raised on the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive(), f"{call} blocked"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture
def slow(tmp_path):
    answers = write_small_answers(tmp_path / "answers")
    embedder = SlowEmbedder()
    library = in_thread(lambda: Library(answers, tmp_path / "kb.sqlite3", embedder=embedder, embed_in_background=True))
    yield library, embedder, answers
    embedder.gate.set()
    library.close()


def test_a_cold_start_answers_searches_lexically_and_never_confidently(slow):
    library, embedder, _ = slow
    assert embedder.started.wait(HANG) and not library.lookup_engine.ready       # the cold embedding is under way
    found = in_thread(lambda: library.lookup("maximum of the sigmoid derivative", 5))
    assert found["ready"] is False and found["confident"] is False and found["fit"] == "none"
    assert found["results"][0]["slug"] == "sigmoid-slope"                  # the lexical stage's answer
    assert all(0 <= hit["score"] <= 0.5 for hit in found["results"])
    embedder.gate.set()
    assert library.lookup_engine.wait(timeout=HANG)
    found = library.lookup("What is the maximum of the sigmoid derivative?", 5)
    assert found["ready"] is True and found["results"][0]["slug"] == "sigmoid-slope"


def test_an_edit_during_a_cold_embedding_is_served_at_once_and_embedded_alone(slow):
    library, embedder, answers = slow
    assert embedder.started.wait(HANG)
    page = answers / "averaging.md"
    page.write_text(page.read_text().replace("Why do we average the gradient", "Why do we take the mean of the gradient"))
    assert in_thread(lambda: library.refresh(force=True)) is True           # returns with the worker still held
    assert library.answers["averaging"].title.startswith("Why do we take the mean")
    embedder.gate.set()
    assert library.lookup_engine.wait(timeout=HANG)
    assert library.lookup_engine.state.position.keys() == {"sigmoid-slope", "averaging", "wrong-claim"}
    first = embedder.calls
    assert embedder.texts.count("Why do we take the mean of the gradient over the m examples?") == 1
    page.write_text(page.read_text().replace("The cost is an average", "The cost is a mean"))
    library.refresh(force=True)
    assert library.lookup_engine.wait(timeout=HANG)
    # Only the edited answer was sectioned and embedded again, and of it only the changed text.
    assert embedder.texts[first:] == ["The cost is a mean, so its gradient is the average of the per-example gradients."]
    assert library.lookup_engine.status.sectioned == 3 + 1 + 1                    # three, the first edit, the second


def test_a_failing_first_rebuild_leaves_no_search_waiting(tmp_path):
    answers = write_small_answers(tmp_path / "answers")
    embedder = SlowEmbedder(fail_first=True)
    embedder.gate.set()
    library = in_thread(lambda: Library(answers, tmp_path / "kb.sqlite3", embedder=embedder, embed_in_background=True))
    try:
        assert library.lookup_engine.wait(timeout=HANG)
        assert library.lookup_engine.status.failures == 1 and "out of memory" in library.lookup_engine.status.last_error
        found = in_thread(lambda: library.lookup("maximum of the sigmoid derivative", 3))
        assert found["ready"] is False and found["results"][0]["slug"] == "sigmoid-slope"
        (answers / "averaging.md").write_text((answers / "averaging.md").read_text() + "\nMore prose.\n")
        library.refresh(force=True)                                          # the next change retries
        assert library.lookup_engine.wait(timeout=HANG) and library.lookup_engine.ready
    finally:
        library.close()


def test_searches_during_a_cold_start_record_no_gap(tmp_path, monkeypatch):
    answers = write_small_answers(tmp_path / "answers")
    embedder = SlowEmbedder()
    monkeypatch.setattr("kb.library.shared_embedder", lambda model_file=None: embedder)
    app = in_thread(lambda: create_app({"KB_ANSWERS": str(answers), "KB_DB": str(tmp_path / "kb.sqlite3"),
                                        "TESTING": True, "KB_RUN_MISSING": "background"}))
    try:
        client = app.test_client()
        body = in_thread(lambda: client.get("/api/search?q=how+do+I+install+CUDA").get_json())
        assert body["ready"] is False and body["confident"] is False
        page = in_thread(lambda: client.get("/search?q=maximum+of+the+sigmoid+derivative").get_data(as_text=True))
        assert "share words with" in page and "still starting up" in page
        assert app.extensions["kb"].gaps.list() == []
        embedder.gate.set()
        assert app.extensions["kb"].library.lookup_engine.wait(timeout=HANG)
        client.get("/api/search?q=how+do+I+install+CUDA")
        assert [g["query"] for g in app.extensions["kb"].gaps.list()] == ["how do i install cuda"]
    finally:
        embedder.gate.set()
        app.extensions["kb"].close()


def _lookup_over(answers, db, embedder):
    from kb.format.answer import load_answers
    from kb.search.index import SearchIndex
    from kb.search.lookup import Lookup

    lookup = Lookup(SearchIndex(db), db, embedder)
    lookup.rebuild(load_answers([answers])[0].values())
    return lookup


@pytest.fixture
def mapped(tmp_path):
    """Small answers, a database, and an embedder that answers at once."""
    answers = write_small_answers(tmp_path / "answers")
    embedder = SlowEmbedder()
    embedder.gate.set()
    return answers, tmp_path / "kb.sqlite3", embedder


def test_workers_on_one_database_map_one_float16_file(mapped):
    answers, db, embedder = mapped
    first = _lookup_over(answers, db, embedder)
    embedded = embedder.calls
    second = _lookup_over(answers, db, embedder)   # another worker on the same machine
    assert embedder.calls == embedded > 0           # it embedded nothing
    files = sorted((db.parent / "kb.sqlite3.vectors").glob("*.npy"))
    assert len(files) == 1
    for lookup in (first, second):
        vectors = lookup.state.vectors
        assert isinstance(vectors, np.memmap) and vectors.dtype == np.float16
        assert Path(vectors.filename) == files[0] and vectors.shape == (len(lookup.state.kind), DIMENSION)
    question = "What is the maximum of the sigmoid derivative?"
    assert first.lookup(question, 3) == second.lookup(question, 3)
    assert first.lookup(question, 3)["results"][0]["slug"] == "sigmoid-slope"


def test_an_edit_maps_a_new_file_and_old_files_are_pruned(mapped):
    from kb.search.mapped import ABANDONED_S, KEEP

    answers, db, embedder = mapped
    lookup = _lookup_over(answers, db, embedder)
    folder = db.parent / "kb.sqlite3.vectors"
    killed, writing = folder / ".killed-writer.tmp", folder / ".live-writer.tmp"   # as a writer names them
    for left in (killed, writing):
        left.write_bytes(b"half a matrix")
    os.utime(killed, (time.time() - ABANDONED_S - 60,) * 2)
    page = answers / "averaging.md"
    for n in range(KEEP + 2):
        page.write_text(page.read_text() + f"\nEdit number {n}.\n")
        before = embedder.calls
        lookup = _lookup_over(answers, db, embedder)
        assert embedder.calls == before + 1           # only the edited section's text
        assert f"Edit number {n}." in embedder.texts[-1]
    assert len(list(folder.glob("*.npy"))) == KEEP
    assert not killed.exists() and writing.exists(), "what a killed writer left goes; a live writer's file stays"
    last = lookup.state.end[lookup.state.position["averaging"]] - 1     # its last section's vector is the edit's
    edited = embedder._vectors([embedder.texts[-1]])[0]
    assert np.allclose(lookup.state.vectors[last].astype(np.float32), edited, atol=1e-3)


def test_a_damaged_or_unwritable_vectors_file_never_stops_search(mapped):
    answers, db, embedder = mapped
    _lookup_over(answers, db, embedder)
    (file,) = (db.parent / "kb.sqlite3.vectors").glob("*.npy")
    file.write_bytes(b"not a matrix")
    lookup = _lookup_over(answers, db, embedder)             # written again, from the store
    assert isinstance(lookup.state.vectors, np.memmap) and np.load(file).shape == lookup.state.vectors.shape
    assert lookup.lookup("maximum of the sigmoid derivative", 3)["results"][0]["slug"] == "sigmoid-slope"
    other = db.parent / "other.sqlite3"
    (db.parent / "other.sqlite3.vectors").write_text("a file where the folder would be")
    lookup = _lookup_over(answers, other, embedder)            # kept in memory instead
    assert not isinstance(lookup.state.vectors, np.memmap) and lookup.state.vectors.dtype == np.float16
    assert lookup.lookup("maximum of the sigmoid derivative", 3)["results"][0]["slug"] == "sigmoid-slope"
