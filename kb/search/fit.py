"""Fit the lookup's weights and confidence rule on the dev split (never on test); report a split.

    .venv/bin/python -m kb.search.fit            # refit, write kb/search/weights.json, print dev figures
    .venv/bin/python -m kb.search.fit --report   # the figures of the current weights on dev and on test

Dev questions are also the answers' aliases (learners' phrasings are added from dev, never from
test), and a question scored against its own copy matches perfectly: a fit on that would trust
alias similarity far more than a new question deserves. So the questions are scored in folds,
each by a lookup whose answers lack the aliases cut from the fold's own questions (cross-fitting),
and every fit below uses those honest features. A fold holds whole source threads (`folds_of`), so
no question meets an alias cut from another question of its own thread.

1. The ranking model: a logistic regression over every (dev question, answer) pair: 1 for the
   expected answer, 0 for the others and for every answer of an out-of-scope question.
2. The score: a second logistic regression on each question's top-ranked answer (right or not)
   over its ranking logit and its best similarity.
3. The confidence rule: a third, over `CONFIDENCE_FEATURES` (the top score, its margin over the
   second, the best similarity, the margin between the first two ranking logits, and how far the
   first answer is ahead of all the others in its best section's similarity, in its best
   similarity and in how many of its texts are close to the question); confident from the lowest threshold whose dev precision (share of confident
   questions whose first answer is right, out-of-scope ones counting as wrong) reaches
   `TARGET_PRECISION`. When not confident, "two answers fit" when both top scores reach `two`
   and lie within `two_gap` of each other: the pair that covers most in-scope dev questions with
   the right answer among the two, at `TARGET_TWO_PRECISION`, and flags few out-of-scope ones.
4. `shown`: the score under which a result is not shown to a learner (near zero).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kb.format.answer import Answer, load_answers

from . import evaluation as ev
from .embeddings import QUERY_TOKENS, EmbeddingCache, shared_embedder
from .index import SearchIndex
from .lookup import (
    CONFIDENCE_FEATURES,
    FEATURES,
    WEIGHTS_FILE,
    Lookup,
    Weights,
    close_texts,
    confidence_row,
    normalised,
    probability,
    ranking,
    verdict,
)

CACHE = ev.ROOT / ".kb" / "bench-lookup.sqlite3"   # embeddings kept between runs (derived)
QUESTIONS = ev.ROOT / ".kb" / "eval-questions.sqlite3"  # the eval questions' embeddings, kept between runs (derived)
L2 = 1e-2
FOLDS = 5
OUT_OF_SCOPE_WEIGHT = 10.0   # few out-of-scope questions, and telling them apart is what confidence is for
TARGET_PRECISION = 0.94      # on dev (held-out folds). The issue asks for 95% precision with 75% of questions
                             # confident; on dev both cannot hold, and 0.94 comes nearest both (refit of
                             # 2026-12-08, 740 dev questions: 0.92 -> 92.1% precision, 85.7% coverage; 0.93 ->
                             # 92.9, 81.8; 0.94 -> 94.2, 76.8; 0.95 -> 95.4, 70.7). 0.92 while 0.95 left a
                             # third of dev questions confident (weights v3)
TARGET_TWO_PRECISION = 0.85  # right answer among the two; 0.90 until weights v4, when the classifier made the
                             # easy pairs confident and no rule on dev reached 0.90 (0.85: 34 of 40 flagged)
MAX_OUT_OF_SCOPE_TWO = 0.10
MAX_TWO_GAP = 0.5            # "close together": the second's score within this of the first's
SHOWN_FLOOR = 0.02           # "near zero": never shown to a learner

# Per question: the slugs considered, their feature matrix, their close texts (`lookup.close_texts`).
Scored = list[tuple[list[str], npt.NDArray[np.float64], npt.NDArray[np.float64]]]
# What the lookups that only compute features carry (features never read the weights), so a fit
# does not need the weights file it replaces to be of this version.
UNFITTED = Weights(FEATURES, (0.0,) * (1 + len(FEATURES)), (0.0, 0.0, 0.0), (0.0,) * (1 + len(CONFIDENCE_FEATURES)),
                   {"confident": 0.99, "two": 2.0, "two_gap": 0.0, "shown": SHOWN_FLOOR})


def build(db_path: str | os.PathLike[str] = CACHE, answers: Iterable[Answer] | None = None,
          weights: Weights | None = None) -> Lookup:
    """A lookup over `answers` (default: the project's), its vectors cached in `db_path`."""
    if answers is None:
        answers = load_answers([ev.ANSWERS])[0].values()
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    lookup = Lookup(SearchIndex(db_path), db_path, shared_embedder(), weights)
    lookup.rebuild(answers)
    return lookup


def folds_of(entries: Sequence[tuple[str, str | None]], folds: int = FOLDS) -> npt.NDArray[np.int64]:
    """Each question's fold: a hash of its source thread (`evaluation.thread_of`; an own phrasing
    is a thread of its own), so the questions of one thread always share a fold."""
    threads = ev.threads()
    keys = [threads.get(question, question) for question, _ in entries]
    return np.array([int(hashlib.sha256(k.encode("utf-8")).hexdigest()[:8], 16) % folds for k in keys], np.int64)


def question_vectors(entries: Sequence[tuple[str, str | None]],
                     db_path: str | os.PathLike[str] = QUESTIONS) -> npt.NDArray[np.float32]:
    """Each question's embedding as a lookup makes it (`Lookup.question`), kept in `db_path`: the
    eval's ~1,000 questions cost ~20 s of model time, once."""
    cache = EmbeddingCache(db_path, shared_embedder(), QUERY_TOKENS)
    return cache.vectors([normalised(question) for question, _ in entries])


def cross_fitted(entries: Sequence[tuple[str, str | None]], folds: int = FOLDS,
                 db_path: str | os.PathLike[str] = CACHE) -> Scored:
    """(slugs considered, feature matrix, close texts) per question, each computed by a lookup built without
    the aliases cut from the questions of its fold (`folds_of`)."""
    answers = list(load_answers([ev.ANSWERS])[0].values())
    vectors = question_vectors(entries)
    out: list[Any] = [None] * len(entries)
    fold_of = folds_of(entries, folds)
    for fold in range(folds):
        mine = [i for i in range(len(entries)) if fold_of[i] == fold]
        questions = [ev.words(entries[i][0]) for i in mine]
        lookup = build(db_path, [dataclasses.replace(a, aliases=tuple(x for x in a.aliases if not ev.copied_from(x, questions)))
                                 for a in answers], UNFITTED)
        for i in mine:
            chosen, matrix, (_, offsets, similarity) = lookup.features(entries[i][0], question=vectors[i])
            out[i] = (lookup.slugs(chosen), matrix, close_texts(offsets, similarity))
    return out


def logistic(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], sample: npt.NDArray[np.float64] | None = None,
             l2: float = L2, steps: int = 50) -> tuple[float, ...]:
    """Newton's method for weighted, L2-regularised logistic regression; (intercept, *weights)."""
    design = np.hstack([np.ones((len(x), 1)), x])
    sample = np.ones(len(x)) if sample is None else sample
    w = np.zeros(design.shape[1])
    penalty = np.diag([0.0] + [l2] * x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(design @ w, -30, 30)))
        gradient = design.T @ (sample * (p - y)) + penalty @ w
        hessian = design.T @ (design * (sample * p * (1 - p))[:, None]) + penalty
        w -= np.linalg.solve(hessian, gradient)
    return tuple(float(v) for v in w)


