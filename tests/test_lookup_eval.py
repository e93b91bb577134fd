"""The lookup evaluation set (`tests/lookup_eval/`): well formed, big enough, and not leaked.

The set measures look-up on questions the ranker was not tuned on, so these tests guard what
makes the measurement honest: the fixed dev/test split, real sources, and no test question
copied into an answer's aliases.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import lookup_eval
import pytest
from lookup_cases import CASES
from lookup_eval import EvalSetError, load, split_of

from kb.format.answer import load_answers
from kb.search import evaluation
from kb.search.evaluation import copied_from, near_duplicates, words

ROOT = Path(__file__).resolve().parent.parent
MIN_REAL_IN_SCOPE = 300  # issue 9: at least 300 real learner phrasings (377 as merged)
MIN_REAL_OUT_OF_SCOPE = 30
MIN_REAL_PER_ANSWER = 3  # every answer is covered; course-3 questions are rarely asked in public


def normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


@pytest.fixture(scope="module")
def entries():
    return load()


def test_every_entry_is_valid(entries):
    assert entries, "the evaluation set is empty"
    assert all(e.split == split_of(e.question, e.source) for e in entries)
    assert not [e for e in entries if not e.real and e.split == "test"], "an own phrasing is in test"


def test_the_set_is_big_enough(entries):
    in_scope = [e for e in entries if e.real and e.slug]
    out_of_scope = [e for e in entries if e.real and e.slug is None]
    assert len(in_scope) >= MIN_REAL_IN_SCOPE, f"{len(in_scope)} real in-scope phrasings"
    assert len(out_of_scope) >= MIN_REAL_OUT_OF_SCOPE, f"{len(out_of_scope)} real out-of-scope questions"
    for group in (in_scope, out_of_scope):
        assert {e.split for e in group} == {"dev", "test"}, "both splits need questions to tune and to report"


def test_every_answer_has_real_phrasings(entries):
    per_slug = Counter(e.slug for e in entries if e.real and e.slug)
    thin = {p.stem: per_slug[p.stem] for p in (ROOT / "answers").glob("*.md")
            if per_slug[p.stem] < MIN_REAL_PER_ANSWER}
    assert not thin, f"answers with fewer than {MIN_REAL_PER_ANSWER} real phrasings: {thin}"


# Aliases that are a cut of a test question, or the reverse, as merged: the pooling one was cut from a dev
# quiz entry that a test post also quotes (code review L10); the other two are generic phrasings that
# happen to open a test post. Answers are the content team's: the lead removes the pooling alias. Until
# then the test figures leave these aliases out (`kb.search.fit.plain` drops every alias that
# near-duplicates a test question), so no test question meets its copy.
KNOWN_CUTS = {
    ("pooling-has-no-parameters", "Because pooling layers do not have parameters, they do not affect the backpropagation"),
    ("relu-vs-sigmoid", "What is the dying ReLU problem?"),
    ("mini-batch-gradient-descent", "What is an epoch in mini-batch gradient descent?"),
}


def test_no_test_question_is_an_alias(entries):
    answers, errors = load_answers([ROOT / "answers"])
    assert not errors
    aliases = {normalised(alias): a.slug for a in answers.values() for alias in a.aliases}
    leaked = [(e.question, aliases[normalised(e.question)]) for e in entries
              if e.split == "test" and normalised(e.question) in aliases]
    assert not leaked, f"test-split questions copied into aliases (tune on dev only): {leaked}"


def test_no_alias_is_cut_from_a_test_question_nor_the_reverse(entries):
    answers, _ = load_answers([ROOT / "answers"])
    test = [e.question for e in entries if e.split == "test"]
    cut = [words(q) for q in test]
    found = {(a.slug, alias) for a in answers.values() for alias in a.aliases
             if copied_from(alias, cut) or any(f" {q} " in f" {words(alias)} " for q in cut)}
    unknown = {(slug, alias) for slug, alias in found
               if not any(slug == s and alias.startswith(start) for s, start in KNOWN_CUTS)}
    assert not unknown, f"aliases cut from test questions, or test questions cut from aliases: {unknown}"


def test_near_duplicates_are_found_both_ways_and_kept_out_of_the_test_figures(entries):
    dev_post = "Because pooling layers do not have parameters, they do not affect the backpropagation calculation."
    test_post = ("The Basics of ConvNets, Quiz, Question 8: Because pooling layers do not have parameters, they do "
                 "not affect the backpropagation calculation. I answered True, why is it False?")
    assert near_duplicates([test_post], [dev_post]) == [(test_post, dev_post)]
    assert near_duplicates([dev_post], [test_post]) == [(dev_post, test_post)]
    assert near_duplicates(["What is an epoch?"], ["Why is ReLU better than sigmoid?"]) == []
    dev = [e.question for e in entries if e.split == "dev"]
    test = [e.question for e in entries if e.split == "test"]
    copies = {t for t, _ in near_duplicates(test, dev)}
    assert copies, "the set holds posts copied into both splits (measured: 7); the check must see them"
    reported = {q for q, _ in evaluation.entries("test")}
    assert not copies & reported, "a test question that near-duplicates a dev one is reported"


def test_load_rejects_a_malformed_set(tmp_path):
    question = "Why does my cost become nan?"
    wrong = "dev" if split_of(question, "https://example.org/q") == "test" else "test"
    (tmp_path / "gradient-averaging.yaml").write_text(
        f"- q: {question}\n  source: https://example.org/q\n  split: {wrong}\n"
        "- q: Mine, written here\n  source: own\n  split: test\n"
        "- q: Copied without an address\n  source: a forum\n  split: dev\n"
        "- q: averaging gradients\n  source: own\n  split: dev\n", encoding="utf-8")
    (tmp_path / "no-such-answer.yaml").write_text("- q: x\n  source: own\n  split: dev\n", encoding="utf-8")
    (tmp_path / "out-of-scope.yaml").write_text(
        "- q: Averaging   GRADIENTS\n  source: own\n  split: dev\n", encoding="utf-8")
    with pytest.raises(EvalSetError) as caught:
        load(tmp_path)
    message = str(caught.value)
    assert "gradient-averaging.yaml entry 1: split is" in message
    assert "gradient-averaging.yaml entry 2: split is 'test' but the rule gives 'dev'" in message
    assert "gradient-averaging.yaml entry 3: source must be" in message
    assert "no-such-answer.yaml: no answer 'no-such-answer'" in message
    assert "out-of-scope.yaml entry 1: the same question is already gradient-averaging.yaml entry 4" in message


def test_load_returns_records_and_filters_by_split(tmp_path):
    real = "How do I pick a mini-batch size?"
    (tmp_path / "mini-batch-gradient-descent.yaml").write_text(
        f"- q: {real}\n  source: https://example.org/t/1\n  split: {split_of(real, 'x')}\n"
        "- q: batch size, what to choose\n  source: own\n  split: dev\n", encoding="utf-8")
    (tmp_path / "out-of-scope.yaml").write_text(
        "- q: How do I get my certificate?\n  source: own\n  split: dev\n", encoding="utf-8")
    everything = load(tmp_path)
    assert [(e.slug, e.real) for e in everything] == [
        ("mini-batch-gradient-descent", True), ("mini-batch-gradient-descent", False), (None, False)]
    assert all(e.split == "dev" for e in load(tmp_path, split="dev"))
    assert {e.slug for e in load(tmp_path, split="test")} <= {"mini-batch-gradient-descent"}
    assert lookup_eval.NEW_SLUGS <= lookup_eval.known_slugs(ROOT / "answers")


# --- the project's own phrasings (tests/lookup_cases.py, dev split only) -------------------------

CORE_SLUGS = ("gradient-averaging", "relu-vs-sigmoid", "tanh-vs-sigmoid")


def test_own_phrasings_are_well_formed():
    phrasings = [normalised(q) for q, _ in CASES]
    assert len(phrasings) == len(set(phrasings)), "a phrasing is listed twice"
    for slug in CORE_SLUGS:
        assert sum(s == slug for _, s in CASES) >= 12, f"fewer than 12 phrasings for {slug}"
    for _, slug in CASES:
        assert (ROOT / "answers" / f"{slug}.md").is_file(), f"no answers/{slug}.md"


def test_no_own_phrasing_copies_a_title_or_alias():
    answers, _ = load_answers([ROOT / "answers"])
    questions = {normalised(q): a.slug for a in answers.values() for q in [a.title, *a.aliases]}
    copied = [(q, questions[normalised(q)]) for q, _ in CASES if normalised(q) in questions]
    assert not copied, f"phrasings copied from an answer's title or aliases: {copied}"
