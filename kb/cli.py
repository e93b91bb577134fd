"""`kb …` (or `python -m kb …`, the same): check, write and lint answers from a terminal or CI.

Other packages add commands through the `kb.commands` entry-point group, as Flask's `flask.commands`
does: each entry point names a command and points at `extend(commands) -> {name: run}`, which adds
its parser (see `Commands`). The service registers `build` this way (pyproject.toml), so the core
library never imports the service. A command's entry point is loaded only when that command runs,
or for help and usage errors: `kb check` imports no web framework.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from kb.format.answer import load_answers
from kb.run.checker import check_all, problems
from kb.run.limits import DEFAULT_MEMORY_MB, DEFAULT_OUTPUT_KIB, Limits
from kb.run.runner import Runner
from kb.store import evidence as ev
from kb.store.cache import Store

from .authoring import CHECK_COMMAND, lint, new_answer

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

DEFAULT_DB = os.environ.get("KB_DB", ".kb/kb.sqlite3")
DEFAULT_ANSWERS = os.environ.get("KB_ANSWERS", "answers")
Number = TypeVar("Number", int, float)
Command = Callable[[argparse.Namespace], int]


class Commands(Protocol):
    """What `main` hands an extension: the sub-command parsers (`ArgumentParser.add_subparsers()`)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def positive(kind: type[Number]) -> Callable[[str], Number]:
    """An argparse type: a number of `kind` above zero (a zero timeout would time out everything)."""
    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run a command (the `kb` entry point; `python -m kb` calls it too)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="kb", description="Executable answers about neural-network fundamentals.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="run answers' snippets and report their evidence")
    check.add_argument("paths", nargs="*", metavar="PATH", help=f"answer files or directories (default: {DEFAULT_ANSWERS})")
    check.add_argument("--json", action="store_true", help="print the evidence list as JSON on stdout")
    check.add_argument("--no-cache", action="store_true", help="run every answer even if cached evidence exists")
    check.add_argument("--db", default=DEFAULT_DB, help=f"SQLite evidence cache (default: {DEFAULT_DB})")
    check.add_argument("--timeout", type=positive(float), default=Limits.timeout, help="seconds per answer (default: %(default)s)")
    check.add_argument("--memory-mb", type=positive(float), default=DEFAULT_MEMORY_MB,
                       help="MiB an answer may allocate (default: %(default)s)")
    check.add_argument("--output-kib", type=positive(float), default=DEFAULT_OUTPUT_KIB,
                       help="KiB of output kept per snippet (default: %(default)s)")
    check.add_argument("-j", "--jobs", type=positive(int), default=os.cpu_count() or 1, help="answers run at once (default: %(default)s)")
    new = commands.add_parser("new", help="write a skeleton answer for a question")
    new.add_argument("question", help='the question as a learner asks it, e.g. "Why is ReLU better than sigmoid?"')
    new.add_argument("--dir", default=DEFAULT_ANSWERS, help=f"answers directory (default: {DEFAULT_ANSWERS})")
    lint = commands.add_parser("lint", help="report one-way or missing links, answers without checks, "
                                            "figures without alt text, duplicated aliases")
    lint.add_argument("paths", nargs="*", metavar="PATH", help=f"answer files or directories (default: {DEFAULT_ANSWERS})")
    lint.add_argument("--db", default=DEFAULT_DB, help=f"SQLite evidence cache (default: {DEFAULT_DB})")
    gaps = commands.add_parser("gaps", help="list what learners searched for without a confident answer, most asked first")
    gaps.add_argument("--json", action="store_true", help="print the list as JSON")
    gaps.add_argument("--db", default=DEFAULT_DB, help=f"SQLite store of the service (default: {DEFAULT_DB})")
    gaps.add_argument("--limit", type=positive(int), default=None, help="show at most this many")
    run: dict[str, Command] = {"check": cmd_check, "new": cmd_new, "lint": cmd_lint, "gaps": cmd_gaps}
    # `kb audit` (issue 17): mutation testing of the checks, in kb/audit.py
    from . import audit
    audit.add_command(commands, DEFAULT_DB, DEFAULT_ANSWERS, positive)
    run["audit"] = lambda args: audit.cmd_audit(args, DEFAULT_ANSWERS)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    if chosen not in run:  # another package's command, or help or a usage error: list them all
        for entry in plugin_commands().values():
            extend: Callable[[Commands], Mapping[str, Command]] = entry.load()
            run.update(extend(commands))
    args = parser.parse_args(argv)
    return run[args.command](args)


