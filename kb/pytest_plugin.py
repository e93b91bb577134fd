"""pytest collects answer files: one test item per runnable snippet (`answers/x.md::snippet-N`).

Items of one answer share one run through the same runner the service uses, so CI evidence and
served evidence are the same thing. A broken answer file becomes one failing `format` item with
its `file:line`, and the other answers still run. With pytest-xdist use `--dist loadfile` (set in
this project's pytest.ini) so each answer runs once, on one worker.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kb.format.answer import Answer, FormatError, Snippet, load_answers
from kb.run.checker import evidence_for
from kb.run.limits import DEFAULT_MEMORY_MB, DEFAULT_OUTPUT_KIB, Limits
from kb.run.runner import Runner
from kb.store import evidence as ev
from kb.store.cache import Store


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kb", "executable answers")
    group.addoption("--kb-cache", metavar="DB", default=None,
                    help="reuse cached evidence from this SQLite file (default: always run the snippets)")
    group.addoption("--kb-timeout", type=float, default=Limits.timeout, help="seconds per answer")
    group.addoption("--kb-memory-mb", type=float, default=DEFAULT_MEMORY_MB, help="MiB an answer may allocate")
    group.addoption("--kb-output-kib", type=float, default=DEFAULT_OUTPUT_KIB, help="KiB of output kept per snippet")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> AnswerFile | None:
    if file_path.suffix == ".md" and file_path.parent.name == "answers":
        return AnswerFile.from_parent(parent, path=file_path)
    return None


RUNNER = pytest.StashKey[Runner]()


def _runner(config: pytest.Config) -> Runner:
    """One runner (one fork server) per pytest process, closed when the session ends."""
    runner = config.stash.get(RUNNER, None)
    if runner is None:
        limits = Limits.of(config.getoption("kb_timeout"), config.getoption("kb_memory_mb"),
                           config.getoption("kb_output_kib"))
        runner = config.stash[RUNNER] = Runner(limits)
        config.add_cleanup(runner.close)
    return runner


class AnswerFile(pytest.File):
    answer: Answer

    def collect(self) -> Iterator[pytest.Item]:
        answers, errors = load_answers([self.path])
        if errors:
            yield FormatItem.from_parent(self, name="format", error=errors[0])
            return
        self.answer = next(iter(answers.values()))
        self._evidence: ev.Evidence | None = None
        for snippet in self.answer.runnable:
            yield SnippetItem.from_parent(self, name=f"snippet-{snippet.index}", snippet=snippet)

    def evidence(self) -> ev.Evidence:
        if self._evidence is None:
            db = self.config.getoption("kb_cache")
            store = Store(db) if db else None
            self._evidence, _ = evidence_for(self.answer, _runner(self.config), store, use_cache=bool(db))
        return self._evidence


class AnswerFailure(Exception):
    """A snippet's evidence did not hold; the message is already in `file:line: …` form."""


class FormatItem(pytest.Item):
    def __init__(self, *, error: FormatError, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        raise AnswerFailure(str(self.error))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        return str(excinfo.value) if excinfo.errisinstance(AnswerFailure) else super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, max(self.error.line - 1, 0), f"{self.error.path}::format"


class SnippetItem(pytest.Item):
    parent: AnswerFile

    def __init__(self, *, snippet: Snippet, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.snippet = snippet

    def runtest(self) -> None:
        answer = self.parent.answer
        result = self.parent.evidence()["snippets"][self.snippet.index]
        if result["status"] == "skipped":
            pytest.skip("not run: an earlier snippet of this answer stopped with an error")
        lines = []
        for check in result["checks"]:
            if not check["passed"]:
                lines.append(f"{answer.path}:{check['line']}: check failed: {check['claim']}\n"
                             f"    computed value: {check['value']}")
        error = result["error"]
        if error:
            lines.append(f"{answer.path}:{error['line'] or self.snippet.line}: {error['type']}: {error['message']}")
            if error["traceback"]:
                lines.append(error["traceback"].rstrip())
        if lines:
            if result["stdout"]:
                lines.append("--- snippet output ---\n" + result["stdout"].rstrip())
            raise AnswerFailure("\n".join(lines))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        return str(excinfo.value) if excinfo.errisinstance(AnswerFailure) else super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.snippet.line - 1, f"{self.parent.answer.path}::{self.name}"
