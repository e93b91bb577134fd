"""The lookup's classifier of answers' texts (`kb.search.classifier`): it learns which directions
tell the answers apart, a nearest single text does not decide, and it stays out where it cannot
help (too few answers) or would hold up an edit too long (texts x answers over a budget)."""
from __future__ import annotations

import numpy as np

from kb.search.classifier import FLOOR, MAX_WORK, MIN_ANSWERS, train_classifier, uniform
from kb.search.embeddings import DIMENSION


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def clusters(rng: np.random.Generator, answers: int, texts: int, spread: float):
    centres = unit(rng.standard_normal((answers, DIMENSION)))
    owner = np.repeat(np.arange(answers), texts)
    vectors = unit(centres[owner] + spread * rng.standard_normal((len(owner), DIMENSION)) / np.sqrt(DIMENSION))
    return centres, owner, vectors


def test_a_question_goes_to_the_answer_whose_texts_it_shares_a_direction_with():
    rng = np.random.default_rng(7)
    centres, owner, vectors = clusters(rng, 12, 6, spread=2.0)
    model = train_classifier(vectors, owner, 12)
    assert model is not None
    questions = unit(centres + 2.0 * rng.standard_normal(centres.shape) / np.sqrt(DIMENSION))  # unseen texts
    logs = np.array([model.log_probabilities(q) for q in questions])
    assert (logs.argmax(axis=1) == np.arange(12)).all()
    assert np.allclose(np.exp(logs).sum(axis=1), 1, atol=1e-3) and logs.min() >= FLOOR


def test_one_lucky_text_of_a_neighbour_does_not_outweigh_an_answers_direction():
    """Answer 0's texts all lie along one direction (cosine ~0.5 with the question); answer 1 has
    one stray text closer to it (~0.65). Nearest-text similarity picks 1; the classifier picks 0.
    (A stray at 0.8 or more wins the classifier too: it learns every text it is given.)"""
    rng = np.random.default_rng(3)
    centres, owner, vectors = clusters(rng, 12, 6, spread=1.0)
    question = unit(centres[0] + 1.0 * rng.standard_normal(DIMENSION) / np.sqrt(DIMENSION))
    stray = unit(question + rng.standard_normal(DIMENSION) / np.sqrt(DIMENSION))
    vectors, owner = np.vstack([vectors, stray]), np.append(owner, 1)
    assert owner[int(np.argmax(vectors @ question))] == 1
    model = train_classifier(vectors, owner, 12)
    assert model is not None and int(np.argmax(model.log_probabilities(question))) == 0


def test_no_classifier_for_a_handful_of_answers_or_over_the_work_budget():
    rng = np.random.default_rng(0)
    for answers, texts in ((1, 2), (MIN_ANSWERS - 1, 2), (200, MAX_WORK // 200 // 200 + 1)):
        _, owner, vectors = clusters(rng, answers, texts, spread=1.0)
        assert train_classifier(vectors, owner, answers) is None
    _, owner, vectors = clusters(rng, 200, MAX_WORK // 200 // 200, spread=1.0)
    assert train_classifier(vectors, owner, 200) is not None     # at the budget: trained
    assert uniform(4) == -np.log(4) and uniform(10**12) == FLOOR
