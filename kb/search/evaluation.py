"""The lookup evaluation set: learners' real questions and the answer each should find first.

The data is `tests/lookup_eval/` of the project's checkout (`KB_EVAL_DIR` points elsewhere):
one YAML file per expected answer (`<slug>.yaml`) plus `out-of-scope.yaml`, whose questions the
knowledge base does not answer. Each entry is `{q, source, split}`; the split is fixed by a hash
of the question (see `split_of`), so nobody can move a question between dev and test. Tune on
dev, report test. `load()` returns every entry as an `Entry` and refuses a malformed set;
`entries(split)` is what the fit (`kb.search.fit`), the benchmarks and the tests read: the split's
(question, slug) pairs, dev with the project's own phrasings (`tests/lookup_cases.py`).
Format, sources and how to add entries: tests/lookup_eval/README.md.
"""
from __future__ import annotations

import hashlib
import os
import re
import runpy
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]   # the project's checkout (the set is not installed with the package)
HERE = Path(os.environ.get("KB_EVAL_DIR") or ROOT / "tests" / "lookup_eval")
ANSWERS = ROOT / "answers"
OWN_CASES = ROOT / "tests" / "lookup_cases.py"
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
    slugs, entries, problems = known_slugs(answers_dir), [], []
    seen: dict[str, str] = {}
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


def own_cases(path: Path = OWN_CASES) -> list[tuple[str, str]]:
    """The project's own phrasings (dev only), read from `tests/lookup_cases.py` without importing it."""
    if not Path(path).is_file():
        return []
    cases: list[tuple[str, str]] = runpy.run_path(str(path))["CASES"]
    return cases


def entries(split: str, directory: Path = HERE, answers_dir: Path = ANSWERS) -> list[tuple[str, str | None]]:
    """The split's (question, expected slug or None); dev includes the own phrasings. Only
    answers that exist count. Test leaves out its questions that near-duplicate a dev question
    (`leaked`): the same post copied from two pages would otherwise be tuned on and reported."""
    answers = {p.stem for p in Path(answers_dir).glob("*.md")}
    out: list[tuple[str, str | None]] = []
    if (Path(directory) / f"{OUT_OF_SCOPE}.yaml").is_file():
        out += [(e.question, e.slug) for e in load(directory, answers_dir, split=split)
                if e.slug is None or e.slug in answers]
    if split == "dev":
        out += [(q, slug) for q, slug in own_cases() if slug in answers]
    if split == "test":
        dropped = leaked(Path(directory), Path(answers_dir))
        out = [(q, slug) for q, slug in out if q not in dropped]
    return out


_LEAKED: dict[tuple[Path, Path], frozenset[str]] = {}


def leaked(directory: Path = HERE, answers_dir: Path = ANSWERS) -> frozenset[str]:
    """The test questions that near-duplicate a dev question (`near_duplicates`), once per set."""
    key = (Path(directory).resolve(), Path(answers_dir).resolve())
    if key not in _LEAKED:
        everything = load(directory, answers_dir) if (Path(directory) / f"{OUT_OF_SCOPE}.yaml").is_file() else []
        dev = [e.question for e in everything if e.split == "dev"] + [q for q, _ in own_cases()]
        test = [e.question for e in everything if e.split == "test"]
        _LEAKED[key] = frozenset(a for a, _ in near_duplicates(test, dev))
    return _LEAKED[key]


def dev_hash(dev: list[tuple[str, str | None]]) -> str:
    """A digest of the dev split as the fit read it: the weights file records it."""
    h = hashlib.sha256()
    for question, slug in sorted(dev, key=lambda e: (e[0], e[1] or "")):
        h.update(f"{question}\0{slug or ''}\n".encode())
    return h.hexdigest()


def words(text: str) -> str:
    """The text's words, lowercased, one space apart (what near-duplicate checks compare)."""
    return " ".join(re.findall(r"\w+", text.lower()))


def copied_from(alias: str, questions: list[str]) -> bool:
    """Whether the alias is a cut of one of the questions (its words, in a row, inside it);
    `questions` as `words` gives them."""
    cut = f" {words(alias)} "
    return cut.strip() != "" and any(cut in f" {q} " for q in questions)


def shingles(text: str, n: int = 4) -> set[str]:
    w = words(text).split()
    return {" ".join(w[i:i + n]) for i in range(max(len(w) - n + 1, 1))} if w else set()


def near_duplicates(first: list[str], second: list[str], share: float = 0.5) -> list[tuple[str, str]]:
    """Pairs (a, b) with a in `first`, b in `second` where one is a cut of the other, or where half
    (`share`) of the shorter one's runs of four words are in the other."""
    cut = [words(b) for b in second]
    prints = [shingles(b) for b in second]
    postings: dict[str, list[int]] = {}
    for j, sb in enumerate(prints):
        for shingle in sb:
            postings.setdefault(shingle, []).append(j)
    short = [j for j, wb in enumerate(cut) if 0 < len(wb.split()) < 4]  # no run of four words: compare whole
    found = []
    for a in first:
        wa, sa = words(a), shingles(a)
        if not wa:
            continue
        shared: dict[int, int] = {}
        for shingle in sa:
            for j in postings.get(shingle, ()):
                shared[j] = shared.get(j, 0) + 1
        candidates = set(shared) | set(short) | (set(range(len(second))) if len(wa.split()) < 4 else set())
        for j in sorted(candidates):
            wb = cut[j]
            if not wb:
                continue
            if (f" {wa} " in f" {wb} " or f" {wb} " in f" {wa} "
                    or shared.get(j, 0) >= share * min(len(sa), len(prints[j]))):
                found.append((a, second[j]))
    return found
