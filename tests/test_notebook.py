"""Every answer as a Jupyter notebook: `GET /answers/<slug>.ipynb`, the static export's
`answers/<slug>.ipynb`, and every answer's notebook run top to bottom in a fresh kernel (nbclient),
where every check must hold, with the same value, as in the runner's evidence.

The kernel is this interpreter's ipykernel under a kernel spec the test writes (its own name, in
its own JUPYTER_PATH, with the runner's one BLAS thread and PYTHONHASHSEED), so it needs no
`ipykernel install` and no kernel of the developer's can stand in for it. Each notebook gets a
kernel process of its own, forked from a process that has imported ipykernel, NumPy and
matplotlib once (tests/forked_kernels.py: most of a kernel's CPU was its start-up and those
imports). Notebooks run `PARALLEL` at a time; the figures (how many, how long) go to
test-artifacts/notebooks.json.

A notebook is not run again when its code cells already ran without an error in this
environment (the interpreter, the kernel's packages, the kernel spec, tests/forked_kernels.py):
its executed copy, kept in .kb/notebook-runs/ by that hash, is checked instead, as `kb audit`
reuses evidence keyed by content. A fresh clone (CI) runs them all; an edited answer runs again.
"""
from __future__ import annotations

import ast
import asyncio
import functools
import hashlib
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import nbformat
import pytest
from forked_kernels import ForkedKernelManager, fork_server
from helpers import ROOT, answer_text, copy_database, run_cli
from nbclient import NotebookClient

from kb.notebook import check_line
from service import create_app

ANSWERS = sorted(p.stem for p in (ROOT / "answers").glob("*.md"))
KERNEL = "kb-notebook-test"
PARALLEL = 2
CELL_TIMEOUT = 120  # seconds: far above any answer's run (the runner's limit is 30 s per answer)
ARTIFACTS = ROOT / "test-artifacts"
CLOCK = re.compile(r"\b(perf_counter|process_time|monotonic|timeit)\b|\btime\.time\(")
# As the runner's fork server: one BLAS thread, a fixed hash seed.
KERNEL_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
RAN = ROOT / ".kb" / "notebook-runs"   # executed notebooks by hash (`ran_before`)
# What a kernel's outcome depends on besides the notebook's own bytes.
KERNEL_PACKAGES = ("numpy", "matplotlib", "matplotlib-inline", "ipykernel", "ipython", "jupyter_client", "nbclient",
                   "nbformat", "pyzmq", "tornado")


@pytest.fixture(scope="module")
def real_client(real_evidence, tmp_path_factory):
    """The service over the real answers and their evidence (runs nothing: the evidence is there)."""
    db = copy_database(real_evidence, tmp_path_factory.mktemp("notebook") / "real.sqlite3")  # with its WAL
    app = create_app({"KB_ANSWERS": str(ROOT / "answers"), "KB_DB": str(db), "TESTING": True,
                      "KB_RUN_MISSING": "wait"})
    yield app.test_client()
    app.extensions["kb"].close()


