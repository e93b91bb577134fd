"""The evidence model: what running an answer's snippets showed, claim by claim.

Evidence is plain data (dicts and lists) so that it crosses the process boundary, the SQLite
cache and the JSON API unchanged. Its shape is written down once, as the TypedDicts below, and
built by the constructors here (`record`, `unreached`, `pending`); this module holds the few
rules about it.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import platform
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NotRequired, TypedDict

import numpy

from kb.format import syntax
from kb.format.answer import Answer, Snippet


class Check(TypedDict):
    claim: str
    passed: bool
    value: str | None  # None: `check` was given no value
    line: int | None  # None: called where no frame of the answer is on the stack (another thread)
    identity: NotRequired[str]  # check(..., identity="why"): an identity shown on purpose (kb audit)
    audit: NotRequired[dict[str, Any]]  # added when served: what `kb audit` found (kb.audit.annotate)


class Error(TypedDict):
    type: str
    message: str
    line: int | None
    traceback: str | None


class Figure(TypedDict):
    name: str
    alt: str
    svg: NotRequired[str]  # in a fresh run's record only: the store keeps figures apart


class SnippetEvidence(TypedDict):
    index: int
    line: int
    code: str
    status: str  # passed | failed | error | timeout | skipped | norun
    stdout: str
    stderr: str
    truncated: bool
    duration_ms: float
    error: Error | None
    figures: list[Figure]
    checks: list[Check]
    attrs: NotRequired[list[str]]
    notes: NotRequired[list[str]]  # what `bounded` cut or replaced, as sentences (a page and `kb check` show them)


class Evidence(TypedDict):
    slug: str
    status: str  # passed | failed | error | timeout | pending
    ran_at: str | None
    duration_ms: float | None
    environment: dict[str, str]
    snippets: list[SnippetEvidence]
    key: NotRequired[str]  # internal: the cache key it was stored under
    limits: NotRequired[dict[str, float]]  # internal: the runner's limits it ran with
    audit: NotRequired[dict[str, Any]]  # added when served: the answer's `kb audit` summary
    variants: NotRequired[list[dict[str, Any]]]  # internal: `kb audit`'s forks (Runner.run(variants=…))
    transient: NotRequired[bool]  # internal: the runner failed, not the answer; never stored

RUNNER_VERSION = "1"
STATUS_ORDER = ("timeout", "error", "failed", "passed")
INTERNAL = {"key", "limits", "variants", "transient"}  # stored with the evidence, not part of its public shape


# Bounds of what one snippet's evidence may hold besides its output (which the child caps):
# beyond them the record is cut, the snippet flagged `truncated` and the cut described in `notes`.
MAX_CHECKS = 1000  # checks per snippet
MAX_CLAIM = 2000  # characters of a claim
MAX_MESSAGE = 2000  # characters of an error's message
MAX_TRACEBACK = 8000  # characters of a traceback (its end)
MAX_ALT = 500  # characters of a figure's alt text
MAX_FIGURES = 20  # figures per snippet
MAX_FIGURE = 2 << 20  # bytes of one figure's SVG
SURROGATE = re.compile("[\ud800-\udfff]")  # not text: no UTF-8 encoder takes them (print("\udcff"))
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # what a terminal would act on rather than show


def clean_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD, so that it encodes as UTF-8."""
    return SURROGATE.sub("\ufffd", text)


def printable(text: str) -> str:
    """`text` safe to print to a terminal: control characters (ESC included) shown as escapes."""
    return CONTROL.sub(lambda m: repr(m[0])[1:-1], clean_text(text))


def _cut(text: str, limit: int, what: str, notes: list[str], keep_end: bool = False) -> str:
    if len(text) <= limit:
        return text
    notes.append(f"{what} cut at {limit:,} of {len(text):,} characters")
    return "…" + text[-limit:] if keep_end else text[:limit] + "…"


