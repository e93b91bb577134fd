"""Fit the lookup's fusion weights and confidence threshold on the dev split (never on test).

    .venv/bin/python bench/lookup_fit.py        # prints WEIGHTS, CALIBRATION and CONFIDENT for kb/search/lookup.py

Dev questions are also the answers' aliases (learners' phrasings are added from dev, never from
test), and a question scored against its own copy matches perfectly: a fit on that would trust
alias similarity far more than a new question deserves. So the questions are scored in folds,
each by a lookup whose answers lack the fold's own phrasings (cross-fitting), and every fit below
uses those honest features.

The ranking model is a logistic regression over every (dev question, answer) pair: label 1 for
the expected answer, 0 for the others and for every answer of an out-of-scope question. The
score's model is a second logistic regression, on each question's top-ranked answer: right or
not. The threshold is the highest one that leaves at most 5% of the in-scope dev questions not
confident (rounded down), so out-of-scope questions are caught as far as that allows.
"""
from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np

from kb.format.answer import load_answers
from kb.search import lookup as lk
from kb.search.embeddings import shared_embedder
from kb.search.index import SearchIndex

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is scripts, not a package on the path

import lookup_data  # noqa: E402  (after the path line above)

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".kb" / "bench-lookup.sqlite3"   # embeddings kept between runs (derived)
MAX_NOT_CONFIDENT = 0.05
L2 = 1e-2
FOLDS = 5


def build(db_path=CACHE, answers=None):
    if answers is None:
        answers = load_answers([ROOT / "answers"])[0].values()
    lookup = lk.Lookup(SearchIndex(db_path), db_path, shared_embedder())
    lookup.rebuild(answers)
    return lookup


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _copied_from(alias: str, questions: list[str]) -> bool:
    """Whether the alias is a cut of one of the questions (its words, in a row, inside it)."""
    words = f" {_words(alias)} "
    return any(words in f" {q} " for q in questions)


def cross_fitted(entries, folds=FOLDS, db_path=CACHE):
    """[(slugs considered, feature matrix)] per question, each computed by a lookup built
    without the aliases cut from the questions of its fold."""
    answers = list(load_answers([ROOT / "answers"])[0].values())
    out = [None] * len(entries)
    for fold in range(folds):
        mine = [i for i in range(len(entries)) if i % folds == fold]
        questions = [_words(entries[i][0]) for i in mine]
        lookup = build(db_path, [dataclasses.replace(a, aliases=tuple(x for x in a.aliases if not _copied_from(x, questions)))
                                 for a in answers])
        for i in mine:
            chosen, matrix, _ = lookup.features(entries[i][0])
            out[i] = ([lookup.state.entries[c].slug for c in chosen], matrix)
    return out


def fit(x, y, l2=L2, steps=50):
    """Newton's method for L2-regularised logistic regression; returns (intercept, *weights)."""
    design = np.hstack([np.ones((len(x), 1)), x])
    w = np.zeros(design.shape[1])
    penalty = np.diag([0.0] + [l2] * x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-design @ w))
        gradient = design.T @ (p - y) + penalty @ w
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty
        w -= np.linalg.solve(hessian, gradient)
    return tuple(float(v) for v in w)


def fit_ranking(entries, scored):
    x = np.vstack([matrix for _, matrix in scored])
    y = np.concatenate([[s == slug for s in slugs] for (slugs, _), (_, slug) in zip(scored, entries, strict=True)]).astype(float)
    return fit(x, y)


def top(scored, weights, calibration=None):
    """Each question's top-ranked answer and its score (the ranking logit without calibration)."""
    for slugs, matrix in scored:
        logits = lk.ranking(matrix, weights)
        best = int(np.argmax(logits))
        score = logits[best] if calibration is None else lk.probability(matrix, weights, calibration)[best]
        yield slugs[best], float(score), float(matrix[best, :3].max())


def calibrate(entries, scored, weights):
    """The score's model, fitted on each dev question's top-ranked answer: right or not.

    Out-of-scope questions are weighted up (ten times): there are few of them, and telling
    them apart is what the confident flag is for."""
    rows, labels = [], []
    for (_, slug), (found, logit, similarity) in zip(entries, top(scored, weights), strict=True):
        copies = 10 if slug is None else 1
        rows += [[logit, similarity]] * copies
        labels += [float(found == slug)] * copies
    return fit(np.array(rows), np.array(labels))


def threshold(entries, scored, weights, calibration):
    scores = [score for _, score, _ in top(scored, weights, calibration)]
    inside = [s for s, (_, slug) in zip(scores, entries, strict=True) if slug is not None]
    outside = [s for s, (_, slug) in zip(scores, entries, strict=True) if slug is None]
    allowed = int(MAX_NOT_CONFIDENT * len(inside))            # in-scope questions that may fall below
    t = np.floor(sorted(inside)[allowed] * 100) / 100
    return float(t), np.mean(np.array(inside) < t), np.mean(np.array(outside) < t)


def main():
    dev = lookup_data.entries("dev")
    scored = cross_fitted(dev)
    weights = fit_ranking(dev, scored)
    calibration = calibrate(dev, scored, weights)
    t, inside, outside = threshold(dev, scored, weights, calibration)
    right = [found == slug for (_, slug), (found, _, _) in zip(dev, top(scored, weights), strict=True) if slug is not None]
    print(f"dev: {len(dev)} questions ({sum(s is None for _, s in dev)} out of scope); "
          f"cross-fitted top-1 {np.mean(right):.1%}")
    print("FEATURES =", lk.FEATURES)
    print("WEIGHTS = (" + ", ".join(f"{w:.3f}" for w in weights) + ")")
    print("CALIBRATION = (" + ", ".join(f"{w:.3f}" for w in calibration) + ")")
    print(f"CONFIDENT = {t}  # dev: {inside:.1%} of in-scope not confident, {outside:.1%} of out-of-scope")


if __name__ == "__main__":
    main()
