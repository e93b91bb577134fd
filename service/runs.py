"""Re-runs of an answer: at most `KB_MAX_RUNS` at once per process, one at a time per answer,
and a run that finished less than `KB_RUN_COOLDOWN` seconds ago is returned instead of repeated.

Who may ask for a run at all is `guard.py`'s job; this module decides whether one starts.
"""
from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime

from werkzeug.exceptions import TooManyRequests

from kb.format.answer import Answer
from kb.store import evidence as ev

from .context import state

RETRY_AFTER_S = 5


@contextmanager
def run_slot():
    """Hold one of the bounded re-run slots, or answer 429 with Retry-After."""
    slots = state().run_slots
    if not slots.acquire(blocking=False):
        state().metrics.run("limited")
        raise TooManyRequests("Too many answers are being re-run right now; try again shortly.",
                              retry_after=RETRY_AFTER_S)
    try:
        yield
    finally:
        slots.release()


def run_or_reuse(answer: Answer) -> ev.Evidence:
    """Run the answer, or return the run of it that finished less than KB_RUN_COOLDOWN s ago.

    One run of an answer at a time per process, whoever started it (a request, the start-up
    run, a re-run after an edit: `Library.run_lock`): a request that arrives while one is under
    way waits for it and gets its evidence. Waiting holds a thread, so at most KB_MAX_RUNS
    requests wait at once in a process; past that, `429` with `Retry-After`. Across processes
    the stored `ran_at` does the same job.
    """
    kb = state()
    lib = kb.library
    with lib.run_lock(answer.slug, wait=False) as mine:
        if mine:
            stored = lib.evidence(answer)  # pending evidence never ran: its age is infinite
            if _age(stored) < kb.settings.run_cooldown:
                kb.metrics.run("coalesced")
                return stored
            with run_slot():
                kb.metrics.run("started")
                fresh = lib.run(answer)
                if fresh["status"] != "passed":
                    kb.metrics.run("failed")
                return fresh
    with kb.run_locks_lock:
        if lib.waiting >= kb.settings.max_runs:
            kb.metrics.run("limited")
            raise TooManyRequests("This answer is being run now and enough requests wait for it; "
                                  "its fresh evidence is on its page shortly.", retry_after=RETRY_AFTER_S)
        lib.waiting += 1
    kb.metrics.run("coalesced")
    try:
        with lib.run_lock(answer.slug):  # the run under way finishes: its evidence is the answer
            return lib.evidence(answer)
    finally:
        with kb.run_locks_lock:
            lib.waiting -= 1


def _age(evidence: ev.Evidence) -> float:
    """Seconds since the evidence ran (infinite for evidence that never ran)."""
    if not evidence["ran_at"]:
        return float("inf")
    ran = datetime.strptime(evidence["ran_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (datetime.now(UTC) - ran).total_seconds()