def bounded(snippet: SnippetEvidence) -> SnippetEvidence:
    """The snippet's evidence within the bounds above, its text encodable (lone surrogates
    replaced): what a run returns is what a page, the API, the export and `kb check` can show,
    at a bounded cost. Applied to every result a child sends (`kb.run.runner`) and to records
    read from the store. Anything cut or replaced is flagged (`truncated`) and described (`notes`)."""
    notes = list(snippet.get("notes", []))
    if snippet["truncated"] and not notes:  # the child cut the output at its cap
        notes.append("output truncated at the runner's cap")
    before = len(notes)
    replaced = 0

    def clean(text: str, what: str, limit: int | None = None, keep_end: bool = False) -> str:
        nonlocal replaced
        if not isinstance(text, str):
            text = str(text)
        if SURROGATE.search(text):
            replaced += len(SURROGATE.findall(text))
            text = SURROGATE.sub("\ufffd", text)
        return text if limit is None else _cut(text, limit, what, notes, keep_end)

    out: SnippetEvidence = {**snippet, "code": clean(snippet["code"], "the code"), "stdout": clean(snippet["stdout"], "stdout"),
                            "stderr": clean(snippet.get("stderr", ""), "stderr")}
    checks = snippet["checks"]
    if len(checks) > MAX_CHECKS:
        dropped = checks[MAX_CHECKS:]
        failing = sum(not c["passed"] for c in dropped)
        notes.append(f"{len(dropped):,} checks beyond the first {MAX_CHECKS:,} not kept"
                     + (f" ({failing:,} of them failed)" if failing else ""))
        checks = checks[:MAX_CHECKS]
    out["checks"] = [{**c, "claim": clean(c["claim"], "a claim", MAX_CLAIM),
                      "value": None if c["value"] is None else clean(c["value"], "a value", MAX_CLAIM)} for c in checks]
    error = snippet["error"]
    if error is not None:
        out["error"] = {**error, "type": clean(error["type"], "the error's type", 200),
                        "message": clean(error["message"], "the error message", MAX_MESSAGE),
                        "traceback": None if error.get("traceback") is None
                        else clean(error["traceback"] or "", "the traceback", MAX_TRACEBACK, keep_end=True)}
    figures = snippet["figures"]
    kept: list[Figure] = []
    for figure in figures:
        svg = figure.get("svg")
        if len(kept) == MAX_FIGURES:
            notes.append(f"{len(figures) - MAX_FIGURES} figures beyond the first {MAX_FIGURES} not kept")
            break
        if svg is not None and len(svg) > MAX_FIGURE:
            notes.append(f"figure {figure['name']} not kept: {len(svg) / 2**20:.1f} MiB of SVG, "
                         f"over the limit of {MAX_FIGURE >> 20} MiB")
            continue
        item: Figure = {**figure, "alt": clean(figure.get("alt", ""), "a figure's alt text", MAX_ALT)}
        if svg is not None:
            item["svg"] = clean(svg, "a figure")
        kept.append(item)
    out["figures"] = kept
    if replaced:
        notes.append(f"{replaced:,} character{'s' if replaced != 1 else ''} that cannot be encoded "
                     "(lone surrogates) replaced by U+FFFD")
    if notes:
        out["notes"] = notes
    if len(notes) > before:
        out["truncated"] = True
    return out


def environment() -> dict[str, str]:
    return {"python": platform.python_version(), "numpy": numpy.__version__}


def cache_key(answer: Answer) -> str:
    """Hash of what decides a run's outcome: the code, the interpreter, NumPy, the runner.

    Prose, titles and line numbers are not part of it, so editing prose never re-runs code.
    """
    return _key(tuple((s.code, tuple(sorted(s.attrs))) for s in answer.snippets))


