"""`kb audit`: is every check shown able to fail? Mutation analysis of the answers' evidence.

For every `check(...)` of an answer, `kb.mutants` lists small breakages (mutants) of the
computation the check's condition depends on. Each mutant runs through the ordinary runner
(the fork server makes a run cheap), and its evidence is compared with the answer's own:

- **killed**: a mutant that still reaches the check makes it fail. The first kill ends the
  check's audit; the page says which breakage it was ("fails if `1/m` → `2/m`").
- **survived**: `BUDGET` of the check's candidate mutants, the nearest in its own order (none
  nearer left untried), reached it and it held every time (or
  nothing it depends on could be mutated, or no mutant reached it). A survivor's condition
  holds whatever its computation does: it tests NumPy, algebra or itself, not the claim.
- **identity**: the check says so itself, `check(claim, condition, value, identity="why")`: a
  mathematical identity shown on purpose. Listed, never mutated, never silently left out.
- **failing** / **unreached**: the answer's own run fails the check or never gets to it
  (`kb check` reports that); nothing to audit, and the audit fails, as for a survivor: a wrong
  claim fails `make test` here, at its line, before pytest starts. So does an answer whose own
  run ends in an error or a timeout after its last check.

Scheduling. An answer's audit goes in rounds: every check still open picks its next
candidate not yet run; the round's mutants run in parallel (`jobs`), each only up to the last
snippet that holds a check it is a candidate for; one run tests every check it reaches. The
snippets before a mutated one run once for all that round's mutants of that snippet: the
runner's child forks after them, one fork per mutant (`Runner.run(variants=…)`). A
mutant that crashes before a check, or times out (4 × the answer's own time, at least 3 s),
does not count for it. Candidates are tried in a fixed order and a kill within a round is
credited to the check's earliest candidate, so results do not depend on timing.

Results are cached in the evidence database (table `audit`) under the answer's code hash
(`kb.store.evidence.cache_key`) and `AUDIT_VERSION`: an unchanged answer is never audited again.
Lines are stored per snippet and mapped to the current file when read, like evidence.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from kb.format.answer import Answer
from kb.run.checker import evidence_for
from kb.run.limits import Limits
from kb.run.runner import Runner
from kb.store import evidence as ev
from kb.store.cache import Store
from kb.store.database import Database

from .mutants import Analysis, Mutant, Site, analyse, mutate, valid

AUDIT_VERSION = "5"  # bump when mutants, their order or the scheduling change: cached audits are redone
BUDGET = 12  # candidate mutants that must reach a check, and leave it passing, to call it a survivor
MAX_TRIES = 3 * BUDGET  # candidates tried for one check at most (crashes and timeouts included)
VARIANTS_PER_RUN = 8  # mutants of one snippet run after one run of the snippets before it
FILL = 6  # a round's run for one snippet takes up to this many mutants (the open checks' next candidates)
TIMEOUT_FACTOR, MIN_TIMEOUT = 4.0, 3.0  # of the answer's own time (measured on a busy machine, perhaps)
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    slug TEXT PRIMARY KEY, key TEXT NOT NULL, stored_ns INTEGER NOT NULL, record TEXT NOT NULL
)"""
# What makes `kb audit` exit 1: a check that cannot fail, and a wrong claim (the answer's own run
# fails the check or never reaches it), so `make test` fails at file.md:line on either.
FAILING_STATUSES = ("survived", "failing", "unreached")


def audit_key(answer: Answer) -> str:
    material = json.dumps([AUDIT_VERSION, BUDGET, MAX_TRIES, TIMEOUT_FACTOR, MIN_TIMEOUT, ev.cache_key(answer)])
    return hashlib.sha256(material.encode()).hexdigest()


