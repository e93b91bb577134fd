"""Bad input: property-based tests of the answer parser (hypothesis).

Whatever the front matter and the Markdown, `parse_answer` either returns an Answer or raises
`FormatError` with a `path:line: message` whose line is in the file; and answers generated to be
valid parse with every ```python fence found at its line, with its code and attributes.

Lines are counted as the parser counts them (`kb.format.answer.split_lines`: only \n, \r\n and
\r end a line, not the form feeds or U+2028 that `str.splitlines` also splits at); the typed text
of the valid answers leaves those rarer characters out, as editors do.
"""
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kb.format.answer import SLUG_RE, FormatError, display_path, parse_answer
from kb.format.blocks import FENCE_RE
from kb.render.markdown import render_answer
from kb.search.lookup import clean_body

# Hypothesis' default of 100 examples a property in `make test`; `--hypothesis-profile=thorough`
# (tests/conftest.py) tries 2,000 when the parser changes.
PROPERTY = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
KEYS = ["title", "summary", "aliases", "tags", "related", "sources"]
YAML_NOISE = ["---", "...", ":", ": ", "- ", "[", "]", "{", "}", ",", "&a", "*a", "!!str", "!tag", "? ", "|", ">",
              "'", '"', "#", "%YAML 1.2", "<<: ", "\t", "  ", "\\", "@", "`", "\x00", "\x85", "\ufeff", "é", "\n"]
MD_NOISE = ["```", "````", "~~~", "```python", "```python hide", "```python norun", "```python bogus", "~~~python",
            "```text", "$", "$$", "#", "> ", "    ", "<div>", "\\", "\t", "\r", "\r\n", "\n"]

# Text an author types: printable, no line breaks but "\n" (which the generators add themselves).
typed = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\x85\ufeff"),
                max_size=30)
multiline = st.lists(st.one_of(typed, st.just("---")), min_size=1, max_size=4).map("\n".join)  # YAML quotes it
noise = lambda tokens: st.lists(st.one_of(st.sampled_from(tokens), st.text(max_size=8)), max_size=25).map("".join)  # noqa: E731
slugs = st.from_regex(SLUG_RE, fullmatch=True).filter(lambda s: len(s) <= 40)
file_names = st.one_of(slugs, st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
                                      min_size=1, max_size=20).filter(lambda s: s not in (".", "..")))
yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), typed, st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


def assert_file_line_error(exc: FormatError, path: Path, text: str) -> None:
    assert isinstance(exc.line, int) and 0 <= exc.line <= len(text.splitlines()) + 1, (exc.line, str(exc))
    assert exc.path == display_path(path)
    assert exc.message and str(exc) == f"{exc.path}:{exc.line}: {exc.message}"


def parses_or_reports(path: Path, text: str):
    """Parse; anything but an Answer or a well-formed FormatError fails the property."""
    try:
        answer = parse_answer(path, text)
    except FormatError as exc:
        assert_file_line_error(exc, path, text)
        return None
    assert answer.title.strip() and answer.summary.strip()
    return answer


@st.composite
def front_matters(draw):
    """Front matter as a YAML dump of random keys and values, as raw noise, or a mix of both."""
    data = draw(st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), yaml_values, max_size=7))
    dumped = yaml.safe_dump(data, allow_unicode=draw(st.booleans()), default_flow_style=draw(st.booleans()))
    lines = dumped.splitlines()
    for _ in range(draw(st.integers(0, 3))):
        position = draw(st.integers(0, len(lines)))
        lines.insert(position, draw(noise(YAML_NOISE)))
    kind = draw(st.sampled_from(["dump", "noise", "mixed"]))
    return {"dump": dumped, "noise": draw(noise(YAML_NOISE)), "mixed": "\n".join(lines)}[kind]


@st.composite
def markdown_bodies(draw):
    lines = draw(st.lists(st.one_of(typed, noise(MD_NOISE)), max_size=30))
    return "\n".join(lines)


@given(name=file_names, text=st.text(max_size=400))
@PROPERTY
def test_any_text_parses_or_gives_a_file_line_error(name, text):
    parses_or_reports(Path("answers") / f"{name}.md", text)


@given(name=slugs, front=front_matters(), body=markdown_bodies(), opener=st.sampled_from(["---", "--- ", "---\t", " ---"]),
       closer=st.sampled_from(["---", "---  ", " ---", ""]), newline=st.sampled_from(["\n", "\r\n"]))
@PROPERTY
@example(name="deep", front="title: " + "[" * 3000, body="", opener="---", closer="---", newline="\n")
@example(name="deep-map", front="title: " + "{a: " * 3000, body="", opener="---", closer="---", newline="\n")
@example(name="merged", front='title: t\nsummary: s\n<<: {related: ["Not A Slug"]}', body="", opener="---",
         closer="---", newline="\n")
@example(name="tagged", front="title: !!python/object:os.system x\nsummary: s", body="", opener="---", closer="---",
         newline="\n")
@example(name="unhashable", front="? [a, b]\n: c", body="", opener="---", closer="---", newline="\n")
def test_random_front_matter_and_markdown_parse_or_give_a_file_line_error(name, front, body, opener, closer, newline):
    text = newline.join([opener, front, closer, body]) if closer else newline.join([opener, front, body])
    parses_or_reports(Path("answers") / f"{name}.md", text)


# Valid answers, built block by block, with the snippets they must parse into.

def one_line(text: str) -> str:
    """The first line of `text` by every line-break rule (`splitlines`, hence also "\\n")."""
    return (text.splitlines() or [""])[0]


