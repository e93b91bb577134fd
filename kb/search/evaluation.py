"""The lookup evaluation set: learners' real questions and the answer each should find first.

The data is `tests/lookup_eval/` of the project's checkout (`KB_EVAL_DIR` points elsewhere):
one YAML file per expected answer (`<slug>.yaml`) plus `out-of-scope.yaml`, whose questions the
knowledge base does not answer. Each entry is `{q, source, split}`; the split is fixed by a hash
of the source thread's address (see `split_of`), so nobody can move a question between dev and
test, and the questions of one thread all land in the same split. Tune on dev, report test. `load()` returns every entry as an `Entry` and refuses a malformed set;
`entries(split)` is what the fit (`kb.search.fit`), the benchmarks and the tests read: the split's
(question, slug) pairs, dev with the project's own phrasings (`tests/lookup_cases.py`).
Format, sources and how to add entries: tests/lookup_eval/README.md.

    python -m kb.search.evaluation --resplit   # rewrite every entry's `split:` by the rule
    python -m kb.search.evaluation --check     # list the entries whose `split:` the rule contradicts
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import runpy
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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
# An entry's `split:` line as the files write it (the list item's own key, never a line of `q`).
SPLIT_LINE = re.compile(r"^(- |  )split:[ \t]*(\S*)[ \t]*$")
# The same thread under two addresses: a Discourse topic with a post number
# (/t/<slug>/<id>/<post>), a Stack Exchange question with an answer's id or another slug.
DISCOURSE_RE = re.compile(r"^([^/]+)/t/(?:[^/]+/)?(\d+)(?:/\d+)?$")
STACK_EXCHANGE_RE = re.compile(r"^([^/]+)/(?:q|questions)/(\d+)(?:/.*)?$")


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


def source_address(source: str) -> str:
    """The source page's address, normalised: scheme, `www.`, query and fragment dropped, no
    trailing slash, host lower-cased (`https://www.Example.org/t/x/1/?u=2#p3` -> `example.org/t/x/1`)."""
    parts = urlsplit(source.strip())
    host = parts.netloc.lower()
    host = host[4:] if host.startswith("www.") else host
    return host + parts.path.rstrip("/")


def split_of(source: str) -> str:
    """The fixed split, by source thread: `own` is dev; otherwise test when sha256 of the
    normalised address (`source_address`) starts with a hex digit 0-7, else dev. All the questions
    cut from one thread land in one split, so no thread feeds both."""
    if source == "own":
        return "dev"
    return "test" if hashlib.sha256(source_address(source).encode("utf-8")).hexdigest()[0] in "01234567" else "dev"


def thread_of(source: str) -> str:
    """The thread a source page belongs to, for the leak check: its normalised address, with a
    Discourse post number or a Stack Exchange answer's id and slug dropped. (The split hashes the
    address itself: give a reply's thread as its source, not the reply's own link.)"""
    address = source_address(source)
    for pattern, form in ((DISCOURSE_RE, "{}/t/{}"), (STACK_EXCHANGE_RE, "{}/questions/{}")):
        match = pattern.match(address)
        if match:
            return form.format(*match.groups())
    return address


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
            if chosen != split_of(source):
                problems.append(f"{where}: split is {chosen!r} but the rule gives {split_of(source)!r} "
                                "(python -m kb.search.evaluation --resplit)")
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


def threads(directory: Path = HERE, answers_dir: Path = ANSWERS) -> dict[str, str]:
    """Each real question's thread (`thread_of` its source): the fit's folds keep a thread together."""
    if not (Path(directory) / f"{OUT_OF_SCOPE}.yaml").is_file():
        return {}
    return {e.question: thread_of(e.source) for e in load(directory, answers_dir) if e.real}


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


def resplit(directory: Path = HERE, write: bool = True) -> list[str]:
    """Set every entry's `split:` to what `split_of` gives (after a rule change, or for new
    entries), editing only those lines; return `file entry N: old -> new` for each change."""
    changes = []
    for path in sorted(Path(directory).glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        items = yaml.safe_load(text)
        lines = text.splitlines(keepends=True)
        at = [i for i, line in enumerate(lines) if SPLIT_LINE.match(line.rstrip("\r\n"))]
        if not isinstance(items, list) or len(at) != len(items) or not all(isinstance(x, dict) for x in items):
            raise EvalSetError(f"{path.name}: cannot find one `split:` line per entry; fix the file by hand")
        for number, (i, item) in enumerate(zip(at, items, strict=True), 1):
            wanted = split_of(str(item.get("source", "")))
            line = lines[i]
            match = SPLIT_LINE.match(line.rstrip("\r\n"))
            assert match is not None
            if match[2] != wanted:
                changes.append(f"{path.name} entry {number}: {match[2]} -> {wanted}")
                lines[i] = f"{match[1]}split: {wanted}{line[len(line.rstrip(chr(13) + chr(10))):]}"
        new = "".join(lines)
        if write and new != text:
            rewritten = yaml.safe_load(new)
            assert [{**x, "split": None} for x in rewritten] == [{**x, "split": None} for x in items]
            path.write_text(new, encoding="utf-8")
    return changes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kb.search.evaluation",
                                     description="The lookup evaluation set: check it, or rewrite its splits by the rule.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--resplit", action="store_true", help="rewrite every entry's `split:` by the rule (split_of)")
    action.add_argument("--check", action="store_true", help="list the entries whose `split:` the rule contradicts")
    parser.add_argument("--dir", default=str(HERE), help="the set's directory (default: %(default)s)")
    args = parser.parse_args(argv)
    changes = resplit(Path(args.dir), write=args.resplit)
    for change in changes:
        print(change)
    print(f"{len(changes)} split(s) {'rewritten' if args.resplit else 'contradict the rule'}", file=sys.stderr)
    return 1 if args.check and changes else 0


if __name__ == "__main__":
    raise SystemExit(main())