def fit_ranking(entries: Sequence[tuple[str, str | None]], scored: Scored) -> tuple[float, ...]:
    x = np.vstack([matrix for _, matrix, _ in scored])
    y = np.concatenate([[s == slug for s in slugs] for (slugs, _, _), (_, slug) in zip(scored, entries, strict=True)])
    return logistic(x, y.astype(float))


def top(scored: Scored, weights: Sequence[float]) -> Iterator[tuple[str, float, float]]:
    """Each question's top-ranked answer, its ranking logit and its best similarity."""
    for slugs, matrix, _ in scored:
        logits = ranking(matrix, weights)
        best = int(np.argmax(logits))
        yield slugs[best], float(logits[best]), float(matrix[best, :3].max())


def calibrate(entries: Sequence[tuple[str, str | None]], scored: Scored, weights: Sequence[float]) -> tuple[float, ...]:
    rows, labels, sample = [], [], []
    for (_, slug), (found, logit, similarity) in zip(entries, top(scored, weights), strict=True):
        rows.append([logit, similarity])
        labels.append(float(found == slug))
        sample.append(OUT_OF_SCOPE_WEIGHT if slug is None else 1.0)
    return logistic(np.array(rows), np.array(labels), np.array(sample))


@dataclasses.dataclass
class Outcome:
    """One question as the page would present it."""

    slug: str | None          # expected
    ranked: list[str]         # slugs, best first
    scores: list[float]       # their scores
    logits: list[float]       # their ranking logits
    matrix: npt.NDArray[np.float64]   # their feature rows
    close: npt.NDArray[np.float64]    # their close texts
    fit: str = "none"
    shown: int = 0

    def confidence_row(self) -> list[float]:
        return confidence_row(np.array(self.scores), np.array(self.logits), self.matrix, self.close)


