"""Tools for authors: a skeleton for a new question, and a lint of the whole knowledge base."""
from __future__ import annotations

import ast
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from kb.format import syntax
from kb.format.answer import SLUG_RE, Answer, FormatError
from kb.format.draft import PLACEHOLDERS
from kb.format.topics import BY_KEY as TOPICS
from kb.store import evidence as ev

SKELETON = '''---
title: {title}
summary: >-
  {p[summary]}
aliases:
  - {p[alias]}
tags: [{p[tag]}]
related: []
sources:
  - "{p[source]}"
---

## Short answer

{p[short answer]}

## Why

{p[why]} ($X$ is $(n_x, m)$, $J$ the average of the losses),
and put the evidence right after the sentence it supports:

```python
import numpy as np

rng = np.random.default_rng(0)
x = rng.normal(size=1_000)
check("{p[check]}", abs(x.mean()) < 0.1, x.mean())
```

## When this is not the whole story

{p[caveat]}
'''
CHECK_COMMAND = ".venv/bin/python -m kb check"  # as docs/writing-answers.md writes it, so `kb new`'s hint works pasted
SUMMARY_WORDS = 40  # the contract's "one or two sentences": a summary longer than this is a paragraph


def slugify(question: str, max_words: int = 10) -> str:
    words = re.findall(r"[a-z0-9]+", question.lower().replace("'", ""))
    return "-".join(words[:max_words])


def new_answer(question: str, folder: str | os.PathLike[str]) -> Path:
    """Write `folder/<slug>.md` from the skeleton; refuse to overwrite an existing answer."""
    slug = slugify(question)
    if not SLUG_RE.fullmatch(slug or ""):
        raise ValueError(f"cannot make a file name from {question!r}: use some letters or digits")
    path = Path(folder) / f"{slug}.md"
    if path.exists():
        raise FileExistsError(f"{path} already exists")
    title = question.strip().replace('"', '\\"')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SKELETON.format(title=f'"{title}"', p=PLACEHOLDERS), encoding="utf-8")
    return path


def lint(answers: Mapping[str, Answer], evidence: Mapping[str, ev.Evidence]) -> list[FormatError]:
    """Problems a reader would hit that the format itself allows.

    `evidence` maps slug to evidence (for figures' alt text). Reported: answers with no check,
    checks that cannot fail, figures without alt text, no topic, a summary longer than one or two
    sentences, placeholders `kb new` wrote and the author left, related links only one way,
    answers no other answer links to, and an alias used by two answers (or equal to another
    answer's title).
    """
    problems = []
    linked_from = defaultdict(set)
    for answer in answers.values():
        for other in answer.related:
            linked_from[other].add(answer.slug)
    phrasings = defaultdict(list)
    for answer in answers.values():
        phrasings[_norm(answer.title)].append((answer, "title"))
        for alias in answer.aliases:
            phrasings[_norm(alias)].append((answer, alias))

    for slug, answer in sorted(answers.items()):
        lines = answer.key_lines
        if answer.topic is None:
            problems.append(FormatError(answer.path, 1, f"no topic: add 'topic:' with one of {', '.join(TOPICS)}"))
        if not any(re.search(r"\bcheck\(", s.code) for s in answer.runnable):
            problems.append(FormatError(answer.path, answer.body_line, "no check(...): every claim needs computed evidence"))
        problems += _long_summary(answer) + _placeholders(answer) + _checks_that_cannot_fail(answer)
        ran = evidence.get(slug)
        for snippet in ran["snippets"] if ran else []:
            for figure in snippet["figures"]:
                if not figure.get("alt"):
                    problems.append(FormatError(answer.path, snippet["line"],
                                                f"figure {figure['name']} has no alt text: give it a title"))
        for other in answer.related:
            if other in answers and slug not in answers[other].related:
                problems.append(FormatError(answer.path, lines.get("related", 1),
                                            f"related link to '{other}' is one-way: add '{slug}' to its related"))
        if len(answers) > 1 and not linked_from[slug]:
            problems.append(FormatError(answer.path, lines.get("related", 1),
                                        "no other answer links here (unreachable by related links)"))
        for alias in answer.aliases:
            owners = {a.slug for a, _ in phrasings[_norm(alias)]} - {slug}
            if owners:
                problems.append(FormatError(answer.path, lines.get("aliases", 1),
                                            f"alias {alias!r} is also used by {', '.join(sorted(owners))}"))
    return problems


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))



