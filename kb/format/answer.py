"""The answer file format: YAML front matter, a Markdown body and the Python snippets in it.

Parsing never raises for bad content: every problem becomes a `FormatError` that names the file
and line, so one broken answer never stops the others from being served or checked.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import yaml

from .blocks import Fence, blocks
from .topics import BY_KEY as TOPICS

SLUG_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
SNIPPET_ATTRS = {"norun", "hide"}
REQUIRED = ("title", "summary")
LISTS = ("aliases", "tags", "related", "sources")
OPTIONAL = ("topic",)  # one of kb.format.topics; `kb lint` asks for it, the format allows it missing
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster, same safe subset
LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")
BOM = "\ufeff"
MAX_FILE_BYTES = 1 << 20  # an answer file above this is refused: the largest real one is ~30 KiB


def split_lines(text: str) -> list[str]:
    r"""The lines of a file as editors, Python and Markdown number them.

    Only \n, \r\n and \r end a line: `str.splitlines` also splits at form feeds, \x1c-\x1e,
    \x85 and \u2028/\u2029, which would shift every later line number and break a string
    literal that holds one of them.
    """
    lines = LINE_BREAK_RE.split(text)
    if lines[-1] == "":  # a final line break ends the last line; it does not start another
        lines.pop()
    return lines


def display_path(path: Path) -> str:
    """The path as a user types it: relative to the working directory when below it. Symbolic
    links are not followed: an error about a link names the link, never where it points."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class FormatError(Exception):
    """A problem in an answer file, reported as `path:line: message`."""

    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message = path, line, message


@dataclass(frozen=True)
class Snippet:
    """One ```python fence: `line` is the fence's line; the code starts on the next one."""

    index: int
    line: int
    code: str
    attrs: frozenset[str] = frozenset()

    @property
    def runs(self) -> bool:
        return "norun" not in self.attrs


@dataclass(frozen=True, slots=True)
class Answer:
    """One parsed answer file. Immutable: a reload makes new ones, so readers never see an edit half-applied."""

    slug: str
    path: str
    title: str
    summary: str
    body: str
    body_line: int
    snippets: tuple[Snippet, ...]
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    related: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    key_lines: Mapping[str, int] = field(default_factory=dict)
    topic: str | None = None

    @property
    def runnable(self) -> list[Snippet]:
        return [s for s in self.snippets if s.runs]


