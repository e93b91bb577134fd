"""The knowledge base as a running service sees it: answers, their evidence, their index.

One object per app. It reloads `answers/` when a file changes (checked at most once a second,
by file names, sizes and modification times), keeps the search index in step, and reads or
produces evidence through the cache; with `run_changed`, answers whose code changed are re-run
in a background thread (edited prose only re-renders: the cache key ignores it). The service
and the static export both use it, only through its methods.

A reload publishes a new immutable `Snapshot` (answers, format errors, their rendered bodies)
in one assignment. A request takes one snapshot and reads only it, so a page can never mix the
answer of one reload with the generation or rendered body of another.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kb.format.answer import Answer, FormatError, Remembered, load_answers, parse_answer
from kb.format.draft import is_draft
from kb.render.markdown import Rendered, render_answer
from kb.run.checker import evidence_for
from kb.run.limits import Limits, cut_short
from kb.run.runner import Runner
from kb.search.embeddings import Embedder, shared_embedder
from kb.search.index import SearchIndex
from kb.search.lookup import Lookup
from kb.store import evidence as ev
from kb.store.cache import Store

log = logging.getLogger(__name__)
Files = tuple[tuple[str, int, int], ...]  # (name, mtime in ns, size) of each answer file


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The answers of one reload. `rendered` fills a private cache of *these* answers' bodies."""

    generation: int
    answers: Mapping[str, Answer]
    errors: tuple[FormatError, ...]
    _bodies: dict[str, Rendered] = field(default_factory=dict, repr=False, compare=False)

    def rendered(self, answer: Answer) -> Rendered:
        """The answer's rendered body, made once per snapshot (Markdown and MathML cost ms)."""
        body = self._bodies.get(answer.slug)
        if body is None:
            body = self._bodies[answer.slug] = render_answer(answer)
        return body


EMPTY = Snapshot(0, MappingProxyType({}), ())


