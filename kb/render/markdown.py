"""Answer bodies to HTML: Markdown, server-side MathML and highlighted code, safe under a strict CSP.

The pipeline, and why each step is there:

1. Top-level fences are found exactly as `kb.format.answer` finds them, so the i-th ```python fence is
   `answer.snippets[i]`; it becomes a slot the caller fills with the code and its evidence.
2. Math (`$…$`, `$$…$$`) and `\\$` are replaced by alphanumeric tokens, so Markdown cannot turn
   `_` or `*` inside a formula into emphasis.
3. Markdown runs with its raw-HTML handling removed (HTML in an answer is shown as text), and
   nh3 sanitises the result (no scripts, event handlers, `javascript:` URLs or `style`).
4. The tokens are replaced by MathML (`kb.render.mathml`), in text; in code and in attribute
   values by the formula's source.
"""
from __future__ import annotations

import functools
import html
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import markdown
import nh3
from markdown.extensions.toc import TocExtension, slugify
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from kb.format.answer import Answer, split_lines
from kb.format.blocks import Prose, blocks

from .mathml import to_mathml

LIGHT_STYLE, DARK_STYLE = "default", "github-dark"


class Html(NamedTuple):
    """Rendered prose between snippets (sanitised HTML)."""

    kind: Literal["html"]
    html: str


class Slot(NamedTuple):
    """Where `answer.snippets[index]` goes: the caller fills in its code and evidence."""

    kind: Literal["snippet"]
    snippet: int


Part = Html | Slot


@dataclass(frozen=True, slots=True)
class Rendered:
    parts: tuple[Part, ...]  # in document order; a part unpacks as (kind, value) too
    toc: str                 # the toc extension's HTML, "" when there are no headings


def render_answer(answer: Answer) -> Rendered:
    """Render `answer.body`; each ```python fence becomes a `Slot`."""
    doc = _Doc()
    body, toc = doc.render(answer.body, snippets=True)
    body = fold_deep_dives(body)
    pieces = re.split("<p>" + doc.token("s", r"(\d+)") + "</p>", body)
    parts: list[Part] = []
    for i, piece in enumerate(pieces):
        if i % 2:
            parts.append(Slot("snippet", int(piece)))
        elif piece.strip():
            parts.append(Html("html", piece.strip()))
    return Rendered(tuple(parts), toc)


_H2_RE = re.compile(r"<h2[ >].*?</h2>", re.S)
DEEP_DIVE = "Deep dive"  # a section whose heading starts so is optional reading: shown folded


def fold_deep_dives(body: str) -> str:
    """Fold each "## Deep dive …" section (up to the next h2) into a closed <details>.

    Long answers keep the short path first and put secondary material in such sections at the
    end; the learner opens them on demand. The heading stays an h2 with its id, so the contents
    and permalinks still reach it (browsers open a <details> to show a fragment inside it).
    """
    out, position, folded = [], 0, False
    for heading in _H2_RE.finditer(body):
        out.append(body[position:heading.start()])
        if folded:
            out.append("</details>\n")
        folded = re.sub(r"<[^>]+>", "", heading[0]).startswith(DEEP_DIVE)
        out.append(f'<details class="deep-dive"><summary>{heading[0]}</summary>' if folded else heading[0])
        position = heading.end()
    out.append(body[position:])
    if folded:
        out.append("\n</details>")
    return "".join(out)


def render_markdown(text: str) -> str:
    """Render a Markdown fragment (a summary, a page's intro); python fences are plain code here."""
    return _Doc().render(text, snippets=False)[0]


_BLOCK_START = re.compile(r"#{1,6}(?=\s|$)|>|[*+-](?=\s|$)|(?:[*_-][ \t]*){3,}$|\[[^\]]*\]:|[`~]{3}")


@functools.lru_cache(maxsize=8192)  # a page repeats its claims; every page renders the titles it links
def render_inline(text: str) -> str:
    """Render one line (a title, a check's claim) with its math and emphasis, without a <p>.

    A line that Markdown would read as a block (`# …`, `- …`, `1. …`, `[x]: …`) is escaped so
    it stays a line of text.
    """
    line = " ".join(text.split())
    if _BLOCK_START.match(line):
        line = "\\" + line
    line = re.sub(r"^(\d+)\.(?=\s|$)", r"\1\\.", line)
    out = render_markdown(line).strip()
    match = re.fullmatch(r"<p>(.*)</p>", out, re.S)
    inner: str = match[1] if match else out
    return inner


