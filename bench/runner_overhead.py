"""Per-answer isolation overhead of the runner, beside two baselines measured in the same run.

- fresh: a new `python -c "import numpy"` per answer (what a naive runner pays);
- fork: a bare os.fork() + exit + wait of this warm interpreter (NumPy imported);
- runner: `Runner.run` of an answer whose only snippet is `pass` (fork server, socket,
  limits, scratch directory, evidence assembly), back to back, and spaced 10 ms apart as
  answers are in practice (a real answer runs for 100 ms or more, time enough for the fork
  server to have its next spare child forked and warmed before the next request).
Prints medians with the interquartile range, and runner/fork as a ratio.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy  # noqa: E402,F401 - the fork baseline forks an interpreter that imported NumPy

from kb.format.answer import Answer, Snippet  # noqa: E402
from kb.run.runner import Runner  # noqa: E402


def timed(action, repeats: int, gap: float = 0.0) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
        time.sleep(gap)
    return samples


def bare_fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def fresh_python():
    subprocess.run([sys.executable, "-c", "import numpy"], check=True)


def summary(samples: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(samples, n=4)
    return median, q1, q3


def measure(repeats: int = 200) -> dict:
    empty = Answer(slug="empty", path="empty.md", title="t", summary="s", body="", body_line=1,
                   snippets=[Snippet(0, 1, "pass")])
    with Runner() as runner:
        runner.run(empty)  # start the fork server outside the measurement
        results = {"runner": summary(timed(lambda: runner.run(empty), repeats)),
                   "spaced": summary(timed(lambda: runner.run(empty), repeats, gap=0.01))}
    results["fork"] = summary(timed(bare_fork, repeats))
    results["fresh"] = summary(timed(fresh_python, max(repeats // 10, 10)))
    return results


if __name__ == "__main__":
    results = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
    for name, (median, q1, q3) in results.items():
        print(f"{name:<7} median {median:8.2f} ms  (IQR {q1:.2f}–{q3:.2f})")
    print(f"runner / bare fork = {results['runner'][0] / results['fork'][0]:.2f}x back to back, "
          f"{results['spaced'][0] / results['fork'][0]:.2f}x spaced; "
          f"fresh python / runner = {results['fresh'][0] / results['runner'][0]:.1f}x")
