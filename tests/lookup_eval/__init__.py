"""The lookup evaluation set: learners' real questions and the answer each should find first.

One YAML file per expected answer (`<slug>.yaml`) plus `out-of-scope.yaml`, whose questions the
knowledge base does not answer. Each entry is `{q, source, split}`; the split is fixed by a hash
of the question (see `split_of`), so nobody can move a question between dev and test. Tune on
dev, report test. `load()` returns every entry as an `Entry` and refuses a malformed set.
Format, sources and how to add entries: README.md beside this file.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ANSWERS = HERE.parents[1] / "answers"
OUT_OF_SCOPE = "out-of-scope"
# Answers being written in other branches: their phrasings may land before their answer files.
NEW_SLUGS: frozenset[str] = frozenset()
SPLITS = ("dev", "test")
KEYS = {"q", "source", "split"}
_URL = re.compile(r"https?://\S+")


class EvalSetError(ValueError):
    """The evaluation set breaks its format; the message lists every problem found."""


@dataclass(frozen=True)
class Entry:
    question: str
    slug: str | None  # the answer that should come first; None when no answer should
    source: str  # the public page the question was copied from, or "own"
    split: str  # "dev" or "test"
    file: str  # the eval file it came from

    @property
    def real(self) -> bool:
        """Copied from a learner's post (own phrasings are ours, and never in test)."""
        return self.source != "own"


def split_of(question: str, source: str) -> str:
    """The fixed split: test when sha256 of the stripped question starts with 0-7, else dev."""
    if source == "own":
        return "dev"
    return "test" if hashlib.sha256(question.strip().encode("utf-8")).hexdigest()[0] in "01234567" else "dev"


def known_slugs(answers_dir: Path = ANSWERS) -> set[str]:
    """Slugs an eval file may be named after: the answer files, and the answers on their way."""
    return {p.stem for p in Path(answers_dir).glob("*.md")} | NEW_SLUGS


def load(directory: Path = HERE, answers_dir: Path = ANSWERS, split: str | None = None) -> list[Entry]:
    """Every entry of the set (or of one split), in file order; EvalSetError if any is malformed."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    slugs, entries, problems, seen = known_slugs(answers_dir), [], [], {}
    for path in sorted(Path(directory).glob("*.yaml")):
        stem = path.stem
        if stem != OUT_OF_SCOPE and stem not in slugs:
            problems.append(f"{path.name}: no answer {stem!r} in answers/ (nor listed in NEW_SLUGS)")
            continue
        try:
            items = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            problems.append(f"{path.name}: not valid YAML: {exc}")
            continue
        if not isinstance(items, list) or not items:
            problems.append(f"{path.name}: must be a non-empty list of entries")
            continue
        for number, item in enumerate(items, 1):
            where = f"{path.name} entry {number}"
            if not isinstance(item, dict) or set(item) != KEYS:
                problems.append(f"{where}: needs exactly the keys {sorted(KEYS)}")
                continue
            question, source, chosen = item["q"], item["source"], item["split"]
            if not isinstance(question, str) or not question.strip():
                problems.append(f"{where}: q must be a non-empty string")
                continue
            if source != "own" and not (isinstance(source, str) and _URL.fullmatch(source)):
                problems.append(f"{where}: source must be the page's address or 'own', not {source!r}")
                continue
            if chosen != split_of(question, source):
                problems.append(f"{where}: split is {chosen!r} but the rule gives {split_of(question, source)!r}")
                continue
            key = " ".join(question.casefold().split())
            if key in seen:
                problems.append(f"{where}: the same question is already {seen[key]}")
                continue
            seen[key] = where
            entry = Entry(question.strip(), None if stem == OUT_OF_SCOPE else stem, source, chosen, path.name)
            if split is None or entry.split == split:
                entries.append(entry)
    if problems:
        raise EvalSetError("lookup evaluation set:\n  " + "\n  ".join(problems))
    return entries
