"""Fixtures: answer files in a temporary answers/ directory, an app over small answers, a clean
environment, and the real answers' evidence computed once per test session."""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import ROOT
from service_fixtures import write_small_answers

from kb.format.answer import load_answers
from kb.run.checker import check_all
from kb.run.runner import Runner
from kb.search.embeddings import shared_embedder
from kb.search.index import SearchIndex
from kb.search.lookup import Lookup
from kb.store.cache import Store
from service import create_app


@pytest.fixture(autouse=True)
def no_kb_settings(monkeypatch):
    """`create_app` and the CLI read KB_* variables: a developer's shell must not change a test.

    Apps made in tests run missing evidence before `create_app` returns (`wait`), so what a test
    reads next does not depend on a background thread; tests/test_app_state.py covers `background`.
    """
    for key in [k for k in os.environ if k.startswith("KB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("KB_RUN_MISSING", "wait")


@pytest.fixture(scope="session")
def real_evidence(tmp_path_factory) -> Path:
    """A database holding the evidence of the real answers and the embeddings of their texts,
    computed once per test session (a fresh database embeds ~700 texts: tens of seconds).

    xdist workers share the session's base directory: the first to need it runs the answers under
    a lock, the others wait and reuse the file. Tests copy it (`real_db`); nobody writes to it.
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker has its own folder in the session's
        shared = shared.parent
    path = shared / "real-answers.sqlite3"
    with open(shared / "real-answers.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "real-answers.done").exists():
            answers, _ = load_answers([ROOT / "answers"])
            with Runner() as runner:
                for _ in check_all(answers.values(), runner, Store(path)):
                    pass
            Lookup(SearchIndex(path), path, shared_embedder()).rebuild(answers.values())
            (shared / "real-answers.done").touch()
    return path


@pytest.fixture
def real_db(real_evidence, tmp_path) -> Path:
    """A private copy of the real answers' evidence database, for one test to use and change."""
    copy = tmp_path / "real.sqlite3"
    shutil.copyfile(real_evidence, copy)
    return copy


@pytest.fixture
def scratch():
    """A short TMPDIR for a server: the fork server's Unix socket lives in it, and AF_UNIX paths
    are limited to 107 bytes (pytest's tmp_path under xdist is longer). Its path names the
    server's fork servers (their command line holds the socket's path)."""
    folder = Path(tempfile.mkdtemp(prefix="kbt-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def answers_dir(tmp_path):
    folder = tmp_path / "answers"
    folder.mkdir()
    return folder


@pytest.fixture
def small_app(tmp_path):
    answers = write_small_answers(tmp_path / "answers")
    app = create_app({"KB_ANSWERS": str(answers), "KB_DB": str(tmp_path / "kb.sqlite3"), "TESTING": True,
                      "KB_RUN_COOLDOWN": 0})  # a re-run right after start-up runs
    yield app
    app.extensions["kb"].close()


@pytest.fixture
def client(small_app):
    return small_app.test_client()
