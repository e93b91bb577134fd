"""Fit the lookup's fusion weights and confidence threshold on the dev split (never on test).

    .venv/bin/python bench/lookup_fit.py        # prints WEIGHTS and CONFIDENT for kb/lookup.py

A logistic regression over every (dev question, answer) pair: label 1 for the expected answer,
0 for the others and for every answer of an out-of-scope question. Its output is the result's
score, a probability. The threshold is the highest one that leaves at most 5% of the in-scope dev
questions not confident (rounded down), so out-of-scope questions are caught as far as that
allows.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from kb import lookup as lk
from kb.answer import load_answers
from kb.index import SearchIndex
from kb.semantic import shared_embedder

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is scripts, not a package on the path

import lookup_data  # noqa: E402  (after the path line above)

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".kb" / "bench-lookup.sqlite3"   # embeddings kept between runs (derived)
MAX_NOT_CONFIDENT = 0.05
L2 = 1e-2


def build(db_path=CACHE):
    answers, errors = load_answers([ROOT / "answers"])
    lookup = lk.Lookup(SearchIndex(db_path), db_path, shared_embedder())
    lookup.rebuild(answers.values())
    return lookup


def dataset(lookup, entries):
    rows, labels, groups = [], [], []
    for g, (question, slug) in enumerate(entries):
        chosen, matrix, _ = lookup.features(question)
        rows.append(matrix)
        labels.append(np.array([lookup.state.entries[i].slug == slug for i in chosen], dtype=float))
        groups.append(np.full(len(matrix), g))
    return np.vstack(rows), np.concatenate(labels), np.concatenate(groups)


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


def calibrate(lookup, entries, weights):
    """The score's model, fitted on each dev question's top-ranked answer: right or not.

    Out-of-scope questions are weighted up (ten times): there are few of them, and telling
    them apart is what the confident flag is for."""
    rows, labels = [], []
    for question, slug in entries:
        chosen, matrix, _ = lookup.features(question)
        logits = lk.ranking(matrix, weights)
        top = int(np.argmax(logits))
        right = lookup.state.entries[chosen[top]].slug == slug
        rows.append([logits[top], matrix[top, :3].max()])
        labels.append(float(right))
        if slug is None:     # out-of-scope questions are few: each counts as much as ten
            rows += [rows[-1]] * 9
            labels += [0.0] * 9
    return fit(np.array(rows), np.array(labels))


def threshold(lookup, entries, weights, calibration):
    inside = [top_score(lookup, q, weights, calibration) for q, s in entries if s is not None]
    outside = [top_score(lookup, q, weights, calibration) for q, s in entries if s is None]
    allowed = int(MAX_NOT_CONFIDENT * len(inside))            # in-scope questions that may fall below
    t = np.floor(sorted(inside)[allowed] * 100) / 100
    return float(t), np.mean(np.array(inside) < t), np.mean(np.array(outside) < t)


def top_score(lookup, question, weights, calibration):
    _, matrix, _ = lookup.features(question)
    return float(lk.probability(matrix, weights, calibration)[np.argmax(lk.ranking(matrix, weights))])


def main():
    lookup = build()
    dev = lookup_data.entries("dev")
    x, y, groups = dataset(lookup, dev)
    weights = fit(x, y)
    calibration = calibrate(lookup, dev, weights)
    t, inside, outside = threshold(lookup, dev, weights, calibration)
    print(f"dev: {len(dev)} questions ({sum(s is None for _, s in dev)} out of scope)")
    print("FEATURES =", lk.FEATURES)
    print("WEIGHTS = (" + ", ".join(f"{w:.3f}" for w in weights) + ")")
    print("CALIBRATION = (" + ", ".join(f"{w:.3f}" for w in calibration) + ")")
    print(f"CONFIDENT = {t}  # dev: {inside:.1%} of in-scope not confident, {outside:.1%} of out-of-scope")


if __name__ == "__main__":
    main()