def _long_summary(answer: Answer) -> list[FormatError]:
    words = sum(1 for token in answer.summary.split() if re.search(r"[^\W_]", token))  # "=", "−" are no words
    sentences = len(re.split(r"(?<=[.!?])\s+(?=[A-Z(])", answer.summary.strip()))
    if words <= SUMMARY_WORDS and sentences <= 2:
        return []
    return [FormatError(answer.path, answer.key_lines.get("summary", 1),
                        f"summary has {words} words in {sentences} sentence(s): say it in one or two "
                        f"sentences of at most {SUMMARY_WORDS} words, and leave the rest to the body")]


def _placeholders(answer: Answer) -> list[FormatError]:
    """Text of the `kb new` skeleton still in the answer: published, it would read as an answer."""
    p, lines = PLACEHOLDERS, answer.key_lines
    found = []
    if answer.summary.strip() == p["summary"]:
        found.append((lines.get("summary", 1), "summary"))
    if p["alias"] in answer.aliases:
        found.append((lines.get("aliases", 1), "alias"))
    if p["tag"] in answer.tags:
        found.append((lines.get("tags", 1), "tag"))
    if p["source"] in answer.sources:
        found.append((lines.get("sources", 1), "source"))
    for snippet in answer.snippets:
        if p["check"] in snippet.code:
            found.append((snippet.line, "example snippet"))
    body = answer.body.splitlines()
    for key in ("short answer", "why", "caveat"):
        for n, text in enumerate(body):
            if p[key] in text:
                found.append((answer.body_line + n, f"{key!r} prose"))
    return [FormatError(answer.path, line, f"skeleton placeholder left from kb new: replace the {what}")
            for line, what in found]


def _checks_that_cannot_fail(answer: Answer) -> list[FormatError]:
    """`check(...)` calls whose condition holds whatever the snippet computes: a ✓ that proves nothing.

    Recognised: a constant true condition (`True`, `1`, a non-empty string), a value compared with
    itself (`x == x`, `x <= x`, `x is x`), `np.isclose(x, x)`-style calls on one value twice, and
    `or`/`and` built from those. Only what the code shows: a check can still be weak in ways no
    syntax reveals.
    """
    problems = []
    for snippet in answer.runnable:
        try:
            tree = syntax.parse(snippet.code)
        except SyntaxError:
            continue  # kb check reports it where it runs
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "check"):
                continue
            condition = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "condition"), None)
            if condition is not None and _always_true(condition):
                problems.append(FormatError(
                    answer.path, snippet.line + node.lineno,
                    f"check cannot fail: its condition `{ast.unparse(condition)}` holds whatever is computed"))
    return problems


SELF_TRUE_OPS = (ast.Eq, ast.LtE, ast.GtE, ast.Is)  # x op x holds (bar NaN for == <= >=, still no evidence)
SELF_TRUE_CALLS = {"isclose", "allclose", "array_equal", "array_equiv", "equal"}


def _always_true(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return bool(node.value) and node.value is not Ellipsis
    if isinstance(node, ast.BoolOp):
        parts = [_always_true(v) for v in node.values]
        return any(parts) if isinstance(node.op, ast.Or) else all(parts)
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        return all(isinstance(op, SELF_TRUE_OPS) and ast.dump(a) == ast.dump(b)
                   for op, a, b in zip(node.ops, operands, operands[1:], strict=False))  # operands has one more
    if isinstance(node, ast.Call) and len(node.args) >= 2:
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        return name in SELF_TRUE_CALLS and ast.dump(node.args[0]) == ast.dump(node.args[1])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "all" and not node.args:
        return _always_true(node.func.value)  # (x == x).all()
    return False
