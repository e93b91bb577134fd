"""Fixtures: answer files in a temporary answers/ directory, an app over small answers, a clean
environment, and the real answers' evidence computed once per test session."""
from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import ROOT, copy_database, run_cli
from hypothesis import settings
from service_fixtures import write_small_answers

from kb.format.answer import load_answers
from kb.run.checker import check_all
from kb.run.runner import Runner
from kb.search.embeddings import shared_embedder
from kb.search.lookup import embed_answers
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


# Property tests try Hypothesis' default 100 examples each; `pytest --hypothesis-profile=thorough` tries more.
settings.register_profile("thorough", max_examples=2000)

PROJECT_STORE = ROOT / ".kb" / "kb.sqlite3"   # `make run`'s, `kb check`'s and `kb audit`'s default database


@pytest.fixture(scope="session")
def real_evidence(tmp_path_factory) -> Path:
    """A database holding the evidence of the real answers and the embeddings of their texts,
    computed once per test session (a fresh database embeds ~700 texts: tens of seconds).

    xdist workers share the session's base directory: the first to need it runs the answers under
    a lock, the others wait and reuse the file. Tests copy it (`real_db`); nobody writes to it.

    It starts from a copy of the project's own store, `.kb/kb.sqlite3`, where there is one: in
    `make test`, `kb audit` has just run every answer into it and `kb index` embedded their texts;
    evidence is keyed by the code, the interpreter, NumPy and the runner
    (`kb.store.evidence.cache_key`), vectors by the text and the model, so only what that store
    lacks is run or embedded here. A store that cannot be read is no help: the session starts empty.
    """
    path = session_folder(tmp_path_factory) / "real-answers.sqlite3"
    with once_per_session(tmp_path_factory, "real-answers") as first:
        if first:
            answers, _ = load_answers([ROOT / "answers"])
            try:
                if PROJECT_STORE.is_file():
                    copy_database(PROJECT_STORE, path)
            except sqlite3.Error:  # unreadable: every answer runs
                path.unlink(missing_ok=True)
            # What `kb check` does, running then embedding; here at once, as they do not depend on
            # each other (the runner runs two answers at a time, the model embeds on one thread):
            # the other worker may be waiting on the lock.
            store = Store(path)  # the file made before two threads open it
            with ThreadPoolExecutor(max_workers=1) as pool:
                vectors = pool.submit(embed_answers, answers.values(), path, shared_embedder())
                with Runner() as runner:
                    for _ in check_all(answers.values(), runner, store):
                        pass
                vectors.result()
    return path


def session_folder(tmp_path_factory) -> Path:
    """The folder every xdist worker of this session shares (each has its own below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def once_per_session(tmp_path_factory, name: str) -> Iterator[bool]:
    """Hold `name`'s lock in the session's shared folder; True for the first worker to get here,
    which builds the thing (marked done when the block ends without an error), False for the
    others, which wait for it and reuse it."""
    shared = session_folder(tmp_path_factory)
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = shared / f"{name}.done"
        first = not done.exists()
        yield first
        if first:
            done.touch()


@pytest.fixture(scope="session")
def real_site(real_evidence, tmp_path_factory) -> Path:
    """The static export of the real answers, built once per session by `kb build` as a user runs
    it (under a lock, as `real_evidence`); `real_site.parent / "kb.sqlite3"` is the database it
    was built from. Read-only: three modules open it (export, browser, static search)."""
    work = session_folder(tmp_path_factory) / "real-site"
    with once_per_session(tmp_path_factory, "real-site") as first:
        if first:
            shutil.rmtree(work, ignore_errors=True)  # what a failed build left
            work.mkdir()
            copy_database(real_evidence, work / "kb.sqlite3")  # with its WAL: the vectors are there
            built = run_cli("build", work / "site", "--answers", ROOT / "answers", "--db", work / "kb.sqlite3",
                            cwd=work, timeout=600)
            assert built.returncode == 0, built.stdout + built.stderr
    return work / "site"


@pytest.fixture
def real_db(real_evidence, tmp_path) -> Path:
    """A private copy of the real answers' evidence database, for one test to use and change."""
    # The backup API, not a file copy: the session's writes may still sit in its write-ahead log,
    # and a copy of the main file alone would lack them (the vectors: a cold embedding per test).
    return copy_database(real_evidence, tmp_path / "real.sqlite3")


@pytest.fixture
def scratch():
    """A short TMPDIR for a server: the fork server's Unix socket lives in it, and AF_UNIX paths
    are limited to 107 bytes (pytest's tmp_path under xdist is longer). Its path names the
    server's fork servers (their command line holds the socket's path)."""
    folder = Path(tempfile.mkdtemp(prefix="kbt-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def visible(tmp_path):
    """A directory both a test and a snippet see: a run's /tmp is its own tmpfs (`kb.run.child`),
    so files a test and a snippet pass each other (a gate, a log of runs) live outside /tmp."""
    hidden = [os.path.realpath(p) for p in ("/tmp", "/var/tmp", "/dev/shm", tempfile.gettempdir())]
    base = next(b for b in (ROOT / ".kb", Path.home() / ".cache" / "kb")
                if not any(os.path.commonpath([h, os.path.realpath(b)]) == h for h in hidden))
    folder = base / "test-visible" / f"{os.getpid()}-{tmp_path.name}"
    folder.mkdir(parents=True)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def answers_dir(tmp_path):
    folder = tmp_path / "answers"
    folder.mkdir()
    return folder


@pytest.fixture(scope="session")
def small_template(tmp_path_factory) -> Path:
    """A database holding the small answers' evidence, index and embeddings, made once per worker:
    an app started on a copy of it runs nothing and embeds nothing."""
    folder = tmp_path_factory.mktemp("small-template")
    answers = write_small_answers(folder / "answers")
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("KB_")]:
            patch.delenv(key)
        patch.setenv("KB_RUN_MISSING", "wait")
        app = create_app({"KB_ANSWERS": str(answers), "KB_DB": str(folder / "kb.sqlite3")})
    app.extensions["kb"].close()
    return folder / "kb.sqlite3"


def small_app_on(folder: Path, template: Path, **config):
    """A fresh app over a fresh copy of the small answers, its database copied from the template."""
    answers = write_small_answers(folder / "answers")
    db = copy_database(template, folder / "kb.sqlite3")
    return create_app({"KB_ANSWERS": str(answers), "KB_DB": str(db), "TESTING": True, **config})


@pytest.fixture
def small_app(tmp_path, small_template):
    """An app of this test's own (it may run and edit answers)."""
    app = small_app_on(tmp_path, small_template, KB_RUN_COOLDOWN=0)  # a re-run right after start-up runs
    yield app
    app.extensions["kb"].close()


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory, small_template):
    """One app for a module's tests that only read (no runs, no edits, no settings changed)."""
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("KB_")]:
            patch.delenv(key)
        app = small_app_on(tmp_path_factory.mktemp("shared-app"), small_template, KB_RUN_MISSING="wait")
    yield app
    app.extensions["kb"].close()


@pytest.fixture
def client(small_app):
    return small_app.test_client()


@pytest.fixture(scope="module")
def reader(shared_app):
    """A client of the module's shared app, for tests that only read."""
    return shared_app.test_client()
