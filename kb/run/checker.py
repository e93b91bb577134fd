"""Evidence for many answers: from the cache when the code is unchanged, else from the runner."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING

from kb.format.answer import Answer
from kb.store import evidence as ev

from .limits import cut_short

if TYPE_CHECKING:  # the runner and the store are only passed through here
    from kb.store.cache import Store

    from .runner import Runner


def evidence_for(answer: Answer, runner: Runner, store: Store | None = None,
                 use_cache: bool = True) -> tuple[ev.Evidence, bool]:
    """(evidence, came_from_cache). Fresh evidence is written back to the store."""
    if store is not None and use_cache:
        cached = store.get(answer)
        if cached is not None and not cut_short(cached, runner.limits):
            return cached, True
    evidence = runner.run(answer)
    if store is not None and not evidence.get("transient"):  # a runner fault is not the answer's evidence
        store.put(evidence)
    return evidence, False


def check_all(answers: Iterable[Answer], runner: Runner, store: Store | None = None, use_cache: bool = True,
              jobs: int = 2) -> Iterator[tuple[Answer, ev.Evidence, bool]]:
    """Yield (answer, evidence, cached) as each answer finishes, `jobs` at a time."""
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        futures = {pool.submit(evidence_for, a, runner, store, use_cache): a for a in answers}
        for future in as_completed(futures):
            yield (futures[future], *future.result())


def problems(evidence: ev.Evidence, path: str) -> list[str]:
    """`path:line: …` lines for every failed check and error, as a terminal shows them."""
    lines = []
    for snippet in evidence["snippets"]:
        for check in snippet["checks"]:
            if not check["passed"]:
                lines.append(f"{path}:{check['line']}: check failed: {check['claim']} (value: {check['value']})")
        error = snippet.get("error")
        if error:
            lines.append(f"{path}:{error['line'] or snippet['line']}: {error['type']}: {error['message']}")
        for note in snippet.get("notes", []):
            lines.append(f"{path}:{snippet['line']}: {note}")
        if snippet["truncated"] and not snippet.get("notes"):
            lines.append(f"{path}:{snippet['line']}: output truncated at the runner's cap")
    return [ev.printable(line) for line in lines]