def served_notebook(client, slug):
    response = client.get(f"/answers/{slug}.ipynb")
    assert response.status_code == 200, response.status_code
    return nbformat.reads(response.get_data(as_text=True), as_version=nbformat.NO_CONVERT)


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernel spec for this interpreter, found under its own name in a JUPYTER_PATH of its own."""
    base = tmp_path_factory.mktemp("jupyter")
    spec = base / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kb tests", "language": "python", "env": KERNEL_ENV,
    }))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(base))
        patch.setenv("JUPYTER_RUNTIME_DIR", str(base / "runtime"))
        patch.setenv("IPYTHONDIR", str(base / "ipython"))
        patch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, as a learner has it
        yield base


async def _execute_all(notebooks: dict, workdir: Path) -> dict:
    """Run the notebooks in fresh kernels, PARALLEL at a time; {slug: (notebook, seconds)}."""
    slots = asyncio.Semaphore(PARALLEL)

    async def one(slug, notebook):
        async with slots:
            folder = workdir / slug
            folder.mkdir()
            started = time.perf_counter()
            client = NotebookClient(notebook, kernel_name=KERNEL, timeout=CELL_TIMEOUT, allow_errors=True,
                                    kernel_manager_class=ForkedKernelManager,
                                    resources={"metadata": {"path": str(folder)}})
            # The kernel's own stderr (its warning about TCP) is dropped; cell outputs still come back.
            await client.async_execute(stderr=subprocess.DEVNULL)
            return slug, (notebook, time.perf_counter() - started)

    return dict(await asyncio.gather(*(one(slug, nb) for slug, nb in notebooks.items())))


# Appended to each notebook before it runs: what `check` recorded, as JSON on the last line.
REPORT = "import json\nprint(json.dumps(check.results))"


@pytest.fixture(scope="module")
def executed(request, real_client, kernel_env, tmp_path_factory):
    """The notebooks of the answers this session collected, each run once in a fresh kernel."""
    mine = [item for item in request.session.items if getattr(item, "module", None) is request.module]  # answers' have none
    slugs = [item.callspec.params["slug"] for item in mine if "slug" in getattr(getattr(item, "callspec", None), "params", {})]
    notebooks = {slug: served_notebook(real_client, slug) for slug in dict.fromkeys(slugs)}
    for notebook in notebooks.values():
        notebook.cells.append(nbformat.v4.new_code_cell(REPORT))
    keys = {slug: run_key(notebook) for slug, notebook in notebooks.items()}
    reused = {slug: (nb, 0.0) for slug in notebooks if (nb := ran_before(slug, keys[slug])) is not None}
    started, cpu, results = time.perf_counter(), _children_cpu(), {}
    if to_run := {slug: notebook for slug, notebook in notebooks.items() if slug not in reused}:
        with fork_server(KERNEL_ENV):  # its kernels' CPU is counted once it is reaped, on exit
            results = asyncio.run(_execute_all(to_run, tmp_path_factory.mktemp("kernels")))
    wall, cpu = time.perf_counter() - started, _children_cpu() - cpu
    for slug, (notebook, _) in results.items():
        keep(slug, keys[slug], notebook)
    results.update(reused)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "notebooks.json").write_text(json.dumps({
        "notebooks": len(results), "reused": len(reused), "parallel": PARALLEL, "wall_s": round(wall, 2),
        "kernels_cpu_s": round(cpu, 2),  # user + system time of the fork server and its kernels
        "per_notebook_s": {slug: round(seconds, 2) for slug, (_, seconds) in sorted(results.items())},
    }, indent=1))
    return results


def run_key(notebook) -> str:
    """Hash of what decides how a notebook runs: its code cells (the report cell appended; saved
    outputs are cleared as a cell runs) and the kernels' environment (`kernel_environment`)."""
    material = {"cells": [c.source for c in notebook.cells if c.cell_type == "code"], "kernels": kernel_environment()}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


@functools.cache  # the same for every notebook of the session
def kernel_environment() -> dict:
    """The interpreter, the kernel's packages, the kernel spec's environment and the forked kernels' code."""
    return {"python": sys.version, "machine": platform.machine(), "env": KERNEL_ENV, "timeout": CELL_TIMEOUT,
            "packages": {name: version(name) for name in KERNEL_PACKAGES},
            "code": (Path(__file__).parent / "forked_kernels.py").read_text()}


def ran_before(slug: str, key: str):
    """The executed copy of a notebook that ran cleanly with this key, or None."""
    try:
        return nbformat.read(RAN / slug / f"{key}.ipynb", as_version=nbformat.NO_CONVERT)
    except (OSError, ValueError):  # never ran, or a copy cut short: run it
        return None


def keep(slug: str, key: str, notebook) -> None:
    """Keep a notebook that ran without an error (one that failed runs again next time), in place
    of its answer's older runs; written whole, then renamed."""
    if any(o["output_type"] == "error" for cell in notebook.cells for o in cell.get("outputs", [])):
        return
    folder = RAN / slug
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.ipynb"):
        old.unlink(missing_ok=True)
    partial = folder / f".{key}.{os.getpid()}.tmp"
    nbformat.write(notebook, partial)
    partial.replace(folder / f"{key}.ipynb")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o["output_type"] == "stream" and o["name"] == "stdout")


