"""An answer as a Jupyter notebook (nbformat v4), its evidence as the cells' saved outputs.

Learners of the course work in notebooks: this is an answer they can take into one, change a
number in and run again. The notebook is, in order:

1. a Markdown cell: the title (H1), the summary, a link back to the answer's page and what the
   saved outputs are (the runner's evidence: status, checks held, when and on which Python/NumPy);
2. a code cell that sets up what the runner sets up before every answer: NumPy's and Python's
   RNGs seeded with `kb.run.runner.SEED`, and `check(claim, condition, value=None)`, which records
   the claim (in `check.results`) and prints ✓ or ✗ with the value shown as the page shows it;
3. the body: each run of prose (with any non-Python fences in it) a Markdown cell, its math kept
   as `$…$` / `$$…$$` for Jupyter's MathJax (the raw Markdown, not the page's MathML); each
   ```python snippet a code cell (`hide` ones too: the page folds them, a notebook shows them);
   a `norun` snippet stays in the Markdown, as a ```python block marked "shown, not run", so that
   "Run all" never runs what the runner never runs;
4. related answers and sources, as a Markdown cell.

Each code cell's saved outputs are its snippet's evidence, when there is any: stdout and stderr
as stream outputs, then the check lines `check` would print, the figures as `image/svg+xml`
display data, an error as an error output. A real run prints a check's line where it is
called, so a re-run may interleave them with the snippet's own prints differently. Cells carry
`metadata.kb` (`snippet` index and `.md` `line`) so a tool can match them back to the answer.

What the notebook does not reproduce: the runner's isolation and limits, its scratch working
directory, `PYTHONHASHSEED` (a kernel's is set when it starts) and the closing of figures after
each snippet (Jupyter's inline backend shows and closes them after each cell, to the same effect).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import nbformat
from nbformat import NotebookNode

from kb.format.answer import Answer, split_lines
from kb.format.blocks import Fence, Prose, blocks
from kb.run.runner import SEED
from kb.store import evidence as ev

MIMETYPE = "application/x-ipynb+json"
# nbformat's builders are untyped; these are their types here (mypy checks kb strictly).
new_notebook: Callable[..., NotebookNode] = nbformat.v4.new_notebook
new_code_cell: Callable[..., NotebookNode] = nbformat.v4.new_code_cell
new_markdown_cell: Callable[..., NotebookNode] = nbformat.v4.new_markdown_cell
new_output: Callable[..., NotebookNode] = nbformat.v4.new_output
writes: Callable[[NotebookNode], str] = nbformat.writes
NOT_RUN = "*This code is shown, not run.*"

# The set-up cell. `check` accepts what the runner's `check` accepts (tests/test_notebook.py
# compares the signatures) and shows values as the runner's `show` does (the same test compares
# every value of every answer); `identity` is `kb audit`'s note and changes nothing here.
SETUP = """\
# What the knowledge base's runner does before every answer: seed NumPy's and Python's random
# generators, and define check(claim, condition, value=None), which records a claim and prints
# ✓ if the condition holds (✗ if not) with the computed value.
import random

import numpy as np

np.random.seed(SEED)
random.seed(SEED)


def check(claim, condition, value=None, *, identity=None):
    held = bool(condition)
    shown = None if value is None else check.show(value)
    check.results.append({"claim": str(claim), "passed": held, "value": shown})
    line = f"{'✓' if held else '✗'} {claim}"
    print(line if shown is None else f"{line} — {shown}")
    return held


def show_value(value):  # as the answer's page shows a value: numbers to 6 digits, long arrays abridged
    if isinstance(value, (str, bool, np.bool_)):
        text = str(value)
    elif isinstance(value, (float, np.floating)):
        text = f"{float(value):.6g}"
    elif isinstance(value, np.ndarray):
        text = np.array2string(value, precision=4, threshold=12, separator=", ")
    elif isinstance(value, (tuple, list)) and all(isinstance(v, (int, float, np.number, str)) for v in value):
        inner = ", ".join(check.show(v) for v in value)
        text = f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    else:
        text = repr(value)
    return text if len(text) <= 500 else text[:497] + "..."


check.show = show_value
check.results = []  # every check so far: its claim, whether it held, the value shown
"""


def setup_code() -> str:
    """The first code cell: the seeding and the `check` of the runner."""
    return SETUP.replace("SEED", str(SEED))


def check_line(check: ev.Check) -> str:
    """The line the notebook's `check` prints for a recorded check."""
    line = f"{'✓' if check['passed'] else '✗'} {check['claim']}"
    return line if check["value"] is None else f"{line} — {check['value']}"