@functools.lru_cache(maxsize=8192)
def _key(snippets: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    material = {"runner": RUNNER_VERSION, "env": environment(), "snippets": snippets}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def answer_status(snippets: list[SnippetEvidence]) -> str:
    """The worst snippet status decides the answer's status."""
    seen = {s["status"] for s in snippets}
    return next((status for status in STATUS_ORDER[:-1] if status in seen), "passed")


def pending(answer: Answer) -> Evidence:
    """Evidence for an answer that has not run yet."""
    return {"slug": answer.slug, "status": "pending", "ran_at": None, "duration_ms": None,
            "environment": environment(), "snippets": []}


def record(answer: Answer, snippets: list[SnippetEvidence], duration_ms: float, limits: dict[str, float]) -> Evidence:
    """The evidence of a run that just finished, as the runner stores it."""
    return {"slug": answer.slug, "status": answer_status(snippets), "ran_at": now(),
            "duration_ms": round(duration_ms, 3), "environment": environment(), "snippets": snippets,
            "key": cache_key(answer), "limits": limits}


def unreached(snippet: Snippet, status: str, error: Error | None = None) -> SnippetEvidence:
    """The record of a snippet that produced no result of its own (norun, skipped, cut short)."""
    return {"index": snippet.index, "line": snippet.line, "code": snippet.code, "status": status,
            "stdout": "", "stderr": "", "truncated": False, "duration_ms": 0.0, "error": error,
            "figures": [], "checks": []}


def rebase(evidence: Evidence, answer: Answer) -> Evidence:
    """Move the line numbers of cached evidence to where the snippets are now.

    The cache key ignores prose, so prose edited above a snippet shifts its lines without a re-run.
    """
    by_index = {s.index: s for s in answer.snippets}
    for snippet in evidence["snippets"]:
        current = by_index.get(snippet["index"])
        if current is None:
            continue
        shift = current.line - snippet["line"]
        snippet["line"] = current.line
        for check in snippet["checks"]:
            if check["line"] is not None:
                check["line"] += shift
        error = snippet["error"]
        if error and error["line"]:
            error["line"] += shift
    return evidence


def checks_count(evidence: Evidence) -> tuple[int, int]:
    """(passed, total) checks."""
    checks = [c for s in evidence["snippets"] for c in s["checks"]]
    return sum(c["passed"] for c in checks), len(checks)


RAN = {"passed", "failed", "error", "timeout"}


def counts(evidence: Evidence, answer: Answer | None = None) -> dict[str, int]:
    """How far the run got: snippets run of those that run, checks run and held, checks not reached.

    A snippet that raises stops the answer, so "0/1 checks" would hide the checks it never got
    to: those are counted from the code (each `check(` call after the error's line, and every
    call in a skipped snippet). Pending evidence counts the answer's snippets, none run yet.
    """
    snippets = [s for s in evidence["snippets"] if s["status"] != "norun"]
    if not snippets and answer is not None:
        snippets = [unreached(s, "skipped") for s in answer.runnable]
    ran = [s for s in snippets if s["status"] in RAN]
    checks = [c for s in ran for c in s["checks"]]
    not_reached = 0
    for snippet in snippets:
        calls = check_lines(snippet["code"])
        if snippet["status"] == "skipped":
            not_reached += len(calls)
        elif snippet["status"] in ("error", "timeout"):
            error = snippet["error"]
            stopped = error["line"] if error else None
            if stopped:
                not_reached += sum(snippet["line"] + line > stopped for line in calls)
            else:
                not_reached += max(0, len(calls) - len(snippet["checks"]))
    return {"snippets": len(snippets), "snippets_ran": len(ran), "checks": len(checks),
            "checks_passed": sum(c["passed"] for c in checks), "checks_not_reached": not_reached}


def describe(c: dict[str, int]) -> str:
    """The counts as a line a learner reads: "ran 1 of 4 snippets; 3 of 3 checks so far hold, 7 not reached"."""
    held = f"{c['checks_passed']} of {c['checks']} check{'s' if c['checks'] != 1 else ''}"
    hold = "holds" if c["checks"] == 1 else "hold"
    if c["snippets_ran"] == 0:
        waiting = c["checks_not_reached"]
        return (f"not run yet: {c['snippets']} snippet{'s' if c['snippets'] != 1 else ''}, "
                f"{waiting} check{'s' if waiting != 1 else ''} waiting")
    if c["snippets_ran"] == c["snippets"] and not c["checks_not_reached"]:
        failing = c["checks"] - c["checks_passed"]
        return f"{held} {hold}" + (f", {failing} fail{'s' if failing == 1 else ''}" if failing else "")
    return (f"ran {c['snippets_ran']} of {c['snippets']} snippets; {held} so far {hold}, "
            f"{c['checks_not_reached']} not reached")


@functools.lru_cache(maxsize=4096)
def check_lines(code: str) -> tuple[int, ...]:
    """The lines (1-based, within the snippet) of the `check(...)` calls written in its code."""
    try:
        tree = syntax.parse(code)
    except SyntaxError:
        return tuple(i for i, line in enumerate(code.splitlines(), 1) if "check(" in line)
    return tuple(sorted(node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
                        and isinstance(node.func, ast.Name) and node.func.id == "check"))


def public(evidence: Evidence, figure_url: Callable[[str, str], str], answer: Answer | None = None) -> dict[str, Any]:
    """The contract's JSON shape: figures become URLs, non-finite floats become null; plus `counts`."""
    out = {k: v for k, v in evidence.items() if k not in INTERNAL}
    tally = counts(evidence, answer)
    out["counts"] = {**tally, "summary": describe(tally)}
    out["snippets"] = [
        {**s, "figures": [figure_url(evidence["slug"], f["name"]) for f in s["figures"]],
         "figure_alts": [f["alt"] for f in s["figures"]]}
        for s in evidence["snippets"]
    ]
    finite: dict[str, Any] = _finite(out)
    return finite


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