class AuditStore:
    """Audit records in the evidence database, one per answer, valid for one version of its code."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.database = Database(path)
        with self.database.write() as db:
            db.execute(SCHEMA)

    def get(self, answer: Answer) -> dict[str, Any] | None:
        row = self.database.connection().execute(
            "SELECT record FROM audit WHERE slug = ? AND key = ?", (answer.slug, audit_key(answer))).fetchone()
        return rebase(json.loads(row[0]), answer) if row else None

    def stamp(self, answer: Answer) -> int | None:
        row = self.database.connection().execute(
            "SELECT stored_ns FROM audit WHERE slug = ? AND key = ?", (answer.slug, audit_key(answer))).fetchone()
        return row[0] if row else None

    def put(self, answer: Answer, record: dict[str, Any]) -> None:
        with self.database.write() as db:
            db.execute("INSERT OR REPLACE INTO audit VALUES (?, ?, ?, ?)",
                       (answer.slug, audit_key(answer), time.time_ns(), json.dumps(record)))


def rebase(record: dict[str, Any], answer: Answer) -> dict[str, Any]:
    """Set the `.md` lines of a record from its per-snippet lines and the answer as it is now."""
    fences = {s.index: s.line for s in answer.snippets}
    for check in record["checks"]:
        check["line"] = fences.get(check["snippet"], 0) + check["start"]
        mutation = check.get("mutation")
        if mutation:
            mutation["line"] = fences.get(mutation["snippet"], 0) + mutation["snippet_line"]
    return record


class Counter:
    """Mutant runs so far, and how many of them a timeout stopped."""

    def __init__(self) -> None:
        self.runs, self.timeouts, self._lock = 0, 0, threading.Lock()

    def add(self, timed_out: bool = False) -> None:
        with self._lock:
            self.runs += 1
            self.timeouts += timed_out


def _site_of(sites: dict[int, list[Site]], snippet: int, rel: int) -> Site | None:
    return next((s for s in sites.get(snippet, []) if s.start <= rel <= s.end), None)


def outcomes(evidence: ev.Evidence, sites: dict[int, list[Site]]) -> dict[int, bool]:
    """{id(site): held} for every check site the run reached (held: every record passed)."""
    seen: dict[int, bool] = {}
    for snippet in evidence["snippets"]:
        for check in snippet["checks"]:
            if check["line"] is None:
                continue
            site = _site_of(sites, snippet["index"], check["line"] - snippet["line"])
            if site is not None:
                seen[id(site)] = seen.get(id(site), True) and bool(check["passed"])
    return seen


def audit_answer(answer: Answer, baseline: ev.Evidence, runner: Runner, pool: ThreadPoolExecutor,
                 counter: Counter | None = None) -> dict[str, Any]:
    """Audit one answer whose own evidence is `baseline`; return its record (see `report`)."""
    started = time.monotonic()
    analysis: Analysis = analyse(answer)
    by_snippet: dict[int, list[Site]] = {}
    for site in analysis.sites:
        by_snippet.setdefault(site.snippet, []).append(site)
    own = outcomes(baseline, by_snippet)
    durations = {s["index"]: (s["duration_ms"] or 0.0) / 1000 for s in baseline["snippets"]}
    state: dict[int, dict[str, Any]] = {}
    open_sites: list[Site] = []
    for site in analysis.sites:
        entry: dict[str, Any] = {"status": None, "mutation": None, "reached": 0, "tried": 0}
        state[id(site)] = entry
        if site.identity is not None:
            entry["status"] = "identity"
        elif id(site) not in own:
            entry["status"] = "unreached"
        elif not own[id(site)]:
            entry["status"] = "failing"
        elif not site.candidates:
            entry["status"] = "survived"
        else:
            open_sites.append(site)
    candidates_of = {id(site): set(site.candidates) for site in open_sites}
    cursor = {id(site): 0 for site in open_sites}
    ran: set[int] = set()
    outcome_of: dict[int, dict[int, bool]] = {}  # mutant -> {id(site): held} for every site its run reached
    runs = 0
    def advance(site: Site, taken: set[int]) -> int | None:
        """The site's next candidate not run yet nor taken this round (its cursor moves past the others)."""
        at = cursor[id(site)]
        while at < len(site.candidates) and (site.candidates[at] in ran or site.candidates[at] in taken):
            at += 1
        cursor[id(site)] = at
        return site.candidates[at] if at < len(site.candidates) else None

    while open_sites:
        batch: set[int] = set()
        for site in list(open_sites):  # every open check takes its next candidate
            entry = state[id(site)]
            chosen = advance(site, batch)
            if chosen is None or entry["tried"] >= MAX_TRIES:
                entry["status"] = "survived"
                open_sites.remove(site)
                continue
            batch.add(chosen)
            entry["tried"] += 1
        # The snippets before a mutated one run once for all the round's mutants of that snippet:
        # fill each such run up to FILL mutants with the next candidates of the open checks, when
        # they mutate the same snippet (a fixed rule, so the schedule never depends on timing).
        for first in sorted({analysis.mutants[m].snippet for m in batch}):
            size = sum(analysis.mutants[m].snippet == first for m in batch)
            grew = True
            while size < FILL and grew:
                grew = False
                for site in open_sites:
                    entry = state[id(site)]
                    if size >= FILL or entry["tried"] >= MAX_TRIES:
                        continue
                    chosen = advance(site, batch)
                    if chosen is None or analysis.mutants[chosen].snippet != first:
                        continue
                    batch.add(chosen)
                    entry["tried"] += 1
                    size += 1
                    grew = True
        if not batch:
            break
        groups: dict[int, list[tuple[int, int]]] = {}  # first mutated snippet -> [(mutant, last snippet to run)]
        for mutant_id in sorted(batch):
            mutant = analysis.mutants[mutant_id]
            if not valid(answer, mutant):  # a text edit that does not parse: never run, never counts
                ran.add(mutant_id)
                continue
            last = max(s.snippet for s in open_sites if mutant_id in candidates_of[id(s)])
            groups.setdefault(mutant.snippet, []).append((mutant_id, last))
        futures = []
        for first, members in sorted(groups.items()):
            for at in range(0, len(members), VARIANTS_PER_RUN):
                chunk = members[at:at + VARIANTS_PER_RUN]
                futures.append((chunk, pool.submit(_run_variants, runner, answer, analysis, first, chunk, durations,
                                                   counter)))
        results: dict[int, dict[int, bool]] = {}
        for chunk, future in futures:
            for (mutant_id, _), evidence in zip(chunk, future.result(), strict=True):
                results[mutant_id] = outcomes(evidence, by_snippet)
        ran.update(results)
        outcome_of.update(results)
        runs += len(results)
        for site in list(open_sites):
            entry = state[id(site)]
            order = {m: i for i, m in enumerate(site.candidates)}
            killers = sorted((order.get(m, len(order) + m), m) for m, seen in results.items() if seen.get(id(site)) is False)
            if killers:
                entry["status"] = "killed"
                entry["mutation"] = analysis.mutants[killers[0][1]]
                open_sites.remove(site)
                continue
            nearest = site.candidates[:cursor[id(site)] + 1]  # its own order: nothing nearer is left untried
            entry["reached"] = sum(1 for m in nearest if id(site) in outcome_of.get(m, {}))
            if entry["reached"] >= BUDGET:
                entry["status"] = "survived"
                open_sites.remove(site)
    checks = []
    for site in analysis.sites:
        entry = state[id(site)]
        killer: Mutant | None = entry["mutation"]
        checks.append({
            "snippet": site.snippet, "start": site.start, "end": site.end, "line": site.md_line,
            "claim": site.claim, "status": entry["status"], "identity": site.identity,
            "candidates": len(site.candidates), "reached": entry["reached"], "tried": entry["tried"],
            "mutation": None if killer is None else {
                "description": killer.description, "kind": killer.kind, "snippet": killer.snippet,
                "snippet_line": killer.line,
                "line": next(s.line for s in answer.snippets if s.index == killer.snippet) + killer.line},
        })
    return {"slug": answer.slug, "version": AUDIT_VERSION, "baseline": baseline["status"], "checks": checks,
            "mutants": len(analysis.mutants), "runs": runs, "seconds": round(time.monotonic() - started, 3)}