@functools.lru_cache(maxsize=2048)  # the page and the API highlight the same snippets (~5 ms each)
def highlight_python(code: str) -> str:
    """Pygments HTML for a snippet, with the same classes as the fences Markdown highlights."""
    highlighted: str = highlight(code, PythonLexer(), HtmlFormatter(cssclass="highlight", wrapcode=True))  # Pygments is untyped
    return highlighted


@functools.lru_cache(maxsize=1)  # the same text for every request and for its version (service/assets.py)
def pygments_css() -> str:
    """CSS for `.highlight`: a light theme, and a dark one for `prefers-color-scheme: dark`.

    The dark block first resets every token class the light theme styles, so no light-theme
    colour, weight or border is left where the dark theme says nothing.
    """
    light, dark = (HtmlFormatter(style=s, cssclass="highlight") for s in (LIGHT_STYLE, DARK_STYLE))
    light_tokens = light.get_token_style_defs(".highlight")
    reset = (",\n  ".join(rule.split(" {")[0] for rule in light_tokens)
             + " { color: inherit; background-color: transparent; font-weight: inherit;"
             " font-style: inherit; text-decoration: inherit; border: none }")
    dark_rules = [reset, *dark.get_background_style_defs(".highlight"), *dark.get_token_style_defs(".highlight")]
    return "\n".join([*light.get_background_style_defs(".highlight"), *light_tokens,
                      "@media (prefers-color-scheme: dark) {", *("  " + r for r in dark_rules), "}", ""])


_SVG_TAG = re.compile(r"<svg\b[^>]*>", re.S)
_PX_PER = {"": 1, "px": 1, "pt": 4 / 3, "in": 96, "cm": 96 / 2.54, "mm": 96 / 25.4}


def figure_size(svg: str) -> tuple[int, int] | None:
    """The figure's size in CSS pixels from its <svg> width/height (or viewBox), for the <img>'s
    width and height attributes: the browser reserves the space and the page does not jump."""
    tag = _SVG_TAG.search(svg[:4096])
    if not tag:
        return None
    size = []
    for name in ("width", "height"):
        m = re.search(rf'\s{name}="([\d.]+)(px|pt|in|cm|mm)?"', tag[0])
        if not m:
            break
        size.append(round(float(m[1]) * _PX_PER[m[2] or ""]))
    if len(size) < 2:
        box = re.search(r'\sviewBox="[-\d.]+[\s,]+[-\d.]+[\s,]+([\d.]+)[\s,]+([\d.]+)"', tag[0])
        size = [round(float(box[1])), round(float(box[2]))] if box else []
    return (size[0], size[1]) if len(size) == 2 and all(size) else None


# --- Markdown and sanitising ------------------------------------------------------------------

def _markdown(slug: Callable[[str, str], str]) -> markdown.Markdown:
    """A fresh instance per call (about 0.5 ms): Markdown objects hold state, threads share none."""
    md = markdown.Markdown(
        extensions=["fenced_code", "tables", "footnotes", "codehilite", "sane_lists",
                    TocExtension(permalink=True, slugify=slug)],
        extension_configs={
            "codehilite": {"css_class": "highlight", "guess_lang": False},  # classes, never inline styles
            "tables": {"use_align_attribute": True},                         # align="…", not style="…"
        },
        output_format="html",
    )
    md.preprocessors.deregister("html_block")  # raw HTML is escaped and shown as text
    md.inlinePatterns.deregister("html")
    return md


def _attribute_filter(tag: str, attr: str, value: str) -> str | None:
    """Images load from http(s) or relative URLs only (`url_schemes` also admits mailto for links)."""
    if tag == "img" and attr == "src" and value.strip().lower().startswith("mailto:"):
        return None
    return value


_CLEANER = nh3.Cleaner(
    tags={"p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "a", "em", "strong", "code", "pre",
          "span", "div", "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td",
          "sup", "sub", "img"},
    attributes={
        "h1": {"id"}, "h2": {"id"}, "h3": {"id"}, "h4": {"id"}, "h5": {"id"}, "h6": {"id"},
        "a": {"href", "title", "class"}, "img": {"src", "alt", "title"},
        "code": {"class"}, "pre": {"class"}, "span": {"class"}, "div": {"class"},
        "sup": {"id"}, "li": {"id"}, "ol": {"start"}, "th": {"align"}, "td": {"align"},
    },
    url_schemes={"http", "https", "mailto"},
    attribute_filter=_attribute_filter,
)