def build_notebook(answer: Answer, evidence: ev.Evidence | None = None, *,
                   page: Callable[[str], str] = lambda slug: slug,
                   figure: Callable[[str], str | None] = lambda name: None,
                   titles: Mapping[str, str] | None = None) -> NotebookNode:
    """The answer as a notebook; `evidence` (if any, and not pending) becomes the saved outputs.

    `page(slug)` is the link to an answer's page as seen from the notebook (relative: the
    service serves `/answers/<slug>.ipynb` beside `/answers/<slug>`, the static export writes
    `answers/<slug>.ipynb` beside `answers/<slug>.html`; no link is built from a Host header).
    `figure(name)` is the SVG text of a figure the evidence names, or None if it is gone.
    `titles` names the related answers (by slug) in the closing cell's links.
    """
    ran = evidence is not None and evidence["status"] != "pending"
    by_index = {s["index"]: s for s in evidence["snippets"]} if evidence is not None and ran else {}
    count = 1  # the set-up cell runs first
    cells = [new_markdown_cell(_front(answer, evidence if ran else None, page)),
             new_code_cell(setup_code(), execution_count=count if ran else None, metadata={"kb": {"setup": True}})]
    markdown: list[str] = []

    def flush() -> None:
        text = "\n".join(markdown).strip("\n")
        if text.strip():
            cells.append(new_markdown_cell(text))
        markdown.clear()

    snippets = iter(answer.snippets)
    for block in blocks(split_lines(answer.body), answer.body_line):
        if isinstance(block, Prose):
            markdown.extend(block.lines)
            continue
        if not (block.words and block.words[0] == "python"):
            markdown.extend(_fence(block))
            continue
        snippet = next(snippets)
        if not snippet.runs:
            markdown.extend([*_fence(block, info="python"), "", NOT_RUN])
            continue
        flush()
        result = by_index.get(snippet.index)
        ran_here = result is not None and result["status"] not in ("skipped", "norun")
        if ran_here:
            count += 1
        cells.append(new_code_cell(
            snippet.code, execution_count=count if ran_here else None,
            outputs=_outputs(result, figure) if result is not None and ran_here else [],
            metadata={"kb": {"snippet": snippet.index, "line": snippet.line}}))
    flush()
    end = _end(answer, page, titles or {})
    if end:
        cells.append(new_markdown_cell(end))
    metadata: dict[str, Any] = {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python", "file_extension": ".py", "mimetype": "text/x-python"},
        "kb": {"slug": answer.slug, "status": evidence["status"] if evidence is not None else "pending",
               "ran_at": evidence["ran_at"] if evidence is not None else None},
    }
    if ran and evidence is not None:
        metadata["language_info"]["version"] = evidence["environment"].get("python", "")
    return new_notebook(cells=cells, metadata=metadata)


def notebook_json(notebook: NotebookNode) -> str:
    """The notebook as the .ipynb file's text (validated: nbformat refuses an invalid one)."""
    nbformat.validate(notebook)
    return writes(notebook) + "\n"


def _front(answer: Answer, evidence: ev.Evidence | None, page: Callable[[str], str]) -> str:
    lines = [f"# {answer.title}", ""]
    if not _opens_with_summary(answer):
        lines += [answer.summary, ""]
    lines.append(f"From the knowledge base: [this answer's page]({page(answer.slug)}), as a notebook. Run the "
                 "cells from the top: the first code cell seeds the random generators and defines `check` as the "
                 "knowledge base's runner does, so every check should hold here as it does there; then change "
                 "a number and run again.")
    if evidence is not None:
        tally = ev.describe(ev.counts(evidence, answer))
        env = evidence["environment"]
        when = (evidence["ran_at"] or "").replace("T", " ").replace("Z", " UTC")
        lines += ["", f"The saved outputs are the runner's evidence: **{evidence['status']}**, {tally} "
                  f"(ran {when} on Python {env.get('python', '?')}, NumPy {env.get('numpy', '?')})."]
    return "\n".join(lines)


def _opens_with_summary(answer: Answer) -> bool:
    """True if the body opens with a section (the "Short answer") whose text is the summary."""
    match = re.match(r"\s*##[^\n]*\n+(.*?)(?:\n[ \t]*\n|\n#|$)", answer.body, re.S)
    return match is not None and " ".join(match[1].split()) == answer.summary


def _fence(block: Fence, info: str | None = None) -> list[str]:
    fence = block.fence
    while any(line.startswith(fence[0] * len(fence)) for line in block.code):  # never closed by the code
        fence += fence[0]
    return [f"{fence}{block.info if info is None else info}", *block.code, fence]


def _outputs(result: ev.SnippetEvidence, figure: Callable[[str], str | None]) -> list[NotebookNode]:
    outputs = []
    # What the snippet printed, then the lines its checks print (a run interleaves them).
    printed = result["stdout"]
    if result["checks"]:
        printed += ("\n" if printed and not printed.endswith("\n") else "") + "".join(
            check_line(c) + "\n" for c in result["checks"])
    if printed:
        outputs.append(new_output("stream", name="stdout", text=printed))
    if result["stderr"]:
        outputs.append(new_output("stream", name="stderr", text=result["stderr"]))
    if result["truncated"]:
        outputs.append(new_output("stream", name="stderr", text="[output cut at the runner's limit]\n"))
    for shown in result["figures"]:
        svg = figure(shown["name"])
        if svg is None:
            continue
        outputs.append(new_output("display_data", data={
            "image/svg+xml": svg, "text/plain": f"<Figure: {shown['alt'] or shown['name']}>"}))
    error = result["error"]
    if error is not None:
        outputs.append(new_output("error", ename=error["type"], evalue=error["message"],
                                  traceback=(error.get("traceback") or "").splitlines()))
    return outputs


def _end(answer: Answer, page: Callable[[str], str], titles: Mapping[str, str]) -> str:
    lines: list[str] = []
    if answer.related:
        lines += ["## Related questions", ""]
        lines += [f"- [{titles.get(slug, slug)}]({page(slug)})" for slug in answer.related] + [""]
    if answer.sources:
        lines += ["## Sources", ""] + [f"- {source}" for source in answer.sources]
    return "\n".join(lines).strip()