def outcomes(entries: Sequence[tuple[str, str | None]], scored: Scored, weights: Weights) -> list[Outcome]:
    out = []
    for (_, slug), (slugs, matrix, close) in zip(entries, scored, strict=True):
        scores = probability(matrix, weights)
        logits = ranking(matrix, weights.weights)
        order = np.lexsort((np.arange(len(scores)), -scores))
        out.append(Outcome(slug, [slugs[i] for i in order], [float(scores[i]) for i in order],
                           [float(logits[i]) for i in order], matrix[order], close[order]))
    return out


def judge(found: list[Outcome], weights: Weights) -> list[Outcome]:
    for o in found:
        o.fit, o.shown = verdict(np.array(o.scores), np.array(o.logits), o.matrix, o.close, weights)
    return found


def fit_confidence(found: list[Outcome], fold: npt.NDArray[np.int64] | None = None) -> tuple[tuple[float, ...], float]:
    """The confidence model (fitted on all of dev) and the lowest threshold whose precision reaches
    `TARGET_PRECISION`, judged on each question's prediction by a model fitted on the other folds
    (in-sample predictions would flatter the threshold)."""
    x = np.array([o.confidence_row() for o in found])
    y = np.array([float(o.ranked[0] == o.slug) for o in found])
    sample = np.array([OUT_OF_SCOPE_WEIGHT if o.slug is None else 1.0 for o in found])
    held_out = np.zeros(len(found))
    fold = np.arange(len(found)) % FOLDS if fold is None else fold
    for k in range(FOLDS):
        m = logistic(x[fold != k], y[fold != k], sample[fold != k])
        held_out[fold == k] = 1 / (1 + np.exp(-(m[0] + x[fold == k] @ np.array(m[1:]))))
    best = 0.99
    for t in np.round(np.arange(0.99, 0.30, -0.005), 3):
        chosen = held_out >= t
        if chosen.any() and y[chosen].mean() >= TARGET_PRECISION:
            best = float(t)
    return logistic(x, y, sample), best


def fit_two(found: list[Outcome], weights: Weights) -> tuple[float, float]:
    """(two, two_gap): among questions not confident, the rule that flags most in-scope ones whose
    right answer is one of the two, at `TARGET_TWO_PRECISION`, flagging few out-of-scope ones."""
    best, choice = -1, (2.0, 0.0)
    unsure = [o for o in judge(found, dataclasses.replace(weights, thresholds={**weights.thresholds, "two": 2.0}))
              if o.fit != "one" and len(o.scores) > 1]
    outside = max(1, sum(o.slug is None for o in found))
    for two in np.arange(0.05, 0.6, 0.01):
        for gap in np.arange(0.02, MAX_TWO_GAP + 0.001, 0.02):
            flagged = [o for o in unsure if o.scores[1] >= two and o.scores[0] - o.scores[1] <= gap]
            hits = sum(o.slug in o.ranked[:2] for o in flagged if o.slug)
            if not flagged or hits / len(flagged) < TARGET_TWO_PRECISION:
                continue
            if sum(o.slug is None for o in flagged) / outside > MAX_OUT_OF_SCOPE_TWO:
                continue
            if hits > best:
                best, choice = hits, (round(float(two), 2), round(float(gap), 2))
    return choice