def _timeout(durations: dict[int, float], first: int, last: int) -> float:
    return max(MIN_TIMEOUT, TIMEOUT_FACTOR * sum(d for i, d in durations.items() if first <= i <= last))


def _run_variants(runner: Runner, answer: Answer, analysis: Analysis, first: int, chunk: list[tuple[int, int]],
                  durations: dict[int, float], counter: Counter | None) -> list[ev.Evidence]:
    """Run the snippets before `first` once, then each mutant of the chunk (which all start at
    snippet `first`) in a fork from there, up to its last snippet; one evidence per mutant."""
    prefix = mutate(answer, None, first - 1)
    variants = []
    for mutant_id, last in chunk:
        mutated = mutate(answer, analysis.mutants[mutant_id], last)
        variants.append(([s for s in mutated.snippets if s.index >= first and s.runs], _timeout(durations, first, last)))
    total = _timeout(durations, 0, first - 1) + sum(timeout for _, timeout in variants)
    limits = Limits(timeout=total, memory=runner.limits.memory, output=runner.limits.output)
    evidence = runner.run(prefix, limits, variants)
    ran = [s for s in evidence["snippets"] if s["status"] in ev.RAN]
    out: list[ev.Evidence] = []
    forks: list[dict[str, Any]] = evidence.get("variants", [{"snippets": {}}] * len(chunk))
    for fork in forks:
        out.append({**evidence, "snippets": ran + list(fork["snippets"].values())})
        status = fork.get("exit")
        timed_out = status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM
        if counter is not None:
            counter.add(timed_out or evidence["status"] == "timeout")
    return out


