"""The one fence lexer: splits a Markdown body into prose and fenced code blocks.

The parser (which fences are snippets), the renderer (which become evidence slots) and the
search index (which words are prose) must agree on where every fence starts and ends, or an
answer renders one way and is searched another. So they all read the body through `blocks`.

The rules are CommonMark's for top-level fences: a fence opens with three or more backticks or
tildes, optionally followed by an info string, and closes with a line of the same character, at
least as long, with nothing after it. An unclosed fence runs to the end of the document
(`Fence.closed` is False: the parser reports it; the renderer shows it as code).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

FENCE_RE = re.compile(r"^(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")


@dataclass(frozen=True, slots=True)
class Prose:
    """Lines outside any fence; `line` is the number of the first one."""

    line: int
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Fence:
    """A fenced block; `line` is the opening fence's number, `code` the lines between the fences."""

    line: int
    fence: str
    info: str
    code: tuple[str, ...]
    closed: bool

    @property
    def words(self) -> list[str]:
        return self.info.split()

    @property
    def language(self) -> str:
        """The info string's first word when it names a language, else ''."""
        words = self.words
        return words[0] if words and re.fullmatch(r"[\w#.+-]+", words[0]) else ""


Block = Prose | Fence


def _closes(line: str, fence: str) -> bool:
    match = FENCE_RE.match(line)
    return bool(match and not match["info"] and match["fence"][0] == fence[0]
                and len(match["fence"]) >= len(fence))


def blocks(lines: list[str], first_line: int = 1) -> Iterator[Block]:
    """Yield the prose runs and fences of `lines` in order; `first_line` numbers `lines[0]`."""
    prose_start, i = 0, 0
    while i < len(lines):
        opening = FENCE_RE.match(lines[i])
        if not opening:
            i += 1
            continue
        if i > prose_start:
            yield Prose(first_line + prose_start, tuple(lines[prose_start:i]))
        end = i + 1
        while end < len(lines) and not _closes(lines[end], opening["fence"]):
            end += 1
        yield Fence(first_line + i, opening["fence"], opening["info"], tuple(lines[i + 1:end]), end < len(lines))
        i = prose_start = end + 1
    if prose_start < len(lines):
        yield Prose(first_line + prose_start, tuple(lines[prose_start:]))
