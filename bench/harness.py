"""The baselines' way of running an answer's snippets, as close to the runner's child as it gets.

One function, `run_answer`, does what `kb.run.child.run_answer` does minus the isolation:
seed NumPy's and Python's RNGs, give the snippets one fresh namespace with a `check(...)` that
records claims (values rendered with the runner's own `show`), capture each snippet's stdout,
save every figure a snippet leaves open as SVG (as the runner does) and close it. It is used by
three of the baselines of `bench/overhead.py`:

- exec: `python bench/harness.py serve` preloads like the fork server (`_preload`: NumPy,
  matplotlib Agg, one SVG save, gc.freeze) and then runs the answers it is sent, one after the
  other in that one process, timing each;
- subprocess: `python bench/harness.py one` per answer: a fresh interpreter that imports NumPy
  and matplotlib, runs one answer (read as JSON on stdin) and exits;
- kernel: `kernel_setup` is the first cell of the notebook built for each answer; it defines the
  same `check` and registers a post-cell hook that saves and closes figures the same way.
"""
from __future__ import annotations

import io
import json
import random
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kb.run.child import show  # noqa: E402 - the runner's rendering of checked values

SEED = 0


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "kb"
    import matplotlib.pyplot as plt

    return plt


def save_figures(plt) -> list[str]:
    """Every open figure as SVG text, then close them all (what the runner keeps)."""
    svgs = []
    for number in plt.get_fignums():
        buffer = io.StringIO()
        plt.figure(number).savefig(buffer, format="svg", bbox_inches="tight")
        svgs.append(buffer.getvalue())
    plt.close("all")
    return svgs


def run_answer(answer: dict) -> dict:
    """Run {"path", "snippets": [{"line", "code"}]} in a fresh namespace; a small summary back."""
    import numpy as np

    plt = _matplotlib()
    np.random.seed(SEED)
    random.seed(SEED)
    checks: list[tuple] = []

    def check(claim, condition, value=None):
        checks.append((str(claim), bool(condition), show(value)))
        return bool(condition)

    namespace = {"__name__": "__main__", "check": check}
    figures = errors = 0
    for snippet in answer["snippets"]:
        source = "\n" * snippet["line"] + snippet["code"]
        out, err = io.StringIO(), io.StringIO()
        try:
            with redirect_stdout(out), redirect_stderr(err):
                exec(compile(source, answer["path"], "exec"), namespace)
        except BaseException:  # noqa: BLE001 - as the runner: an error fails the snippet
            errors += 1
            figures += len(save_figures(plt))
            break
        figures += len(save_figures(plt))
    return {"checks": len(checks), "passed": sum(c[1] for c in checks), "figures": figures, "errors": errors}


def answer_request(answer) -> dict:
    """The JSON-able request for a `kb.format.answer.Answer`: what the fork server is sent."""
    return {"slug": answer.slug, "path": answer.path,
            "snippets": [{"line": s.line, "code": s.code} for s in answer.runnable]}


# --- the Jupyter kernel baseline -------------------------------------------------------------

KERNEL_SETUP = """\
import sys
sys.path.insert(0, {root!r})
from bench.harness import kernel_setup
kernel_setup(get_ipython())
del kernel_setup, sys
"""


def kernel_setup(ipython) -> None:
    """First cell of each answer's notebook: seed, define `check`, save figures after each cell."""
    import numpy as np

    plt = _matplotlib()
    np.random.seed(SEED)
    random.seed(SEED)
    checks = []

    def check(claim, condition, value=None):
        checks.append((str(claim), bool(condition), show(value)))
        return bool(condition)

    ipython.user_ns["check"] = check
    ipython.user_ns["_kb_checks"] = checks
    ipython.events.register("post_run_cell", lambda result: save_figures(plt))


def notebook(answer: dict):
    """A notebook whose cells are the setup and then the answer's snippets, in order."""
    import nbformat

    cells = [nbformat.v4.new_code_cell(KERNEL_SETUP.format(root=str(ROOT)))]
    cells += [nbformat.v4.new_code_cell(s["code"]) for s in answer["snippets"]]
    cells.append(nbformat.v4.new_code_cell("print(len(_kb_checks), sum(c[1] for c in _kb_checks))"))
    return nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def run_in_kernel(answer: dict, timeout: float = 120) -> dict:
    """Execute the answer's notebook in a fresh kernel, as MyST-NB / Jupyter Book do per page."""
    from nbclient import NotebookClient

    nb = notebook(answer)
    import subprocess

    # stderr of the kernel process is dropped (its TCP warning); cell outputs still come back.
    NotebookClient(nb, kernel_name="python3", timeout=timeout, allow_errors=True).execute(stderr=subprocess.DEVNULL)
    last = nb.cells[-1].outputs
    text = "".join(o.get("text", "") for o in last if o.get("output_type") == "stream").split()
    errors = sum(o.get("output_type") == "error" for c in nb.cells for o in c.outputs)
    return {"checks": int(text[0]) if text else 0, "passed": int(text[1]) if len(text) > 1 else 0,
            "errors": errors}


# --- entry points ------------------------------------------------------------------------------

def _timed_run(answer: dict) -> dict:
    """run_answer with its wall time, CPU time and minor page faults."""
    import resource

    before, cpu, started = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
    summary = run_answer(answer)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"slug": answer["slug"], "ms": (time.perf_counter() - started) * 1000,
            "cpu_ms": (time.process_time() - cpu) * 1000, "minflt": after.ru_minflt - before.ru_minflt, **summary}


def _forked_run(answer: dict) -> dict:
    """The same in a child forked from this (warm) worker: the cost of a fresh process's memory."""
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, json.dumps(_timed_run(answer)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def _serve() -> None:
    """The in-process baseline as a worker: preload like the fork server, say `ready`, then run
    one answer per JSON line on stdin (in this process, or with "fork": true in a child forked
    from it), answering with its times on stdout."""
    from kb.run.server import _preload

    _preload()
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        answer = json.loads(line)
        result = _forked_run(answer) if answer.get("fork") else _timed_run(answer)
        out.write(json.dumps(result) + "\n")
        out.flush()


def _one() -> None:
    json.dump(run_answer(json.load(sys.stdin)), sys.stdout)


if __name__ == "__main__":
    {"serve": _serve, "one": _one}[sys.argv[1]]()