def audit_all(answers: Iterable[Answer], db: str | os.PathLike[str], jobs: int = 2, use_cache: bool = True,
              counter: Counter | None = None) -> Iterator[tuple[Answer, dict[str, Any], bool]]:
    """Yield (answer, record, cached) as each answer's audit finishes; `jobs` runs at a time."""
    store, audits = Store(db), AuditStore(db)
    runner = Runner()
    pool = ThreadPoolExecutor(max_workers=max(jobs, 1), thread_name_prefix="kb-audit-run")

    def one(answer: Answer) -> tuple[Answer, dict[str, Any], bool]:
        if use_cache:
            cached = audits.get(answer)
            if cached is not None:
                return answer, cached, True
        baseline, _ = pool.submit(evidence_for, answer, runner, store).result()
        try:
            record = audit_answer(answer, baseline, runner, pool, counter)
        except Exception as exc:  # noqa: BLE001 - a bug in the audit of one answer must not hide the others
            return answer, {"slug": answer.slug, "version": AUDIT_VERSION, "baseline": baseline["status"],
                            "checks": [], "mutants": 0, "runs": 0, "seconds": 0.0,
                            "error": f"{type(exc).__name__}: {exc}"}, False
        audits.put(answer, record)
        return answer, rebase(record, answer), False

    chosen = sorted(answers, key=lambda a: a.slug)
    try:
        # Answers are driven by threads of their own that only wait; the runs share `pool`.
        with ThreadPoolExecutor(max_workers=max(2 * jobs, 1), thread_name_prefix="kb-audit") as drivers:
            futures = [drivers.submit(one, answer) for answer in chosen]
            for future in as_completed(futures):
                yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        runner.close()


