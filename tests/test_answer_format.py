"""The answer file format: what parses, and the `file:line` error for what does not."""
import pytest
from helpers import answer_text, check_json, run_cli

from kb.format.answer import FormatError, load_answers, parse_answer

GOOD = """---
title: Why is the sky blue?
summary: Rayleigh scattering.
aliases: [why blue sky]
tags: [physics]
related: [other]
sources: ["A book, chapter 2"]
---

Prose with $x^2$.

```python
x = 1
```

```python norun
import nothing
```

```python hide
check("x is one", x == 1, x)
```

```text
not a snippet
```
"""


def test_good_answer_parses_with_snippet_lines_and_attributes(answers_dir):
    (answers_dir / "other.md").write_text(answer_text())
    path = answers_dir / "sky-blue.md"
    path.write_text(GOOD)
    answers, errors = load_answers([answers_dir])
    assert errors == []
    answer = answers["sky-blue"]
    assert answer.title == "Why is the sky blue?"
    assert answer.related == ("other",) and answer.tags == ("physics",)
    assert [(s.line, s.code, sorted(s.attrs)) for s in answer.snippets] == [
        (12, "x = 1", []), (16, "import nothing", ["norun"]), (20, 'check("x is one", x == 1, x)', ["hide"])]
    assert [s.index for s in answer.runnable] == [0, 2]
    # The body: the lines after the front matter's closing `---`, the blank first one included.
    assert answer.body == GOOD.split("---\n", 2)[2].removesuffix("\n")
    assert answer.body.startswith("\nProse with $x^2$.\n")


BROKEN = {
    "bad YAML": ("---\ntitle: [unclosed\nsummary: s\n---\n", 3, "invalid YAML"),
    "missing title": ("---\nsummary: s\n---\n", 1, "missing required key 'title'"),
    "unknown key": ("---\ntitle: t\nsummary: s\nauthor: me\n---\n", 4, "unknown key 'author'"),
    "wrong type": ("---\ntitle: t\nsummary: s\ntags: physics\n---\n", 4, "'tags' must be a list"),
    "no front matter": ("# Title\n", 1, "missing front matter"),
    "unclosed front matter": ("---\ntitle: t\n", 1, "front matter is not closed"),
    "unclosed fence": ("---\ntitle: t\nsummary: s\n---\n\ntext\n\n```python\nx = 1\n", 8, "never closed"),
    "unknown attribute": ("---\ntitle: t\nsummary: s\n---\n```python no-run\nx\n```\n", 5, "unknown snippet attribute"),
    "unknown related": ("---\ntitle: t\nsummary: s\nrelated: [nowhere]\n---\n", 4, "related slug 'nowhere'"),
    "unknown topic": ("---\ntitle: t\nsummary: s\ntopic: calculus\n---\n", 4, "'topic' must be one of: neural-network-basics"),
    "repeated key": ("---\ntitle: t\nsummary: s\ntitle: u\n---\n", 4, "'title' is given twice (first on line 2)"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_file_reports_file_and_line(answers_dir, case):
    text, line, message = BROKEN[case]
    (answers_dir / "broken.md").write_text(text)
    (answers_dir / "fine.md").write_text(answer_text())
    answers, errors = load_answers([answers_dir])
    assert list(answers) == ["fine"], "the other answers are still loaded"
    [error] = errors
    assert isinstance(error, FormatError)
    assert error.line == line
    assert str(error).startswith(f"{error.path}:{line}: ") and error.path.endswith("answers/broken.md")
    assert message in str(error)


def test_file_name_must_be_a_slug(answers_dir):
    path = answers_dir / "Not_A_Slug.md"
    path.write_text(answer_text())
    with pytest.raises(FormatError, match="not a slug"):
        parse_answer(path)


def test_cli_reports_broken_files_and_still_checks_the_others(answers_dir, tmp_path):
    (answers_dir / "good.md").write_text(answer_text(snippets=['check("two is more than one", 2 > 1, 2)']))
    (answers_dir / "bad-yaml.md").write_text("---\ntitle: [oops\nsummary: s\n---\n")
    (answers_dir / "unclosed.md").write_text("---\ntitle: t\nsummary: s\n---\n\n```python\nx = 1\n")
    proc = run_cli("check", answers_dir, "--db", tmp_path / "db", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "answers/bad-yaml.md:3: invalid YAML" in proc.stderr
    assert "answers/unclosed.md:6: code fence ```python is never closed" in proc.stderr
    assert "passed   good" in proc.stdout and "1/1 checks" in proc.stdout


def test_lines_are_numbered_as_editors_and_python_number_them(answers_dir, tmp_path):
    """A BOM is not part of the front matter; only \\n, \\r\\n and \\r end a line, so a string that
    holds a form feed or a line separator keeps it, and errors after it keep their line."""
    (answers_dir / "with-bom.md").write_bytes("\ufeff".encode() + answer_text(snippets=["x = 1"]).encode())
    (answers_dir / "odd-breaks.md").write_bytes(
        '---\r\ntitle: t?\r\nsummary: s\r\n---\r\n\r\nProse\x0cmore\u2028prose.\r\n\r\n```python\r\n'
        's = "a\u2028b\x0cc"\rcheck("the string keeps its five characters", len(s) == 5, len(s))\n1 / 0\n```\n'
        .encode())
    answers, errors = load_answers([answers_dir])
    assert errors == [] and answers["with-bom"].title == "A question?"
    [snippet] = answers["odd-breaks"].snippets
    assert snippet.line == 8 and snippet.code.split("\n")[0] == 's = "a\u2028b\x0cc"'
    proc, evidence = check_json(answers_dir, "--no-cache", cwd=tmp_path)
    [result] = evidence["odd-breaks"]["snippets"]
    assert [c["value"] for c in result["checks"]] == ["5"] and result["checks"][0]["passed"]
    assert result["error"]["type"] == "ZeroDivisionError" and result["error"]["line"] == 11
    assert proc.returncode == 1 and evidence["with-bom"]["status"] == "passed"


def test_topic_is_one_of_the_fixed_sections(answers_dir):
    (answers_dir / "placed.md").write_text(answer_text(extra="topic: optimization\n"))
    (answers_dir / "unplaced.md").write_text(answer_text())
    answers, errors = load_answers([answers_dir])
    assert errors == []
    assert answers["placed"].topic == "optimization" and answers["unplaced"].topic is None