def plugin_commands() -> dict[str, EntryPoint]:
    """The commands other installed packages add (entry-point group `kb.commands`), by name."""
    from importlib.metadata import entry_points  # ~35 modules that `kb check` does not need

    return {entry.name: entry for entry in entry_points(group="kb.commands")}


def cmd_gaps(args: argparse.Namespace) -> int:
    from kb.store.gaps import Gaps

    entries = Gaps(args.db).list(args.limit)
    if args.json:
        json.dump({"gaps": entries}, sys.stdout, indent=2, ensure_ascii=False)
        print()
        return 0
    from kb.store.evidence import printable

    for entry in entries:  # anyone can put text here (a search): never a terminal escape
        print(f"{entry['count']:>6}  {entry['last_seen']}  {printable(entry['query'])}")
    print(f"{len(entries)} question(s) without a confident answer", file=sys.stderr)
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    try:
        path = new_answer(args.question, args.dir)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}; check it with: {CHECK_COMMAND} {path}")
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    answers, errors = load_answers(args.paths or [DEFAULT_ANSWERS])
    with Runner() as runner:
        evidence = {a.slug: e for a, e, _ in check_all(answers.values(), runner, Store(args.db))}
    problems = errors + lint(answers, evidence)
    for problem in problems:
        print(problem)
    print(f"{len(answers)} answer(s), {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


def cmd_check(args: argparse.Namespace) -> int:
    answers, errors = load_answers(args.paths or [DEFAULT_ANSWERS])
    report = sys.stderr if args.json else sys.stdout
    for error in errors:
        print(error, file=sys.stderr)
    if not answers and not errors:
        print("no answer files found", file=sys.stderr)
        return 2
    store = Store(args.db)
    started, results = time.monotonic(), []
    jobs = min(args.jobs, len(answers)) or 1
    print(f"checking {len(answers)} answer{'s' if len(answers) != 1 else ''}"
          + (f", {jobs} at a time" if jobs > 1 else ""), file=sys.stderr, flush=True)
    width = len(str(len(answers)))  # "[ 9/23]" and "[10/23]" line up
    slug_width = max((len(slug) for slug in answers), default=0)
    with Runner(Limits.of(args.timeout, args.memory_mb, args.output_kib)) as runner:
        done = check_all(answers.values(), runner, store, use_cache=not args.no_cache, jobs=jobs)
        for number, (answer, evidence, cached) in enumerate(done, 1):
            tally = ev.counts(evidence, answer)
            took = "cached" if cached else f"{(evidence['duration_ms'] or 0) / 1000:.2f} s"
            checks = f"{tally['checks_passed']}/{tally['checks']} checks"
            incomplete = tally["snippets_ran"] < tally["snippets"] or tally["checks_not_reached"]
            note = f"  ({ev.describe(tally)})" if incomplete else ""
            print(f"[{number:>{width}}/{len(answers)}] {evidence['status']:<8} {answer.slug:<{slug_width}}  "
                  f"{checks:<12} {took:>8}{note}", file=report, flush=True)
            for line in problems(evidence, answer.path):
                print(f"    {line}", file=report, flush=True)
            results.append(evidence)
    statuses = [e["status"] for e in results]
    print(f"{statuses.count('passed')} passed, {len(statuses) - statuses.count('passed')} not passed, "
          f"{len(errors)} format error(s) in {time.monotonic() - started:.2f} s", file=report)
    if args.json:
        results.sort(key=lambda e: e["slug"])
        figure_url = lambda slug, name: f"/api/answers/{slug}/figures/{name}"  # noqa: E731
        json.dump([ev.public(e, figure_url, answers.get(e["slug"])) for e in results], sys.stdout, indent=2, allow_nan=False)
        print()
    if errors:
        return 2
    return 0 if all(s == "passed" for s in statuses) else 1
