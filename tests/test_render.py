"""kb.render.markdown: snippet slots, highlighted fences, server-side MathML, and HTML that cannot inject."""
from __future__ import annotations

import re
import textwrap
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import answer_text

from kb.format.answer import parse_answer
from kb.render.markdown import Rendered, highlight_python, pygments_css, render_answer, render_inline, render_markdown

ROOT = Path(__file__).resolve().parent.parent
TOKEN = re.compile(r"kb[0-9a-f]{12}[ms]\d+e")  # the placeholders render uses internally


def write_answer(folder: Path, body: str, slug: str = "an-answer"):
    path = folder / f"{slug}.md"
    path.write_text(f"---\ntitle: A question?\nsummary: An answer.\n---\n\n{textwrap.dedent(body)}")
    return parse_answer(path)


def html_of(rendered: Rendered) -> str:
    return "".join(p for kind, p in rendered.parts if kind == "html") + rendered.toc


class Elements(HTMLParser):
    """Every start tag with its attributes, as a browser's parser sees them."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def assert_inert(html: str):
    """No script element, no event handler, no javascript: URL, no inline style."""
    for tag, attrs in Elements(html).tags:
        assert tag != "script", html
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name, html)
            assert name != "style", (tag, html)
            assert not (value or "").strip().lower().startswith("javascript:"), (tag, name, html)
    assert "<script" not in html.lower()
    assert not re.search(r"\sstyle=", html)


BODY = """\
    Intro with $x$.

    ```python
    a = 1
    ```

    ```text
    not a snippet
    ```

    ```python hide
    b = 2
    ```

    Between.

    ~~~~python norun
    c = 3  # a ``` line inside does not close a ~~~~ fence:
    ```
    ~~~~

    ```sh
    echo done
    ```
    Closing prose.
    """


def test_snippet_parts_follow_the_answers_snippets(tmp_path):
    answer = write_answer(tmp_path, BODY)
    rendered = render_answer(answer)
    assert [s.attrs for s in answer.snippets] == [frozenset(), {"hide"}, {"norun"}]
    kinds = [kind if kind == "html" else value for kind, value in rendered.parts]
    assert kinds == ["html", 0, "html", 1, "html", 2, "html"]
    htmls = [value for kind, value in rendered.parts if kind == "html"]
    assert "Intro" in htmls[0] and "not a snippet" in htmls[1] and "Between." in htmls[2]
    assert "echo" in htmls[3] and "Closing prose." in htmls[3]
    text = html_of(rendered)
    for code in ("a = 1", "b = 2", "c = 3"):  # the caller shows snippets; not the html parts
        assert code not in text


def test_answer_without_snippets_is_one_html_part(tmp_path):
    rendered = render_answer(write_answer(tmp_path, "Just *prose*.\n"))
    assert rendered.parts == (("html", "<p>Just <em>prose</em>.</p>"),)
    assert rendered.toc == ""


def test_snippet_right_after_a_list_or_quote_is_still_a_slot(tmp_path):
    answer = write_answer(tmp_path, """\
        - item
        ```python
        x = 1
        ```
        > quote
        ```python
        y = 2
        ```
        """)
    rendered = render_answer(answer)
    assert [v for k, v in rendered.parts if k == "snippet"] == [0, 1]
    assert not TOKEN.search(html_of(rendered))


def test_other_fences_are_highlighted_code():
    out = render_markdown("```sh\necho $HOME_DIR *not em*\n```\n\n```\nplain $x$\n```\n")
    assert out.count('<div class="highlight"><pre>') == 2
    assert "$HOME_DIR" in out and "<em>" not in out
    assert "plain $x$" in out and "<math" not in out
    assert '<span class="' in out  # Pygments classes, not inline colours


def test_render_markdown_shows_python_fences_as_code():
    out = render_markdown("```python norun\nx = 1\n```\n")
    assert '<div class="highlight">' in out and '<span class="n">x</span>' in out


def test_inline_and_display_math_become_mathml():
    out = render_markdown("Inline $\\sigma(z)$ here.\n\n$$\nJ = \\frac{1}{m} \\sum_{i=1}^{m} L\n$$\n")
    assert out.count("<math") == 2
    assert 'display="inline"' in out and 'display="block"' in out
    assert "<mfrac>" in out and "σ" in out
    assert "$" not in out


def test_underscores_and_stars_in_math_are_not_emphasis():
    out = render_markdown("Both $a_1 * b_2$ and $c_3 * d_4$, and $$x_i^* = y_j^*$$")
    assert "<em>" not in out and "<strong>" not in out
    assert out.count("<msub>") == 4


def test_dollars_in_code_and_escaped_and_currency_stay_literal():
    out = render_markdown("Run `echo $HOME` then $y$. It costs \\$5, or $3 to $4.")
    assert "<code>echo $HOME</code>" in out
    assert out.count("<math") == 1 and "<mi>y</mi>" in out
    assert "costs $5, or $3 to $4." in out


def test_math_in_an_indented_code_block_shows_its_source():
    out = render_markdown("Text.\n\n    cost = $x_1$ \\$\n")
    assert "<pre>" in out and "cost = $x_1$ \\$" in out and "<math" not in out


def test_math_in_an_attribute_is_plain_text():
    out = render_markdown('[link $x$](https://example.org "about $y_1$")')
    tags = dict(Elements(out).tags)
    assert tags["a"]["title"] == "about $y_1$"
    assert "<math" in out  # the link text keeps its math


@pytest.mark.parametrize("attack", [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[x](javascript:alert(1))",
    "![x](javascript:alert(1))",
    '<div onclick="alert(1)">raw block</div>',
    "<a href='javascript:alert(1)'>raw inline</a> text",
    "[x](JaVaScRiPt:alert(1))",
    '[x](https://ok.example "title" onclick=alert(1))',
])
def test_raw_html_and_bad_urls_cannot_inject(tmp_path, attack):
    for out in (render_markdown(attack), render_inline(attack), html_of(render_answer(write_answer(tmp_path, attack)))):
        assert_inert(out)
    assert "&lt;" in render_markdown(attack) or "<" not in attack  # raw HTML is shown as text


def test_allowed_links_and_images_survive():
    out = render_markdown("[a](https://a.example/x) [b](mailto:b@example.org) [c](#frag) [d](other) "
                          "![i](https://a.example/i.png) ![j](mailto:j@example.org)")
    tags = Elements(out).tags
    assert [a["href"] for t, a in tags if t == "a"] == ["https://a.example/x", "mailto:b@example.org", "#frag", "other"]
    assert [a.get("src") for t, a in tags if t == "img"] == ["https://a.example/i.png", None]


def test_mathml_text_cannot_inject():
    out = render_markdown("$\\text{<script>alert(1)</script>}$")
    assert "<math" in out and "&lt;script&gt;" in out
    assert_inert(out)


def test_mathml_keeps_no_style_class_or_href():
    out = render_markdown("$\\style{color:red}{x} + \\href{javascript:alert(1)}{y} + \\class{c}{z} + \\color{red}{w}$")
    assert "<math" in out and "math-error" not in out
    assert_inert(out)
    assert "href" not in out and "class=" not in out


def test_invalid_latex_is_shown_as_code_not_raised():
    out = render_markdown("Broken $\\frac{1}{$ and $$\\left( x^$$ but $ok$ <x>")
    assert out.count('<code class="math-error"') == 2
    assert "$\\frac{1}{$" in out and "$$\\left( x^$$" in out and "<mi>o</mi>" in out
    assert 'title="LaTeX error: NoAvailableTokensError"' in out
    assert_inert(out)


def test_no_style_attribute_anywhere(tmp_path):
    answer = write_answer(tmp_path, """\
        # Title $\\displaystyle \\sum_i x_i$

        | left | right | centre |
        |:-----|------:|:------:|
        | $\\color{red}{a}$ | `b` | c |

        Note[^n].

        ```python
        x = {"a": 1}
        ```

        ```js
        let s = "text";
        ```

        [^n]: A footnote with $\\Huge x$.
        """)
    rendered = render_answer(answer)
    outputs = [html_of(rendered), highlight_python(answer.snippets[0].code), render_inline("$\\boxed{x}$")]
    for out in outputs:
        assert not re.search(r"\sstyle=", out)
    assert 'align="right"' in html_of(rendered)


def test_tables_footnotes_and_toc(tmp_path):
    rendered = render_answer(write_answer(tmp_path, """\
        ## The $\\sigma$ function

        A claim[^src].

        | x | $\\sigma(x)$ |
        |---|---|
        | 0 | 0.5 |

        ### Details

        [^src]: Andrew Ng, week 3.
        """))
    out = html_of(rendered)
    assert '<h2 id="the-sigma-function">' in out and 'class="headerlink"' in out
    assert "<table>" in out and "<td>0.5</td>" in out and out.count("<math") >= 3
    assert 'href="#fn:src"' in out and '<li id="fn:src">' in out and "Andrew Ng" in out
    toc_links = [a["href"] for t, a in Elements(rendered.toc).tags if t == "a"]
    assert toc_links == ["#the-sigma-function", "#details"]
    assert rendered.toc.startswith('<div class="toc">') and "<math" in rendered.toc


def test_render_inline_is_one_line_without_paragraph():
    out = render_inline("Mean of $dz^{(i)}$ is *small*")
    assert not out.startswith("<p>") and "<em>small</em>" in out and "<math" in out
    assert render_inline("# not a heading") == "# not a heading"
    assert render_inline("1. not a list") == "1. not a list"
    assert render_inline("- not a list") == "- not a list"
    assert render_inline("[x]: https://a.example") == "[x]: https://a.example"
    assert render_inline("two\nlines") == "two lines"


def test_highlight_python_and_css():
    out = highlight_python("def f(x):\n    return x_1 * 2  # $x$\n")
    assert out.startswith('<div class="highlight"><pre>') and '<span class="k">def</span>' in out
    assert not re.search(r"\sstyle=", out)
    css = pygments_css()
    assert ".highlight .k {" in css and "@media (prefers-color-scheme: dark) {" in css
    assert css.count("{") == css.count("}")


def test_rendering_from_many_threads_gives_the_same_html(tmp_path):
    answer = write_answer(tmp_path, BODY + "\n## Head $a_b$\n\nMore $c_d$[^1].\n\n[^1]: foot $e$\n")
    expected = render_answer(answer)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: render_answer(answer), range(64)))
    assert all(r == expected for r in results)


ANSWERS = sorted((ROOT / "answers").glob("*.md"))


@pytest.mark.parametrize("path", ANSWERS, ids=[p.stem for p in ANSWERS])
def test_every_formula_in_the_answers_converts(path):
    answer = parse_answer(path)
    rendered = render_answer(answer)
    out = html_of(rendered)
    assert "math-error" not in out, [line for line in out.splitlines() if "math-error" in line]
    assert not TOKEN.search(out)
    assert [v for k, v in rendered.parts if k == "snippet"] == [s.index for s in answer.snippets]
    assert_inert(out)


# --- golden MathML: how the formulas learners read most are set ---------------------------------

def math_body(latex: str, display: str = "inline") -> str:
    """The MathML inside <math>…</math> (and the display wrapper) for one formula."""
    from kb.render.mathml import to_mathml

    html = to_mathml(latex, display)
    return re.sub(r'^(<span class="math-display">)?<math [^>]*>|</math>(</span>)?$', "", html)


@pytest.mark.parametrize("latex, mathml", [
    # a prime is an operator at full size after its base, not a shrunken superscript identifier
    ("g'(z)", '<mrow><mrow><mi>g</mi><mo lspace="0" rspace="0">′</mo></mrow><mo stretchy="false">(</mo>'
              '<mi>z</mi><mo stretchy="false">)</mo></mrow>'),
    ("\\sigma'(z)", '<mrow><mrow><mi>σ</mi><mo lspace="0" rspace="0">′</mo></mrow><mo stretchy="false">(</mo>'
                    '<mi>z</mi><mo stretchy="false">)</mo></mrow>'),
    ("\\tanh'", '<mrow><mrow><mi>tanh</mi><mo lspace="0" rspace="0">′</mo></mrow></mrow>'),
    ("J''", '<mrow><mrow><mi>J</mi><mo lspace="0" rspace="0">″</mo></mrow></mrow>'),
    # function names get TeX's thin space on each side, none before a bracket
    ("-y\\log a", '<mrow><mo>−</mo><mi>y</mi><mspace width="0.1667em" /><mi>log</mi>'
                  '<mspace width="0.1667em" /><mi>a</mi></mrow>'),
    ("\\log(1-a)", '<mrow><mi>log</mi><mo stretchy="false">(</mo><mn>1</mn><mo>−</mo><mi>a</mi>'
                   '<mo stretchy="false">)</mo></mrow>'),
    ("e^{x}\\exp x", '<mrow><msup><mi>e</mi><mrow><mi>x</mi></mrow></msup><mspace width="0.1667em" />'
                     '<mi>exp</mi><mspace width="0.1667em" /><mi>x</mi></mrow>'),
    ("g(z) = \\max(0, z)", '<mrow><mi>g</mi><mo stretchy="false">(</mo><mi>z</mi><mo stretchy="false">)</mo><mo>=</mo>'
                           '<mi>max</mi><mo stretchy="false">(</mo><mn>0</mn><mo>,</mo><mi>z</mi><mo stretchy="false">)</mo></mrow>'),
    ("\\frac{1}{m}", '<mrow><mfrac><mrow><mn>1</mn></mrow><mrow><mi>m</mi></mrow></mfrac></mrow>'),
    ("\\sum_{i=1}^{m} x_i", '<mrow><msubsup><mo>∑</mo><mrow><mi>i</mi><mo>=</mo><mn>1</mn></mrow><mrow><mi>m</mi>'
                            '</mrow></msubsup><msub><mi>x</mi><mi>i</mi></msub></mrow>'),
    ("\\hat{y}", '<mrow><mover accent="true"><mrow><mi>y</mi></mrow><mo stretchy="false">ˆ</mo></mover></mrow>'),
])
def test_golden_inline_mathml(latex, mathml):
    assert math_body(latex) == mathml


def test_display_sum_has_its_limits_above_and_below_and_scrolls_in_its_own_box():
    from kb.render.mathml import to_mathml

    html = to_mathml("J = \\frac{1}{m}\\sum_{i=1}^{m} L(a^{(i)}, y^{(i)})", "block")
    assert html.startswith('<span class="math-display"><math xmlns="http://www.w3.org/1998/Math/MathML" display="block">')
    assert ('<munderover><mo>∑</mo><mrow><mi>i</mi><mo>=</mo><mn>1</mn></mrow><mrow><mi>m</mi></mrow></munderover>'
            in html)
    assert '<mfrac><mrow><mn>1</mn></mrow><mrow><mi>m</mi></mrow></mfrac>' in html


def test_no_prime_is_left_as_a_superscript_identifier_in_the_answers():
    """Every prime in the knowledge base is set as an operator (the ~35 g', σ', tanh', J')."""
    primes = 0
    for path in sorted((ROOT / "answers").glob("*.md")):
        for kind, html in render_answer(parse_answer(path)).parts:
            if kind == "html":
                assert not re.search(r"<mi>[′″‴]</mi>", html), path.name
                primes += html.count(">′</mo>") + html.count(">″</mo>")
    assert primes >= 20


def test_figure_size_from_the_svg():
    from kb.render.markdown import figure_size

    assert figure_size('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="460.8pt" '
                       'height="345.6pt" viewBox="0 0 460.8 345.6">') == (614, 461)
    assert figure_size('<svg viewBox="0 0 300 150" xmlns="http://www.w3.org/2000/svg">') == (300, 150)
    assert figure_size('<svg width="120" height="80">') == (120, 80)
    assert figure_size("not an svg") is None


def test_deep_dive_sections_are_folded_up_to_the_next_section():
    answer = parse_answer(Path("answers") / "deep.md", answer_text(prose=(
        "## Why\n\nThe short path.\n\n## Deep dive (optional): the long way\n\nMore.\n\n"
        "```python\nx = 1\n```\n\nAfter the code.\n\n## Sources\n\nA book.")))
    parts = render_answer(answer).parts
    html = "".join(value if kind == "html" else f"[slot {value}]" for kind, value in parts)
    opened = html.index('<details class="deep-dive"><summary><h2 id="deep-dive-optional-the-long-way">')
    assert html.index("The short path.") < opened < html.index("[slot 0]") < html.index("After the code.")
    assert html.index("After the code.") < html.index("</details>") < html.index('<h2 id="sources">')
    assert html.count("<details") == html.count("</details>") == 1