class Library:
    def __init__(self, answers_dir: str | os.PathLike[str], db_path: str | os.PathLike[str],
                 limits: Limits | None = None, watch_interval: float = 1.0, run_changed: bool = False,
                 model_file: str | os.PathLike[str] | None = None, embed_in_background: bool = False,
                 embedder: Embedder | None = None, semantic: bool = True) -> None:
        self.answers_dir = Path(answers_dir)
        self.store = Store(db_path)
        self.index = SearchIndex(db_path)
        # Checks the model file against its pinned hash first: a bad file stops start-up here.
        # Without `semantic` (the static export, whose search is lexical) the model is never loaded.
        self.lookup_engine: Lookup | None = (Lookup(self.index, db_path, embedder or shared_embedder(model_file))
                                             if semantic else None)
        self.embed_in_background = embed_in_background
        self.limits = limits or Limits()
        self.watch_interval = watch_interval
        self.snapshot = EMPTY  # replaced, never changed, on every reload
        self._runner: Runner | None = None
        self._lock = threading.Lock()
        self._files_seen: Files | None = None
        self._checked = 0.0
        self._parsed: dict[str, tuple[tuple[int, int] | None, Answer | FormatError]] = {}  # name -> ((mtime, size), Answer or FormatError) of the last load
        self._drafts = Remembered(is_draft)
        # Answers whose code changed are re-run off the request path, one batch at a time.
        self.run_changed = run_changed
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-evidence")
        self._first_run: Future[int] | None = None
        # One run of an answer at a time in this process, whoever starts it (a request, the
        # start-up run, a re-run after an edit); `waiting` counts who waits for one under way.
        self._run_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._run_locks_lock = threading.Lock()
        self.waiting = 0
        self._healing, self._healed_seen = False, 0
        self._health: tuple[float, list[str]] = (-1e9, [])
        self.refresh(force=True)

    @property
    def answers(self) -> Mapping[str, Answer]:
        return self.snapshot.answers

    @property
    def errors(self) -> tuple[FormatError, ...]:
        return self.snapshot.errors

    @property
    def generation(self) -> int:
        return self.snapshot.generation

    @property
    def runner(self) -> Runner:
        with self._lock:
            if self._runner is None:
                self._runner = Runner(self.limits)
            return self._runner

    def close(self) -> None:
        self._background.shutdown(wait=True, cancel_futures=True)
        if self._runner is not None:
            self._runner.close()

    def _files(self) -> Files:
        """(name, mtime, size) of every answer file. `os.scandir`, not `Path.glob` + `stat`: this
        runs on a request once a second, and at 10,000 answers it is 2-4x cheaper."""
        found = []
        try:
            with os.scandir(self.answers_dir) as entries:
                for entry in entries:
                    if entry.name.endswith(".md"):
                        try:
                            stat = entry.stat()
                        except OSError:  # removed since it was listed
                            continue
                        found.append((entry.name, stat.st_mtime_ns, stat.st_size))
        except OSError:  # no answers directory (yet): nothing to serve, nothing to reload
            pass
        return tuple(sorted(found))

    def _parse_remembered(self, files: Files) -> Callable[[Path], Answer]:
        """`parse_answer`, reusing the last result for a file whose (mtime, size) is unchanged:
        an edit re-parses one file, not the knowledge base (10,000 answers: seconds)."""
        stats = {name: (mtime, size) for name, mtime, size in files}   # by name: hashing Paths is slow
        remembered, self._parsed = self._parsed, {}

        def parse(path: Path) -> Answer:
            stat = stats.get(path.name)
            hit = remembered.get(path.name)
            if hit is None or stat is None or hit[0] != stat:
                try:
                    hit = (stat, parse_answer(path))
                except FormatError as exc:
                    hit = (stat, exc)
            if stat is not None:
                self._parsed[path.name] = hit
            if isinstance(hit[1], FormatError):
                raise hit[1].with_traceback(None)
            return hit[1]
        return parse

    def refresh(self, force: bool = False) -> bool:
        """Reload the answers if a file changed; return True if it reloaded."""
        now = time.monotonic()
        if not force and now - self._checked < self.watch_interval:
            return False
        with self._lock:
            self._checked = now
            files = self._files()
            edited = self._files_seen is not None and files != self._files_seen  # not the first load
            if files == self._files_seen and not force:
                return False
            answers, errors = load_answers([self.answers_dir], parse=self._parse_remembered(files))
            first = self._files_seen is None
            self._files_seen = files
            self.snapshot = Snapshot(self.snapshot.generation + 1, MappingProxyType(answers), tuple(errors))
        # The search follows off the request path: nothing here waits for embedding, and no lock
        # is held while the worker runs (`Lookup.submit`: single flight, the newest answers win).
        # Drafts (still holding `kb new`'s placeholders) are not searched.
        drafts = self._drafts(answers.values())
        searchable = [a for a in answers.values() if not drafts[a.slug]]
        engine = self.lookup_engine
        if engine is None:
            self.index.rebuild(searchable)
        elif first and not self.embed_in_background:
            engine.wait(engine.submit(searchable))  # `KB_RUN_MISSING=wait|off`: ready on return
        else:
            if first:
                self.index.rebuild(searchable)  # the lexical fallback is current at once (milliseconds)
            engine.submit(searchable)
        for error in errors:
            log.warning("%s", error)
        if self.run_changed and edited:
            self._background.submit(self.run_missing)
        return True

    def evidence(self, answer: Answer) -> ev.Evidence:
        """The cached evidence for the answer's current code, or a `pending` record. A record the
        store had to drop (unreadable) is derived again in the background, where runs are on."""
        found = self.store.get(answer)
        if found is None and len(self.store.healed) != self._healed_seen and self.run_changed and not self._healing:
            self._healing, self._healed_seen = True, len(self.store.healed)
            self._background.submit(self._heal)
        return found or ev.pending(answer)

    def _heal(self) -> None:
        try:
            self.run_missing()
        finally:
            self._healing = False

    def health(self) -> list[str]:
        """What is wrong with the store now, as sentences (empty: nothing): unreadable records,
        and records dropped as unreadable since this process started."""
        problems = []
        unreadable = self.store.unreadable()
        if unreadable:
            problems.append(f"{len(unreadable)} evidence record(s) unreadable: {', '.join(sorted(unreadable)[:10])}")
            for slug in unreadable:
                self.store.drop(slug, "not valid JSON")
        answers = self.answers
        waiting = sorted(slug for slug in set(self.store.healed)
                         if slug in answers and self.store.get(answers[slug]) is None)
        if waiting:
            problems.append(f"{len(waiting)} unreadable evidence record(s) dropped, not derived again yet: "
                            f"{', '.join(waiting[:10])}")
        return problems

    def health_cached(self, every: float = 10.0) -> list[str]:
        """`health()`, looked at most once per `every` seconds (it reads the whole evidence table)."""
        now = time.monotonic()
        if now - self._health[0] >= every:
            self._health = (now, self.health())
        return self._health[1]

    @contextmanager
    def run_lock(self, slug: str, wait: bool = True) -> Iterator[bool]:
        """Hold the answer's run lock (True), or, with `wait=False` and a run under way, yield False."""
        with self._run_locks_lock:
            lock = self._run_locks[slug]
        if not lock.acquire(blocking=wait):
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def stamp(self, answer: Answer) -> int | None:
        """When the answer's current evidence was stored (None: pending): a cheap cache key."""
        return self.store.stamp(answer)

    def statuses(self, answers: Iterable[Answer]) -> dict[str, str]:
        """Each answer's evidence status ('pending' where its current code has none)."""
        return self.store.statuses(answers)

    def figure(self, answer: Answer, name: str) -> str | None:
        """A figure's SVG from the answer's stored evidence."""
        return self.store.figure(answer.slug, name)

    def lookup(self, query: str, limit: int = 5) -> dict[str, Any]:
        """{"confident", "fit", "ready", "shown", "results"}: the answers best first, each with its
        best section (kb.search.lookup). Without the semantic stage: the lexical one, never confident."""
        if self.lookup_engine is None:
            hits = self.index.candidates(query, limit)
            answers = self.answers
            results = [{"slug": s, "title": answers[s].title, "summary": answers[s].summary, "score": 0.0,
                        "section": {"anchor": "", "title": answers[s].title}} for s, _ in hits if s in answers]
            return {"confident": False, "fit": "none", "ready": False, "shown": min(3, len(results)), "results": results}
        return self.lookup_engine.lookup(query, limit)

    def run(self, answer: Answer) -> ev.Evidence:
        """Run the answer now (ignoring the cache) and store the fresh evidence. The caller holds
        `run_lock(answer.slug)`."""
        evidence, _ = evidence_for(answer, self.runner, self.store, use_cache=False)
        return evidence

    def _run_if_missing(self, answer: Answer) -> ev.Evidence | None:
        """Run the answer unless its evidence is stored meanwhile (under its run lock: a run a
        request started is waited for, never repeated alongside)."""
        with self.run_lock(answer.slug):
            cached = self.store.get(answer)
            if cached is not None and not cut_short(cached, self.limits):
                return None
            return self.run(answer)

    def run_missing_in_background(self) -> Future[int]:
        """Start running the missing evidence off the request path: the service answers at once
        (those pages say "evidence pending") and the terminal shows progress."""
        self._first_run = self._background.submit(self.run_missing, progress=True)
        return self._first_run

    def wait_for_evidence(self, timeout: float | None = None) -> None:
        """Block until the start-up run (if any) has finished; re-raise what it raised."""
        if self._first_run is not None:
            self._first_run.result(timeout)

    def run_missing(self, jobs: int = 2, progress: bool = False) -> int:
        """Run the answers without cached evidence for their current code (or whose evidence a
        since-raised limit cut short); return how many ran.

        Processes that share the database take turns (gunicorn workers starting on a fresh file):
        the next one finds the evidence stored and runs nothing.
        """
        with self.store.database.exclusive():
            missing = [a for a in self.answers.values()
                       if (cached := self.store.get(a)) is None or cut_short(cached, self.limits)]
            if progress and missing:
                log.info("running %d answer(s) without evidence; their pages say 'evidence pending' until it arrives",
                         len(missing))
            with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
                done = pool.map(self._run_if_missing, missing)
                for number, (answer, evidence) in enumerate(zip(missing, done, strict=True), 1):
                    status = "ran" if evidence is None else evidence["status"]
                    log.info("[%*d/%d] %-8s %s", len(str(len(missing))), number, len(missing), status, answer.slug)
        return len(missing)