@pytest.mark.parametrize("slug", ANSWERS)
def test_every_check_holds_in_a_fresh_kernel_as_in_the_runner(slug, executed, real_client):
    notebook, _ = executed[slug]
    evidence = real_client.get(f"/api/answers/{slug}/evidence").get_json()
    assert evidence["status"] == "passed", f"the runner's own evidence for {slug} is {evidence['status']}"
    errors = [f"cell {i}: {o['ename']}: {o['evalue']}" for i, cell in enumerate(notebook.cells)
              for o in cell.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, errors
    by_snippet = {cell.metadata["kb"]["snippet"]: cell for cell in notebook.cells
                  if cell.cell_type == "code" and "snippet" in cell.metadata.get("kb", {})}
    # A value measured with a clock (an answer that times code) differs from run to run: there
    # the claims must hold as in the runner, and the values are not compared.
    timed = any(CLOCK.search(s["code"]) for s in evidence["snippets"])
    expected = []
    for snippet in evidence["snippets"]:
        if snippet["status"] == "norun":
            continue
        # Each check prints its line where it is called, in order, among the snippet's own output.
        printed, at = _stdout(by_snippet[snippet["index"]]), 0
        for check in snippet["checks"]:
            line = check_line({**check, "value": None} if timed else check)
            found = printed.find(line, at)
            assert found >= 0, f"snippet {snippet['index']} (line {snippet['line']}) did not print {line!r}"
            at = found + len(line)
        expected += [{"claim": c["claim"], "passed": c["passed"], "value": None if timed else c["value"]}
                     for c in snippet["checks"]]
    assert notebook.cells[-1].source == REPORT
    recorded = json.loads(_stdout(notebook.cells[-1]).strip().splitlines()[-1])
    if timed:
        recorded = [{**c, "value": None} for c in recorded]
    # Every check, in order: the same claim, held, with the same value shown as in the runner.
    assert recorded == expected
    assert expected and all(c["passed"] for c in recorded)


def test_every_answer_exports_a_valid_notebook_with_its_evidence(real_client):
    for slug in ANSWERS:
        notebook = served_notebook(real_client, slug)
        nbformat.validate(notebook)
        assert notebook.nbformat == 4
        answer = real_client.get(f"/api/answers/{slug}").get_json()
        evidence = answer["evidence"]
        title, setup, *body = notebook.cells
        assert title.cell_type == "markdown" and title.source.startswith(f"# {answer['title']}\n")
        assert f"]({slug})" in title.source, "the first cell links back to the answer's page"
        assert setup.cell_type == "code" and "def check(" in setup.source
        code = [c for c in body if c.cell_type == "code"]
        ran = [s for s in evidence["snippets"] if s["status"] != "norun"]
        assert [c.source for c in code] == [s["code"] for s in ran]
        for cell, snippet in zip(code, ran, strict=True):
            figures = [o for o in cell.outputs if o["output_type"] == "display_data"]
            assert len(figures) == len(snippet["figures"])
            assert all(o["data"]["image/svg+xml"].lstrip().startswith("<?xml") for o in figures)
            assert "".join(check_line(c) + "\n" for c in snippet["checks"]) in _stdout(cell)
        if answer["sources"]:
            assert body[-1].cell_type == "markdown" and answer["sources"][-1] in body[-1].source
        assert "<math" not in "".join(c.source for c in body if c.cell_type == "markdown")


NOTEBOOK_ANSWER = answer_text(
    title="Why is $e^{x}$ its own derivative?", summary="Because the slope of $e^x$ at $x$ is $e^x$.",
    extra="related: [other]\nsources: [\"A book, chapter 2\"]\n",
    prose="## Why\n\nDisplay math stays LaTeX:\n\n$$\\frac{d}{dx} e^x = e^x$$\n\n```text\nnot Python\n```",
    snippets=['import numpy as np\nx = np.random.rand(3)\nprint("drawn", x.round(3))\ncheck("three draws", len(x) == 3, x)'])
NOTEBOOK_ANSWER += ("\nShown only:\n\n```python norun\nwhile True:\n    pass\n```\n\nFolded on the page:\n\n"
                    "```python hide\nimport matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot(x)\n"
                    "ax.set_title(\"Three draws\")\ncheck(\"the slope is positive\", np.exp(1.0) > 0, np.exp(1.0))\n```\n")


@pytest.fixture
def notebook_app(answers_dir, tmp_path):
    (answers_dir / "exp.md").write_text(NOTEBOOK_ANSWER)
    (answers_dir / "other.md").write_text(answer_text(title="Another question?", extra="related: [exp]\n"))
    app = create_app({"KB_ANSWERS": str(answers_dir), "KB_DB": str(tmp_path / "kb.sqlite3"), "TESTING": True})
    yield app
    app.extensions["kb"].close()


def test_notebook_route_serves_a_download_with_an_etag(notebook_app):
    client = notebook_app.test_client()
    response = client.get("/answers/exp.ipynb")
    assert response.status_code == 200
    assert response.mimetype == "application/x-ipynb+json"
    assert response.headers["Content-Disposition"] == 'attachment; filename="exp.ipynb"'
    again = client.get("/answers/exp.ipynb", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    assert client.get("/answers/nope.ipynb").status_code == 404
    assert client.get("/answers/exp.ipynb/").status_code == 301
    page = client.get("/answers/exp").get_data(as_text=True)
    assert '<a class="notebook" href="/answers/exp.ipynb" download>Open as notebook</a>' in page


def test_notebook_cells_follow_the_answer(notebook_app):
    notebook = nbformat.reads(notebook_app.test_client().get("/answers/exp.ipynb").get_data(as_text=True),
                              as_version=4)
    nbformat.validate(notebook)
    kinds = [(c.cell_type, c.source.splitlines()[0]) for c in notebook.cells]
    assert kinds == [("markdown", "# Why is $e^{x}$ its own derivative?"), ("code", kinds[1][1]),
                     ("markdown", "## Why"), ("code", "import numpy as np"),
                     ("markdown", "Shown only:"), ("code", "import matplotlib.pyplot as plt"),
                     ("markdown", "## Related questions")]
    title, setup, prose, first, shown, hidden, end = notebook.cells
    assert "Because the slope of $e^x$ at $x$ is $e^x$." in title.source and "](exp)" in title.source
    assert "**passed**" in title.source
    assert "$$\\frac{d}{dx} e^x = e^x$$" in prose.source and "```text\nnot Python\n```" in prose.source
    assert "```python\nwhile True:\n    pass\n```\n\n*This code is shown, not run.*" in shown.source
    assert "[Another question?](other)" in end.source and "- A book, chapter 2" in end.source
    assert [c.execution_count for c in (setup, first, hidden)] == [1, 2, 3]
    assert _stdout(first).startswith("drawn [") and "✓ three draws — [" in _stdout(first)
    [figure] = [o for o in hidden.outputs if o["output_type"] == "display_data"]
    assert figure["data"]["image/svg+xml"].lstrip().startswith("<?xml")
    assert figure["data"]["text/plain"] == "<Figure: Three draws>"
    assert notebook.metadata["kernelspec"]["language"] == "python" and notebook.metadata["kb"]["slug"] == "exp"


def test_notebook_check_takes_what_the_runners_check_takes(tmp_path):
    """The set-up cell's `check` accepts every parameter of the runner's (kb/run/child.py)."""
    from kb.notebook import setup_code

    def signature(source: str):
        check = next(node for node in ast.walk(ast.parse(source))
                     if isinstance(node, ast.FunctionDef) and node.name == "check")
        return ([a.arg for a in check.args.posonlyargs + check.args.args], [a.arg for a in check.args.kwonlyargs])

    runner = signature((ROOT / "kb/run/child.py").read_text())
    notebook = signature(setup_code())
    assert notebook[0] == runner[0] and set(runner[1]) <= set(notebook[1])


def test_export_writes_every_answers_notebook(answers_dir, tmp_path):
    (answers_dir / "exp.md").write_text(NOTEBOOK_ANSWER)
    (answers_dir / "other.md").write_text(answer_text(title="Another question?", extra="related: [exp]\n"))
    out = tmp_path / "site"
    proc = run_cli("build", out, "--answers", answers_dir, "--db", tmp_path / "db", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for slug in ("exp", "other"):
        notebook = nbformat.read(out / "answers" / f"{slug}.ipynb", as_version=4)
        nbformat.validate(notebook)
        assert f"]({slug}.html)" in notebook.cells[0].source, "links point at the exported pages"
        page = (out / "answers" / f"{slug}.html").read_text()
        assert f'<a class="notebook" href="{slug}.ipynb" download>Open as notebook</a>' in page
    exp = nbformat.read(out / "answers" / "exp.ipynb", as_version=4)
    assert "[Another question?](other.html)" in exp.cells[-1].source
    assert any(o["output_type"] == "display_data" for c in exp.cells if c.cell_type == "code" for o in c.outputs)