def table(found: list[Outcome]) -> dict[str, float]:
    """The figures the issue asks for, over judged outcomes."""
    inside = [o for o in found if o.slug is not None]
    outside = [o for o in found if o.slug is None]
    confident = [o for o in found if o.fit == "one"]
    n = max(len(inside), 1)
    return {
        "questions": len(inside), "out_of_scope": len(outside),
        "top1": sum(o.ranked[:1] == [o.slug] for o in inside) / n,
        "top3": sum(o.slug in o.ranked[:3] for o in inside) / n,
        "precision_when_confident": (sum(o.ranked[0] == o.slug for o in confident) / len(confident)) if confident else 0.0,
        "coverage": sum(o.fit == "one" for o in inside) / n,
        "two_fit": sum(o.fit == "two" for o in inside) / n,
        "shown_contains_right": sum(o.slug in o.ranked[:o.shown] for o in inside) / n,
        "out_of_scope_not_confident": (sum(o.fit != "one" for o in outside) / len(outside)) if outside else 0.0,
    }


def fit(dev: Sequence[tuple[str, str | None]], scored: Scored) -> Weights:
    ranking_weights = fit_ranking(dev, scored)
    calibration = calibrate(dev, scored, ranking_weights)
    base = Weights(FEATURES, ranking_weights, calibration, (0.0,) * (1 + len(CONFIDENCE_FEATURES)),
                   {"confident": 0.99, "two": 2.0, "two_gap": 0.0, "shown": SHOWN_FLOOR})
    found = outcomes(dev, scored, base)
    model, threshold = fit_confidence(found, folds_of(dev))
    weights = dataclasses.replace(base, confident=model, thresholds={**base.thresholds, "confident": threshold})
    two, gap = fit_two(found, weights)
    weights = dataclasses.replace(weights, thresholds={**weights.thresholds, "two": two, "two_gap": gap})
    summary = table(judge(found, weights))
    fitted = {"at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "by": "python -m kb.search.fit",
              "dev_questions": len(dev), "dev_out_of_scope": sum(s is None for _, s in dev), "folds": FOLDS,
              "split": "by source thread (kb.search.evaluation.split_of)", "folds_by": "source thread",
              "cross_fitted_dev": {k: round(v, 4) for k, v in summary.items()},
              "confidence_features": list(CONFIDENCE_FEATURES)}
    return dataclasses.replace(weights, dev_hash=ev.dev_hash(list(dev)), fitted=fitted)


def report(weights: Weights, split: str, db_path: str | os.PathLike[str] = CACHE,
           shown_all: bool = False) -> dict[str, float]:
    """The table for a split with these weights; test questions are never aliases, so no folds."""
    entries = ev.entries(split)
    scored = cross_fitted(entries, db_path=db_path) if split == "dev" else plain(entries, db_path)
    found = judge(outcomes(entries, scored, weights), weights)
    if shown_all:
        for o in found:
            o.shown = min(10, len(o.ranked))
    return table(found)


def plain(entries: Sequence[tuple[str, str | None]], db_path: str | os.PathLike[str] = CACHE) -> Scored:
    """Each question scored by the lookup as shipped, less any alias that near-duplicates one of
    the questions (either way round: `evaluation.near_duplicates`), so no question meets its copy."""
    questions = [q for q, _ in entries]
    answers = list(load_answers([ev.ANSWERS])[0].values())
    copies = {alias for alias, _ in ev.near_duplicates([x for a in answers for x in a.aliases], questions)}
    lookup = build(db_path, [dataclasses.replace(a, aliases=tuple(x for x in a.aliases if x not in copies))
                             for a in answers], UNFITTED)
    out: Scored = []
    for (question, _), vector in zip(entries, question_vectors(entries), strict=True):
        chosen, matrix, (_, offsets, similarity) = lookup.features(question, question=vector)
        out.append((lookup.slugs(chosen), matrix, close_texts(offsets, similarity)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kb.search.fit", description=__doc__.split("\n")[0])
    parser.add_argument("--report", action="store_true", help="only report the current weights on dev and test")
    parser.add_argument("--as-before", action="store_true",
                        help="with --report: every result shown (the page before issue 19 listed up to 10)")
    parser.add_argument("--out", default=str(WEIGHTS_FILE), help="the weights file to write (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.report:
        weights = Weights.load(args.out)
    else:
        dev = ev.entries("dev")
        weights = fit(dev, cross_fitted(dev))
        Path(args.out).write_text(weights.to_json(), encoding="utf-8")
        print(f"wrote {args.out}")
    for split in ("dev", "test"):
        row = report(weights, split, shown_all=args.as_before)
        print(split + ": " + ", ".join(f"{k} {v:.1%}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
