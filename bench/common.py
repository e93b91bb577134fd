"""Small helpers shared by the benchmarks: statistics, tables, the environment they run in."""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# What the runner's fork server sets for the snippets it runs; every baseline gets the same, so
# that no mode is faster only because it got more BLAS threads.
SNIPPET_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"}


def env(**extra) -> dict:
    out = {**os.environ, **SNIPPET_ENV, **extra}
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return out


def percentile(samples, q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    data = sorted(samples)
    if not data:
        return float("nan")
    if len(data) == 1:
        return data[0]
    position = (len(data) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (position - low)


def median(samples) -> float:
    return statistics.median(samples) if samples else float("nan")


def spread(samples, fmt: str = "{:.2f}") -> str:
    """min–max of a few repeats."""
    if not samples:
        return "–"
    return f"{fmt.format(min(samples))}–{fmt.format(max(samples))}"


def med_spread(samples, fmt: str = "{:.2f}") -> str:
    """'median (min–max)' for a few repeats."""
    if not samples:
        return "–"
    if len(samples) == 1:
        return fmt.format(samples[0])
    return f"{fmt.format(median(samples))} ({spread(samples, fmt)})"


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