def tally(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts = {"checks": 0, "killed": 0, "identity": 0, "survived": 0, "failing": 0, "unreached": 0}
    for record in records:
        for check in record["checks"]:
            counts["checks"] += 1
            counts[check["status"]] += 1
    return counts


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """An answer's audit in numbers and one line: "5 of 6 checks shown able to fail"."""
    counts = tally([record])
    audited = counts["checks"] - counts["failing"] - counts["unreached"]
    text = f"{counts['killed']} of {audited} check{'s' if audited != 1 else ''} shown able to fail"
    if counts["identity"]:
        text += f", {counts['identity']} marked as {'identities' if counts['identity'] != 1 else 'an identity'}"
    return {**counts, "summary": text}


def describe(check: dict[str, Any], path: str) -> str:
    """One line of `kb audit`'s report for a check."""
    where = f"{path}:{check['line']}"
    claim = check["claim"] if len(check["claim"]) <= 90 else check["claim"][:89] + "…"
    status = check["status"]
    if status == "killed":
        mutation = check["mutation"]
        return f"{where}: killed    {claim}\n    fails if {mutation['description']} ({path}:{mutation['line']})"
    if status == "survived":
        if not check["candidates"]:
            why = "nothing it depends on can be broken (its condition reads only literals, imports or itself)"
        elif not check["reached"]:
            why = f"no mutant reached it ({check['tried']} tried: they crashed first or timed out)"
        else:
            why = f"held under all {check['reached']} mutants that reached it"
        return f"SURVIVED at {where}: {claim}\n    {why}"
    if status == "identity":
        return f"{where}: identity  {claim}\n    marked: {check['identity']}"
    if status == "failing":
        return f"{where}: failing   {claim}\n    the answer's own run fails it (see `kb check`); not audited"
    return f"{where}: unreached {claim}\n    the answer's own run never gets to it (see `kb check`); not audited"


def annotate(evidence: ev.Evidence, answer: Answer, record: dict[str, Any] | None) -> ev.Evidence:
    """A copy of the evidence with each check's audit (`"audit": {"status", "mutation", "line"}`)
    and the answer's (`"audit": {… "summary"}`); the evidence itself when there is no audit."""
    if record is None or not evidence["snippets"]:
        return evidence
    out = copy.deepcopy(evidence)
    out["audit"] = summary(record)
    sites: dict[int, list[dict[str, Any]]] = {}
    for check in record["checks"]:
        sites.setdefault(check["snippet"], []).append(check)
    for snippet in out["snippets"]:
        for check in snippet["checks"]:
            if check["line"] is None:
                continue
            rel = check["line"] - snippet["line"]
            found = next((c for c in sites.get(snippet["index"], []) if c["start"] <= rel <= c["end"]), None)
            if found is None:
                continue
            mutation = found.get("mutation")
            check["audit"] = {"status": found["status"],
                              "mutation": mutation["description"] if mutation else None,
                              "line": mutation["line"] if mutation else None}
    return out


# --- the command ------------------------------------------------------------------------------

def add_command(commands: Any, default_db: str, default_answers: str, positive: Callable[[type], Any]) -> None:
    audit = commands.add_parser("audit", help="mutation-test the checks: is each one shown able to fail?")
    audit.add_argument("paths", nargs="*", metavar="PATH", help=f"answer files or directories (default: {default_answers})")
    audit.add_argument("--json", action="store_true", help="print every check's audit as JSON on stdout")
    audit.add_argument("-q", "--quiet", action="store_true", help="list only the checks not killed (and one line per answer)")
    audit.add_argument("--no-cache", action="store_true", help="audit every answer even if a cached audit exists")
    audit.add_argument("--db", default=default_db, help=f"SQLite evidence cache (default: {default_db})")
    audit.add_argument("-j", "--jobs", type=positive(int), default=os.cpu_count() or 1,
                       help="mutants run at once (default: %(default)s)")


def cmd_audit(args: argparse.Namespace, default_answers: str) -> int:
    from kb.format.answer import load_answers

    answers, errors = load_answers(args.paths or [default_answers])
    for error in errors:
        print(error, file=sys.stderr)
    if not answers and not errors:
        print("no answer files found", file=sys.stderr)
        return 2
    report = sys.stderr if args.json else sys.stdout
    counter = Counter()
    started = time.monotonic()
    jobs = min(args.jobs, 2 * len(answers)) or 1
    print(f"auditing {len(answers)} answer{'s' if len(answers) != 1 else ''}"
          + (f", {jobs} runs at a time" if jobs > 1 else ""), file=sys.stderr, flush=True)
    records = []
    for answer, record, cached in audit_all(answers.values(), args.db, jobs, not args.no_cache, counter):
        records.append(record)
        counts = summary(record)
        took = "cached" if cached else f"{record['runs']} runs, {record['seconds']:.1f} s"
        print(f"{answer.slug}: {counts['summary']} ({took})", file=report, flush=True)
        if record.get("error"):
            print(f"  {answer.path}: the audit itself failed: {record['error']}", file=sys.stderr, flush=True)
        for check in record["checks"]:
            if check["status"] != "killed" or not (args.json or args.quiet):
                print("  " + describe(check, answer.path).replace("\n", "\n  "), file=report, flush=True)
    elapsed = time.monotonic() - started
    total = tally(records)
    rate = f", {counter.runs / elapsed:.1f} mutants/s" if counter.runs and elapsed > 0 else ""
    print(f"{len(records)} answers: {total['checks']} checks, {total['killed']} killed, {total['identity']} identities, "
          f"{total['survived']} survived" + (f", {total['failing']} failing" if total["failing"] else "")
          + (f", {total['unreached']} unreached" if total["unreached"] else "")
          + f" ({counter.runs} mutants run in {elapsed:.1f} s{rate}, {counter.timeouts} stopped by their timeout)",
          file=report)
    records.sort(key=lambda r: r["slug"])
    if args.json:
        json.dump({"answers": [{**r, "path": answers[r["slug"]].path} for r in records], "totals": total,
                   "mutants_run": counter.runs, "timeouts": counter.timeouts, "seconds": round(elapsed, 3)}, sys.stdout, indent=2, ensure_ascii=False)
        print()
    if errors or any(r.get("error") for r in records):
        return 2
    broken = [r for r in records if r.get("baseline") in ("failed", "error", "timeout")]
    for record in broken:
        print(f"{answers[record['slug']].path}: its own run ends {record['baseline']} (see `kb check`)", file=report)
    return 1 if broken or any(c["status"] in FAILING_STATUSES for r in records for c in r["checks"]) else 0


def survivors(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for r in records for c in r["checks"] if c["status"] == "survived"]


__all__ = ["AUDIT_VERSION", "BUDGET", "AuditStore", "audit_all", "audit_answer", "annotate", "summary", "tally"]
