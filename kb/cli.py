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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from kb import version
from kb.format.answer import load_answers
from kb.run.checker import check_all, problems
from kb.run.limits import Limits
from kb.run.runner import Runner
from kb.settings import Settings
from kb.store import evidence as ev
from kb.store.cache import Store

from .authoring import CHECK_COMMAND, lint, new_answer

SHARED = ("KB_DB", "KB_ANSWERS")  # the service's settings the commands read from the environment too
if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

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
    settings = shared_settings()
    parser = argparse.ArgumentParser(prog="kb", description="Executable answers about neural-network fundamentals.")
    parser.add_argument("--version", action="version", version=f"kb {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="run answers' snippets and report their evidence")
    check.add_argument("paths", nargs="*", metavar="PATH", help=f"answer files or directories (default: {settings.answers})")
    check.add_argument("--json", action="store_true", help="print the evidence list as JSON on stdout")
    check.add_argument("--no-cache", action="store_true", help="run every answer even if cached evidence exists")
    check.add_argument("--db", default=settings.db, help=f"SQLite evidence cache (default: {settings.db})")
    check.add_argument("--timeout", type=positive(float), default=Limits.timeout, help="seconds per answer (default: %(default)s)")
    check.add_argument("--memory-mb", type=positive(float), default=settings.memory_mb,
                       help="MiB an answer may allocate (default: %(default)s)")
    check.add_argument("--output-kib", type=positive(float), default=settings.output_kib,
                       help="KiB of output kept per snippet (default: %(default)s)")
    check.add_argument("--no-index", action="store_true",
                       help="skip embedding the answers' texts for search (by default the database carries them, "
                            "so a service started on it embeds nothing)")
    check.add_argument("-j", "--jobs", type=positive(int), default=os.cpu_count() or 1, help="answers run at once (default: %(default)s)")
    new = commands.add_parser("new", help="write a skeleton answer for a question")
    new.add_argument("question", help='the question as a learner asks it, e.g. "Why is ReLU better than sigmoid?"')
    new.add_argument("--dir", default=settings.answers, help=f"answers directory (default: {settings.answers})")
    new.add_argument("--db", default=settings.db, help=f"SQLite store holding the answers' vectors (default: {settings.db})")
    new.add_argument("--no-lookup", action="store_true", help="do not look the question up among the existing answers")
    lint = commands.add_parser("lint", help="report one-way or missing links, answers without checks, "
                                            "figures without alt text, duplicated aliases")
    lint.add_argument("paths", nargs="*", metavar="PATH", help=f"answer files or directories (default: {settings.answers})")
    lint.add_argument("--db", default=settings.db, help=f"SQLite evidence cache (default: {settings.db})")
    index = commands.add_parser("index", help="embed the answers' texts for search into the database "
                                              "(what `kb check` does after running)")
    index.add_argument("paths", nargs="*", metavar="PATH", help=f"answer files or directories (default: {settings.answers})")
    index.add_argument("--db", default=settings.db, help=f"SQLite store (default: {settings.db})")
    gaps = commands.add_parser("gaps", help="list what learners searched for without a confident answer, most asked first")
    gaps.add_argument("--json", action="store_true", help="print the list as JSON")
    gaps.add_argument("--db", default=settings.db, help=f"SQLite store of the service (default: {settings.db})")
    gaps.add_argument("--limit", type=positive(int), default=None, help="show at most this many")
    run: dict[str, Command] = {"check": cmd_check, "new": cmd_new, "lint": cmd_lint, "gaps": cmd_gaps,
                               "index": cmd_index}
    # `kb audit` (issue 17): mutation testing of the checks, in kb/audit.py
    from . import audit
    audit.add_command(commands, settings.db, settings.answers, positive)
    run["audit"] = lambda args: audit.cmd_audit(args, settings.answers)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    if chosen not in run:  # another package's command, or help or a usage error: list them all
        for entry in plugin_commands().values():
            extend: Callable[[Commands], Mapping[str, Command]] = entry.load()
            run.update(extend(commands))
    args = parser.parse_args(argv)
    try:
        return run[args.command](args)
    except BrokenPipeError:  # `kb check | head`: the reader has gone, stop quietly as a shell tool does
        _discard_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor behind stdout (captured in-process)
        pass


def print_json(value: object, ensure_ascii: bool = True) -> None:
    """Print JSON on stdout; a reader that has gone (`kb check --json | head`) is not an error:
    the command's exit status still says whether the answers passed."""
    try:
        json.dump(value, sys.stdout, indent=2, ensure_ascii=ensure_ascii, allow_nan=False)
        print(flush=True)
    except BrokenPipeError:
        _discard_stdout()


def shared_settings() -> Settings:
    """KB_DB and KB_ANSWERS from the environment, parsed as the service parses them."""
    return Settings.load({key: os.environ[key] for key in SHARED if key in os.environ})


def plugin_commands() -> dict[str, EntryPoint]:
    """The commands other installed packages add (entry-point group `kb.commands`), by name."""
    from importlib.metadata import entry_points  # ~35 modules that `kb check` does not need

    return {entry.name: entry for entry in entry_points(group="kb.commands")}


def cmd_gaps(args: argparse.Namespace) -> int:
    from kb.store.gaps import Gaps

    entries = Gaps(args.db).list(args.limit)
    if args.json:
        print_json({"gaps": entries}, ensure_ascii=False)
        return 0
    from kb.store.evidence import printable

    for entry in entries:  # anyone can put text here (a search): never a terminal escape
        print(f"{entry['count']:>6}  {entry['last_seen']}  {printable(entry['query'])}")
    print(f"{len(entries)} question(s) without a confident answer", file=sys.stderr)
    return 0


def embed(answers: Mapping[str, Any], db: str, report: Any) -> None:
    """Store the vectors of the answers' texts (only those not stored yet), so that a service
    started on this database embeds nothing (`kb.search.lookup.embed_answers`)."""
    from kb.search.embeddings import shared_embedder
    from kb.search.lookup import embed_answers

    started = time.monotonic()
    embedded, total = embed_answers(answers.values(), db, shared_embedder(shared_settings().model_file or None))
    print(f"search: {total} texts, {embedded} embedded in {time.monotonic() - started:.2f} s", file=report, flush=True)


def cmd_index(args: argparse.Namespace) -> int:
    answers, errors = load_answers(args.paths or [shared_settings().answers])
    for error in errors:
        print(error, file=sys.stderr)
    embed(answers, args.db, sys.stdout)
    return 2 if errors else 0


def existing_answers(question: str, folder: str, db: str) -> list[tuple[str, str]]:
    """(slug, title) of the existing answers that already fit the question, as search judges it:
    the confident one, or both when two fit. Drafts do not count."""
    from kb.format.draft import is_draft
    from kb.search.embeddings import shared_embedder
    from kb.search.index import SearchIndex
    from kb.search.lookup import Lookup

    answers, _ = load_answers([folder]) if Path(folder).is_dir() else ({}, [])
    answers = {slug: a for slug, a in answers.items() if not is_draft(a)}
    if not answers:
        return []
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    lookup = Lookup(SearchIndex(db), db, shared_embedder(shared_settings().model_file or None))
    lookup.rebuild(answers.values())   # embeds only what the database lacks (`kb check` stores it all)
    found = lookup.lookup(question, 2)
    fits = {"one": 1, "two": 2}.get(found["fit"], 0)
    return [(hit["slug"], hit["title"]) for hit in found["results"][:fits]]


def cmd_new(args: argparse.Namespace) -> int:
    if not args.no_lookup:
        fits = existing_answers(args.question, args.dir, args.db)
        for slug, title in fits:
            print(f"warning: {args.dir}/{slug}.md already answers this: {title!r}; extend it, or add your "
                  f"phrasing to its aliases, rather than writing a second answer", file=sys.stderr)
    try:
        path = new_answer(args.question, args.dir)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}; check it with: {CHECK_COMMAND} {path}")
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    answers, errors = load_answers(args.paths or [shared_settings().answers])
    with Runner() as runner:
        evidence = {a.slug: e for a, e, _ in check_all(answers.values(), runner, Store(args.db))}
    problems = errors + lint(answers, evidence)
    for problem in problems:
        print(problem)
    print(f"{len(answers)} answer(s), {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


def cmd_check(args: argparse.Namespace) -> int:
    answers, errors = load_answers(args.paths or [shared_settings().answers])
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
    if not args.no_index and answers:
        embed(answers, args.db, sys.stderr)
    statuses = [e["status"] for e in results]
    print(f"{statuses.count('passed')} passed, {len(statuses) - statuses.count('passed')} not passed, "
          f"{len(errors)} format error(s) in {time.monotonic() - started:.2f} s", file=report)
    if args.json:
        results.sort(key=lambda e: e["slug"])
        figure_url = lambda slug, name: f"/api/answers/{slug}/figures/{name}"  # noqa: E731
        print_json([ev.public(e, figure_url, answers.get(e["slug"])) for e in results])
    if errors:
        return 2
    return 0 if all(s == "passed" for s in statuses) else 1