def parse_answer(path: str | os.PathLike[str], text: str | None = None) -> Answer:
    """Parse one answer file; raise `FormatError` on the first problem found."""
    path = Path(path)
    shown = display_path(path)
    slug = path.stem
    if not SLUG_RE.fullmatch(slug):
        raise FormatError(shown, 1, f"file name {slug!r} is not a slug: use lowercase words joined by '-'")
    if text is None:
        if os.path.dirname(os.path.realpath(path)) != os.path.realpath(path.parent):
            raise FormatError(shown, 1, "a symbolic link to a file outside its answers directory; refused "
                                        "(an answer file must be a real file in the directory)")
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise FormatError(shown, 1, f"the file is {size / 2**20:.1f} MiB; an answer file may be at most "
                                            f"{MAX_FILE_BYTES >> 20} MiB (split it, or move data out of it)")
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(shown, 1, f"not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise FormatError(shown, 1, f"cannot be read ({exc.strerror})") from None
    elif len(text) > MAX_FILE_BYTES:
        raise FormatError(shown, 1, f"the text is {len(text) / 2**20:.1f} MiB; an answer may be at most "
                                    f"{MAX_FILE_BYTES >> 20} MiB")
    lines = split_lines(text.removeprefix(BOM))  # editors on Windows may start a file with a BOM
    meta, key_lines, body_start = _front_matter(shown, lines)
    snippets = _snippets(shown, lines, body_start)
    return Answer(
        slug=slug, path=shown, body="\n".join(lines[body_start - 1:]), body_line=body_start,
        snippets=tuple(snippets), key_lines=MappingProxyType(key_lines), **meta,
    )


def _front_matter(shown: str, lines: list[str]) -> tuple[dict[str, Any], dict[str, int], int]:
    """Return (validated metadata, line of each key, first body line)."""
    if not lines or lines[0].strip() != "---":
        raise FormatError(shown, 1, "missing front matter: the file must start with a '---' line")
    try:
        # At the start of the line: an indented '---' is a line of a multi-line YAML value.
        end = next(i for i in range(1, len(lines)) if lines[i].rstrip() == "---")
    except StopIteration:
        raise FormatError(shown, 1, "front matter is not closed: add a '---' line after it") from None
    source = "\n".join(lines[1:end])
    try:
        loader = LOADER(source)  # a safe loader: plain data only
        try:  # parsed once: the node tree gives each key's line, the data is built from it
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 2 if mark else 2
        problem = getattr(exc, "problem", None) or str(exc)
        raise FormatError(shown, line, f"invalid YAML in front matter: {problem}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise FormatError(shown, 2, "invalid YAML in front matter: nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise FormatError(shown, 2, "front matter must be a mapping of keys to values")
    key_lines: dict[str, int] = {}
    for key_node, _ in node.value:
        key, line = str(key_node.value), key_node.start_mark.line + 2
        if key in key_lines:  # YAML would quietly keep the last value
            raise FormatError(shown, line, f"'{key}' is given twice (first on line {key_lines[key]})")
        key_lines[key] = line
    for key in data:  # keys brought in by a '<<' merge: report them at the merge
        key_lines.setdefault(str(key), key_lines.get("<<", 2))
    meta: dict[str, Any] = {}
    for key, value in data.items():
        line = key_lines.get(str(key), 2)
        if key in REQUIRED:
            if not isinstance(value, str) or not value.strip():
                raise FormatError(shown, line, f"'{key}' must be a non-empty string")
            meta[key] = " ".join(value.split())
        elif key in LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise FormatError(shown, line, f"'{key}' must be a list of non-empty strings")
            meta[key] = tuple(v.strip() for v in value)
        elif key == "topic":
            if not isinstance(value, str) or value not in TOPICS:
                raise FormatError(shown, line, f"'topic' must be one of: {', '.join(TOPICS)}")
            meta[key] = value
        else:
            allowed = ", ".join(REQUIRED + LISTS + OPTIONAL)
            raise FormatError(shown, line, f"unknown key '{key}' (allowed: {allowed})")
    for key in REQUIRED:
        if key not in meta:
            raise FormatError(shown, 1, f"missing required key '{key}' in front matter")
    for slug in meta.get("related", []):
        if not SLUG_RE.fullmatch(slug):
            raise FormatError(shown, key_lines["related"], f"related entry {slug!r} is not a slug")
    return meta, key_lines, end + 2


def _snippets(shown: str, lines: list[str], body_start: int) -> list[Snippet]:
    """The ```python fences of the body (top-level fences, as Markdown renders them)."""
    snippets: list[Snippet] = []
    for block in blocks(lines[body_start - 1:], body_start):
        if not isinstance(block, Fence):
            continue
        if not block.closed:
            raise FormatError(shown, block.line, f"code fence {block.fence}{block.info} is never closed")
        words = block.words
        if words and words[0] == "python":
            unknown = set(words[1:]) - SNIPPET_ATTRS
            if unknown:
                raise FormatError(shown, block.line, f"unknown snippet attribute {sorted(unknown)[0]!r} "
                                  f"(allowed: {', '.join(sorted(SNIPPET_ATTRS))})")
            snippets.append(Snippet(len(snippets), block.line, "\n".join(block.code), frozenset(words[1:])))
    return snippets


def answer_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and directories into the answer files they name (`*.md`), sorted. Names are
    listed and sorted as strings: globbing and sorting 10,000 `Path`s took 0.5 s."""
    found = []
    for path in map(Path, paths):
        found.extend([path / name for name in sorted(answer_names(path))] if path.is_dir() else [path])
    return found


def answer_names(folder: str | os.PathLike[str]) -> set[str]:
    """The names of the answer files in a folder."""
    return {name for name in os.listdir(folder) if name.endswith(".md")}


T = TypeVar("T")


class Remembered(Generic[T]):
    """`of(answer)` per slug, remembered while the same `Answer` object comes back: an `Answer`
    never changes, and a reload keeps the object of an unchanged file (`kb.library.Library`), so
    after an edit only the edited answer is worked on again (10,000 answers: ~0.5 s a pass)."""

    def __init__(self, of: Callable[[Answer], T]) -> None:
        self.of = of
        self._last: dict[str, tuple[Answer, T]] = {}

    def __call__(self, answers: Iterable[Answer]) -> dict[str, T]:
        """{slug: of(answer)} over these answers (only these are remembered)."""
        last, self._last = self._last, {}
        for answer in answers:
            hit = last.get(answer.slug)
            self._last[answer.slug] = hit if hit is not None and hit[0] is answer else (answer, self.of(answer))
        return {slug: value for slug, (_, value) in self._last.items()}


def load_answers(paths: Iterable[str | os.PathLike[str]], parse: Callable[[Path], Answer] = parse_answer,
                 ) -> tuple[dict[str, Answer], list[FormatError]]:
    """Parse every answer under `paths`; broken files become errors, the rest are returned.

    `related` slugs are checked against the answer files that sit beside each answer. `parse`
    may remember earlier results (the service re-parses only files that changed).
    """
    answers, errors, folders = {}, [], {}
    for path in answer_paths(paths):
        if not path.is_file():
            errors.append(FormatError(display_path(path), 0, "no such answer file"))
            continue
        try:
            answer = parse(path)
        except FormatError as exc:
            errors.append(exc)
            continue
        folder = os.path.dirname(path)     # a string: hashing a Path per answer costs more than parsing
        if folder not in folders:  # list each folder once, not once per answer
            folders[folder] = {name[:-3] for name in answer_names(folder or ".")}
        siblings = folders[folder]
        missing = [s for s in answer.related if s not in siblings or s == answer.slug]
        if missing:
            errors.append(FormatError(answer.path, answer.key_lines["related"],
                                      f"related slug {missing[0]!r} is not another answer in {display_path(path.parent)}{os.sep}"))
            continue
        answers[answer.slug] = answer
    return answers, errors
