"""Which answer a question belongs to, learnt from the answers' own texts.

Nearest-text similarity asks "which single text is closest?"; a neighbour's one lucky alias can
win it. A softmax regression over the embeddings of every answer's texts (title, aliases, summary,
sections), each labelled with its answer, learns instead which directions tell the answers apart.
Its log-probability is one of the lookup's ranking features (`lookup.FEATURES`, "classifier"): on
the dev split, cross-fitted, it moved top-1 from 80.0% to 82.7% and coverage from 70.9% to 73.3%
(`python -m kb.search.fit`, 659 dev questions, the same aliases).

It is trained with each published state, on the state's vectors alone (no evaluation data ships):
about 0.35 s at 77 answers with 26 texts each, on one core. Below `MIN_ANSWERS` it is not trained
(a handful of answers' texts teach it nothing that transfers: it would be sure of anything, even a
word none of them holds), nor when texts times answers exceed `MAX_WORK` (the cost grows with both,
and an edit waits for it: 0.2 s at 77 answers, 0.7 s at 150, 1.1 s at 200, 2.6 s at 300 with 18
texts each on this project's 2 cores; the budget keeps an edit's retraining near 1 s, so about 180
answers at 18 texts each, 150 at 26); every answer then gets the uniform log(1/n), and the other
features rank alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MIN_ANSWERS = 10
MAX_WORK = 600_000  # texts x answers: above this, no classifier (~1 s of training)
STEPS = 100         # Adam steps, full batch, from zero: deterministic
RATE = 0.1
L2 = 1e-3
SCALE = 10.0        # unit vectors' cosines are small; scaled, the softmax can be sharp
FLOOR = -20.0       # a log-probability is never below this (the feature stays bounded)


@dataclass(frozen=True)
class Classifier:
    weights: npt.NDArray[np.float32]   # [384 x answers]
    bias: npt.NDArray[np.float32]      # [answers]

    def log_probabilities(self, question: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """log P(answer | question) for every answer, at least `FLOOR`."""
        scores = np.einsum("j,jk->k", question.astype(np.float32) * np.float32(SCALE), self.weights) + self.bias
        scores = scores.astype(np.float64) - scores.max()
        logs: npt.NDArray[np.float64] = np.maximum(scores - math.log(np.exp(scores).sum()), FLOOR)
        return logs


def uniform(answers: int) -> float:
    """The feature's value when there is no classifier: every answer as likely."""
    return max(-math.log(max(answers, 1)), FLOOR)


def train_classifier(vectors: npt.NDArray[np.floating], owner: npt.NDArray[np.integer], answers: int) -> Classifier | None:
    """A softmax regression from each text's vector to its owner (an index below `answers`);
    None under `MIN_ANSWERS` answers or over `MAX_WORK`."""
    if answers < MIN_ANSWERS or answers * len(owner) > MAX_WORK:
        return None
    x = np.asarray(vectors, np.float32) * np.float32(SCALE)
    target = np.zeros((len(owner), answers), np.float32)
    target[np.arange(len(owner)), owner] = 1.0
    weights = np.zeros((x.shape[1], answers), np.float32)
    bias = np.zeros(answers, np.float32)
    first: npt.NDArray[np.floating] = np.zeros_like(weights)   # Adam's moments
    second: npt.NDArray[np.floating] = np.zeros_like(weights)
    for step in range(1, STEPS + 1):
        scores = x @ weights + bias
        scores -= scores.max(axis=1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=1, keepdims=True)
        p -= target
        gradient = (x.T @ p) / np.float32(len(x)) + np.float32(L2) * weights
        first = np.float32(0.9) * first + np.float32(0.1) * gradient
        second = np.float32(0.999) * second + np.float32(0.001) * gradient * gradient
        weights -= RATE * (first / (1 - 0.9 ** step)) / (np.sqrt(second / (1 - 0.999 ** step)) + 1e-8)
        bias -= RATE * p.mean(axis=0)
    return Classifier(weights, bias)
