"""The lookup evaluation set (`tests/lookup_eval/`): well formed, big enough, and not leaked.

The set measures look-up on questions the ranker was not tuned on, so these tests guard what
makes the measurement honest: the fixed dev/test split by source thread (no thread feeds both),
real sources, and no alias cut from a test-split thread.
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
from kb.search.evaluation import copied_from, near_duplicates, resplit, source_address, thread_of, words

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
    assert all(e.split == split_of(e.source) for e in entries)
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


def test_the_split_is_a_function_of_the_source_thread():
    base = "https://community.deeplearning.ai/t/why-average/1234"
    same = ["http://community.deeplearning.ai/t/why-average/1234/", "https://www.Community.DeepLearning.ai/t/why-average/1234",
            "https://community.deeplearning.ai/t/why-average/1234?u=someone#post_3"]
    assert {source_address(s) for s in [base, *same]} == {"community.deeplearning.ai/t/why-average/1234"}
    assert {split_of(s) for s in [base, *same]} == {split_of(base)}
    assert split_of("own") == "dev"
    assert source_address("https://example.org/Path/Case") == "example.org/Path/Case", "only the host is lower-cased"
    assert thread_of(f"{base}/7") == thread_of(base) == "community.deeplearning.ai/t/1234"
    assert thread_of("https://stats.stackexchange.com/questions/5/why-l2/42") == "stats.stackexchange.com/questions/5"


def test_no_thread_feeds_both_splits(entries):
    splits: dict[str, set[str]] = {}
    for e in entries:
        if e.real:
            splits.setdefault(thread_of(e.source), set()).add(e.split)
    both = sorted(thread for thread, seen in splits.items() if len(seen) > 1)
    assert not both, f"threads with questions in dev and in test (give a reply's thread as its source): {both}"


def test_no_test_question_is_an_alias(entries):
    answers, errors = load_answers([ROOT / "answers"])
    assert not errors
    aliases = {normalised(alias): a.slug for a in answers.values() for alias in a.aliases}
    leaked = [(e.question, aliases[normalised(e.question)]) for e in entries
              if e.split == "test" and normalised(e.question) in aliases]
    assert not leaked, f"test-split questions copied into aliases (tune on dev only): {leaked}"


def test_no_alias_is_cut_from_a_test_split_thread(entries):
    """Aliases may be cut from dev questions only: none is a cut of a question of a test-split
    thread, nor the reverse, nor a near-duplicate of one (`near_duplicates`)."""
    answers, _ = load_answers([ROOT / "answers"])
    test_threads = {thread_of(e.source) for e in entries if e.real and e.split == "test"}
    test = [e.question for e in entries if e.real and thread_of(e.source) in test_threads]
    cut = [words(q) for q in test]
    aliases = [(a.slug, alias) for a in answers.values() for alias in a.aliases]
    found = {(slug, alias) for slug, alias in aliases
             if copied_from(alias, cut) or any(f" {q} " in f" {words(alias)} " for q in cut)}
    near = {alias for alias, _ in near_duplicates([alias for _, alias in aliases], test)}
    found |= {(slug, alias) for slug, alias in aliases if alias in near}
    assert not found, f"aliases cut from test-split threads, or the reverse: {sorted(found)}"


def test_resplit_rewrites_only_the_split_lines(tmp_path):
    test_source = next(f"https://example.org/t/{n}" for n in range(100) if split_of(f"https://example.org/t/{n}") == "test")
    text = (f"- q: |-\n    first line\n\n      split: dev\n  source: {test_source}\n  split: dev\n"
            "- q: mine\n  source: own\n  split: test\n"
            f"- q: another\n  source: {test_source}/\n  split: test\n")
    (tmp_path / "out-of-scope.yaml").write_text(text, encoding="utf-8")
    assert resplit(tmp_path, write=False) == ["out-of-scope.yaml entry 1: dev -> test", "out-of-scope.yaml entry 2: test -> dev"]
    assert (tmp_path / "out-of-scope.yaml").read_text(encoding="utf-8") == text, "write=False changes nothing"
    resplit(tmp_path)
    assert (tmp_path / "out-of-scope.yaml").read_text(encoding="utf-8") == (
        text.replace("  split: dev\n- q: mine", "  split: test\n- q: mine").replace("own\n  split: test", "own\n  split: dev"))
    assert [e.split for e in load(tmp_path)] == ["test", "dev", "test"]
    assert resplit(tmp_path) == []


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
    wrong = "dev" if split_of("https://example.org/q") == "test" else "test"
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
        f"- q: {real}\n  source: https://example.org/t/1\n  split: {split_of('https://example.org/t/1')}\n"
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
