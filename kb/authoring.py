"""Tools for authors: a skeleton for a new question, and a lint of the whole knowledge base."""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from .answer import SLUG_RE, FormatError
from .topics import BY_KEY as TOPICS

SKELETON = '''---
title: {title}
summary: >-
  Answer the question in one or two sentences; the page and search results show this first.
aliases:
  - Another way a learner asks this question
tags: [{tag}]
related: []
sources:
  - "The lecture, paper or book section this explanation follows"
---

## Short answer

Say the answer plainly, as in the summary.

## Why

Explain step by step in the course's notation ($X$ is $(n_x, m)$, $J$ the average of the losses),
and put the evidence right after the sentence it supports:

```python
import numpy as np

rng = np.random.default_rng(0)
x = rng.normal(size=1_000)
check("the mean of 1,000 standard normal draws is within 0.1 of 0", abs(x.mean()) < 0.1, x.mean())
```

## When this is not the whole story

Say when the opposite choice is right.
'''


def slugify(question: str, max_words: int = 10) -> str:
    words = re.findall(r"[a-z0-9]+", question.lower().replace("'", ""))
    return "-".join(words[:max_words])


def new_answer(question: str, folder) -> Path:
    """Write `folder/<slug>.md` from the skeleton; refuse to overwrite an existing answer."""
    slug = slugify(question)
    if not SLUG_RE.fullmatch(slug or ""):
        raise ValueError(f"cannot make a file name from {question!r}: use some letters or digits")
    path = Path(folder) / f"{slug}.md"
    if path.exists():
        raise FileExistsError(f"{path} already exists")
    title = question.strip().replace('"', '\\"')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SKELETON.format(title=f'"{title}"', tag="fundamentals"), encoding="utf-8")
    return path


def lint(answers: dict, evidence: dict) -> list[FormatError]:
    """Problems a reader would hit that the format itself allows.

    `evidence` maps slug to evidence (for figures' alt text). Reported: answers with no check,
    figures without alt text, no topic, related links only one way, answers no other answer links to, and
    an alias used by two answers (or equal to another answer's title).
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
        for snippet in evidence.get(slug, {}).get("snippets", []):
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