# --- math tokens --------------------------------------------------------------------------------

_NOT_BLANK = r"(?!\n[ \t]*\n)"  # inline constructs never span a blank line (a new paragraph)
_INLINE_RE = re.compile(rf"""
    (?P<escape>\\[\\`$])                                             # \\ \` \$
  | (?P<code>(?P<ticks>`+)(?:{_NOT_BLANK}.)+?(?<!`)(?P=ticks)(?!`))   # a code span stays as it is
  | \$\$(?P<display>(?:{_NOT_BLANK}(?:\\.|[^$\\]))+?)\$\$
  | \$(?P<inline>(?![\s$])(?:{_NOT_BLANK}(?:\\.|[^$\\]))+?)(?<!\s)\$(?!\d)   # pandoc's rules
""", re.S | re.X)

_TAG_RE = re.compile(r'<(/?)([a-zA-Z0-9]+)(?:[^>"]|"[^"]*")*>')  # nh3 quotes every attribute with "


class _Doc:
    """One rendering: the token nonce and what each token stands for."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(6)
        self.stash: list[tuple[str, str, str]] = []  # (source, plain text, HTML) per token

    def token(self, kind: str, index: int | str) -> str:
        return f"kb{self.nonce}{kind}{index}e"

    def _protect(self, prose: str) -> str:
        def replace(m: re.Match[str]) -> str:
            if m["code"] or (m["escape"] and m["escape"] != "\\$"):
                return m[0]
            if m["escape"]:
                entry = (m[0], "$", "$")
            else:
                latex, display = (m["display"], "block") if m["display"] is not None else (m["inline"], "inline")
                entry = (m[0], m[0], to_mathml(latex.strip(), display))
            self.stash.append(entry)
            return self.token("m", len(self.stash) - 1)
        return _INLINE_RE.sub(replace, prose)

    def _source(self, text: str, snippets: bool) -> str:
        """The Markdown to convert: math tokenised in prose, fences normalised or made slots."""
        out, count = [], 0
        for block in blocks(split_lines(text)):
            if isinstance(block, Prose):
                out.append(self._protect("\n".join(block.lines)))
            elif snippets and block.language == "python":
                out.append(self.token("s", count))
                count += 1
            else:  # fenced_code accepts no attributes after the language: keep only the language
                out.append("\n".join([block.fence + block.language, *block.code, block.fence]))
        return "\n\n".join(out)

    def _slugify(self, value: str, separator: str) -> str:
        """Heading ids from the LaTeX source, not the random tokens: stable permalinks."""
        value = re.sub(self.token("m", r"(\d+)"), lambda m: self.stash[int(m[1])][1], value)
        return slugify(value, separator)

    def _finish(self, fragment: str) -> str:
        """Replace the tokens: MathML in text, the source in code and in attribute values."""
        token = re.compile(self.token("m", r"(\d+)"))
        source = lambda m: html.escape(self.stash[int(m[1])][0])  # noqa: E731
        plain = lambda m: html.escape(self.stash[int(m[1])][1])  # noqa: E731
        mathml = lambda m: self.stash[int(m[1])][2]  # noqa: E731
        out, in_code, pos = [], 0, 0
        for tag in _TAG_RE.finditer(fragment):
            out.append(token.sub(source if in_code else mathml, fragment[pos:tag.start()]))
            out.append(token.sub(plain, tag[0]))
            if tag[2] in ("code", "pre"):
                in_code += -1 if tag[1] else 1
            pos = tag.end()
        out.append(token.sub(source if in_code else mathml, fragment[pos:]))
        return "".join(out)

    def render(self, text: str, snippets: bool) -> tuple[str, str]:
        md = _markdown(self._slugify)
        body = self._finish(_CLEANER.clean(md.convert(self._source(text, snippets))))
        # The toc extension sets these on the Markdown object (they are not declared by its class).
        attributes = vars(md)
        toc = self._finish(_CLEANER.clean(attributes["toc"])) if attributes["toc_tokens"] else ""
        return body, toc
