"""The knowledge base as a running service sees it: answers, their evidence, their index.

One object per process. It reloads `answers/` when a file changes (checked at most once a
second, by file names, sizes and modification times), keeps the search index in step, and
reads or produces evidence through the cache; with `run_changed`, answers whose code changed
are re-run in a background thread (edited prose only re-renders: the cache key ignores it). The service and the static export both use it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import evidence as ev
from .answer import FormatError, load_answers, parse_answer
from .checker import check_all, evidence_for
from .index import SearchIndex
from .lookup import Lookup
from .semantic import shared_embedder
from .render import Rendered, render_answer
from .runner import Limits, Runner
from .store import Store

log = logging.getLogger(__name__)


class Library:
    def __init__(self, answers_dir, db_path, limits: Limits | None = None, watch_interval: float = 1.0,
                 run_changed: bool = False, model_file=None):
        self.answers_dir = Path(answers_dir)
        self.store = Store(db_path)
        self.index = SearchIndex(db_path)
        # Checks the model file against its pinned hash first: a bad file stops start-up here.
        self.lookup = Lookup(self.index, db_path, shared_embedder(model_file))
        self.limits = limits or Limits()
        self.watch_interval = watch_interval
        self.answers, self.errors = {}, []
        self._rendered: dict = {}
        self.generation = 0  # bumps on every reload: a cheap key for caches derived from answers
        self._runner: Runner | None = None
        self._lock = threading.Lock()
        self._snapshot, self._checked = None, 0.0
        self._parsed: dict = {}  # path -> ((mtime, size), Answer or FormatError) of the last load
        # Answers whose code changed are re-run off the request path, one batch at a time.
        self._background = ThreadPoolExecutor(max_workers=1) if run_changed else None
        self.refresh(force=True)

    @property
    def runner(self) -> Runner:
        with self._lock:
            if self._runner is None:
                self._runner = Runner(self.limits)
            return self._runner

    def close(self) -> None:
        if self._background is not None:
            self._background.shutdown(wait=True, cancel_futures=True)
        if self._runner is not None:
            self._runner.close()

    def _files(self):
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

    def _parse_remembered(self, snapshot):
        """`parse_answer`, reusing the last result for a file whose (mtime, size) is unchanged:
        an edit re-parses one file, not the knowledge base (10,000 answers: seconds)."""
        stats = {self.answers_dir / name: (mtime, size) for name, mtime, size in snapshot}
        remembered, self._parsed = self._parsed, {}

        def parse(path):
            stat = stats.get(path)
            hit = remembered.get(path)
            if hit is None or stat is None or hit[0] != stat:
                try:
                    hit = (stat, parse_answer(path))
                except FormatError as exc:
                    hit = (stat, exc)
            if stat is not None:
                self._parsed[path] = hit
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
            snapshot = self._files()
            edited = self._snapshot is not None and snapshot != self._snapshot  # not the first load
            if snapshot == self._snapshot and not force:
                return False
            answers, errors = load_answers([self.answers_dir], parse=self._parse_remembered(snapshot))
            self.lookup.rebuild(answers.values())
            self.answers, self.errors, self._snapshot = answers, errors, snapshot
            self._rendered = {}
            self.generation += 1
        for error in errors:
            log.warning("%s", error)
        if self._background is not None and edited:
            self._background.submit(self.run_missing)
        return True

    def rendered(self, answer) -> Rendered:
        """The answer's rendered body, made once per reload (Markdown and MathML cost ms)."""
        rendered = self._rendered.get(answer.slug)
        if rendered is None:
            rendered = self._rendered[answer.slug] = render_answer(answer)
        return rendered

    def evidence(self, answer) -> dict:
        """The cached evidence for the answer's current code, or a `pending` record."""
        return self.store.get(answer) or ev.pending(answer)

    def run(self, answer) -> dict:
        """Run the answer now (ignoring the cache) and store the fresh evidence."""
        evidence, _ = evidence_for(answer, self.runner, self.store, use_cache=False)
        return evidence

    def run_missing(self, jobs: int = 2) -> int:
        """Run the answers without cached evidence for their current code (or whose evidence a
        since-raised limit cut short); return how many ran.

        Processes that share the database take turns (gunicorn workers starting on a fresh file):
        the next one finds the evidence stored and runs nothing.
        """
        with self.store.database.exclusive():
            missing = [a for a in self.answers.values()
                       if (cached := self.store.get(a)) is None or ev.cut_short(cached, self.limits)]
            for answer, evidence, _ in check_all(missing, self.runner, self.store, jobs=jobs):
                log.info("ran %s: %s", answer.slug, evidence["status"])
        return len(missing)