def prose_line(text: str) -> bool:
    return FENCE_RE.match(text) is None


@st.composite
def fenced_blocks(draw, first_line: int):
    """(lines, snippet or None): one fence of random character, length, info and content."""
    char = draw(st.sampled_from("`~"))
    size = draw(st.integers(3, 6))
    opener = char * size
    kind = draw(st.sampled_from(["python", "python", "other", "none"]))
    attrs = []
    if kind == "python":
        attrs = draw(st.lists(st.sampled_from(["hide", "norun"]), unique=True, max_size=2))
        info = " ".join(["python", *attrs])
    elif kind == "other":
        info = draw(st.sampled_from(["text", "js", "python3", "pycon", "{.python}", "sh python", "~~~"]))
    else:
        info = ""
    if char == "`" and "`" in info:
        info = "text"
    gap = draw(st.sampled_from(["", " ", "\t", "  "][info.startswith(char):])) if info else ""
    head = opener + gap + info + draw(st.sampled_from(["", " ", "\t"]))

    def inside(line: str) -> bool:  # a content line must not close the fence
        match = FENCE_RE.match(line)
        return not (match and match["fence"][0] == char and len(match["fence"]) >= size and not match["info"])

    content = draw(st.lists(st.one_of(typed, noise(MD_NOISE).map(one_line),
                                      st.sampled_from(["```", "~~~", "````python", "```python", "~~~~", "  ```"])
                                      ).filter(inside), max_size=8))
    closer = char * draw(st.integers(size, size + 2)) + draw(st.sampled_from(["", " ", "\t "]))
    snippet = None
    if kind == "python":
        snippet = (first_line, "\n".join(content), frozenset(attrs))
    return [head, *content, closer], snippet


@st.composite
def valid_answers(draw):
    """(text, expected front matter, expected snippets as (line, code, attrs))."""
    meta = {"title": draw(typed.filter(str.strip)), "summary": draw(multiline.filter(str.strip))}
    for key in ("aliases", "tags", "sources"):
        if draw(st.booleans()):
            meta[key] = draw(st.lists(typed.filter(str.strip), max_size=3))
    if draw(st.booleans()):
        meta["related"] = draw(st.lists(slugs, max_size=3))
    keys = list(meta)
    order = draw(st.permutations(keys))
    dumped = yaml.safe_dump({k: meta[k] for k in order}, allow_unicode=False, default_flow_style=draw(st.booleans()),
                            width=draw(st.sampled_from([20, 80, 10**6])), sort_keys=False)
    lines = ["---", *dumped.splitlines(), "---"]
    snippets = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            lines.extend(draw(st.lists(typed.filter(prose_line), max_size=3)))
        else:
            block, snippet = draw(fenced_blocks(len(lines) + 1))
            lines.extend(block)
            if snippet:
                snippets.append(snippet)
    trailing = draw(st.sampled_from(["", "\n"]))
    return "\n".join(lines) + trailing, meta, snippets


MULTILINE = {"title": "Why?", "summary": "a\n---\nb"}  # dumped as a quoted value with an indented '---' line


@given(case=valid_answers())
@PROPERTY
@example(case=("---\n" + yaml.safe_dump(MULTILINE) + "---\n\n```python\nx = 1\n```\n", MULTILINE,
               [(len(yaml.safe_dump(MULTILINE).splitlines()) + 4, "x = 1", frozenset())]))
def test_valid_answers_parse_with_their_snippets_at_their_lines(case):
    text, meta, snippets = case
    answer = parse_answer(Path("answers") / "generated.md", text)
    assert answer.title == " ".join(meta["title"].split())
    assert answer.summary == " ".join(meta["summary"].split())
    for key in ("aliases", "tags", "sources", "related"):
        assert getattr(answer, key) == tuple(v.strip() for v in meta.get(key, []))
    lines = text.split("\n")
    assert [(s.line, s.code, s.attrs) for s in answer.snippets] == snippets
    assert [s.index for s in answer.snippets] == list(range(len(snippets)))
    for snippet in answer.snippets:
        assert lines[snippet.line - 1].lstrip("`~").strip().split()[0] == "python", "the fence line opens the snippet"
    assert answer.runnable == [s for s in answer.snippets if "norun" not in s.attrs]


@st.composite
def marked_answers(draw):
    """(text, markers): an answer whose every fence is followed by a paragraph of one marker word."""
    lines, markers = ["---", "title: Why?", "summary: Because.", "---"], []
    for number in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            lines.extend(draw(st.lists(typed.filter(prose_line), max_size=3)))
        block, _ = draw(fenced_blocks(len(lines) + 1))
        markers.append(f"afterfence{'abcdefgh'[number]}marker")
        lines.extend([*block, "", markers[-1], ""])
    return "\n".join(lines), markers


@given(case=marked_answers())
@PROPERTY
def test_parser_renderer_and_index_agree_on_every_fence(case):
    """The three readers of a body share one lexer: the same snippets, and the prose after every
    fence (closed by a fence as long or longer) is both shown and searchable."""
    text, markers = case
    answer = parse_answer(Path("answers") / "generated.md", text)
    parts = render_answer(answer).parts
    slots = [value for kind, value in parts if kind == "snippet"]
    assert slots == [s.index for s in answer.snippets], "one evidence slot per snippet, in order"
    shown = "".join(value for kind, value in parts if kind == "html")
    searchable = clean_body(answer.body)
    for marker in markers:
        assert marker in shown and marker in searchable
