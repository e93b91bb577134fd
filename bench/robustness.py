"""The cost of issue 20's bounds (the fork server in a PID namespace watching each run's memory
and processes, every snippet's evidence bounded and cleaned, `?was=` from the page cache), as
ratios to the code before them, measured in the same run on the same machine.

    .venv/bin/python bench/robustness.py [--base COMMIT] [--rounds N]

The tree before is `git archive COMMIT` (default: the commit before issue 20's first) in a
temporary directory, imported through PYTHONPATH; both trees run the same answers (this
checkout's `answers/`) with the same interpreter and packages, alternating round by round so
that the machine's noise falls on both alike. Measures:

- `kb check --no-cache` over the whole knowledge base (wall time, -j 2);
- the answer page from the page cache (`GET /answers/<slug>`, Flask's test client), and the
  page "Run again" comes back to (`GET /answers/<slug>?was=…`: before, a full render each time).

Writes bench/robustness.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SLUG = "softmax"

PAGES = r'''
import json, statistics, sys, time
from service import create_app
app = create_app({"KB_ANSWERS": sys.argv[1], "KB_DB": sys.argv[2], "KB_RUN_MISSING": "off", "TESTING": True})
client = app.test_client()
slug, n = sys.argv[3], int(sys.argv[4])
def timed(url):
    for _ in range(20):
        assert client.get(url).status_code == 200
    out = []
    for _ in range(n):
        started = time.perf_counter()
        client.get(url)
        out.append(time.perf_counter() - started)
    return statistics.median(out) * 1000
print(json.dumps({"page_ms": timed(f"/answers/{slug}"), "was_ms": timed(f"/answers/{slug}?was=passed.1.1")}))
app.extensions["kb"].close()
'''


def run_tree(tree: Path, work: Path, label: str, seed: Path | None) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    db = work / f"{label}.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    if seed is not None:  # a store with the embeddings already computed: the page test starts in seconds
        with sqlite3.connect(seed) as source, sqlite3.connect(db) as target:
            source.backup(target)
    started = time.perf_counter()
    check = subprocess.run([sys.executable, "-m", "kb", "check", str(ROOT / "answers"), "--no-cache", "-j", "2",
                            "--db", str(db)], env=env, cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if check.returncode not in (0, 1):
        raise SystemExit(f"kb check failed in {tree}: {check.stderr[-2000:]}")
    pages = subprocess.run([sys.executable, "-c", PAGES, str(ROOT / "answers"), str(db), SLUG, "300"],
                           env=env, cwd=work, capture_output=True, text=True)
    if pages.returncode != 0:
        raise SystemExit(f"pages failed in {tree}: {pages.stderr[-2000:]}")
    return {"check_s": seconds, **json.loads(pages.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="ab82451", help="the commit before issue 20 (default: ab82451)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed-db", type=Path, default=None,
                        help="a store whose embeddings are computed (e.g. .kb/kb.sqlite3): copied for each tree")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kb-robust-bench-"))
    base = work / "base"
    base.mkdir()
    try:
        archive = subprocess.run(["git", "archive", args.base, "kb", "service"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for round_ in range(args.rounds):
            order = [("before", base), ("after", ROOT)] if round_ % 2 == 0 else [("after", ROOT), ("before", base)]
            for label, tree in order:
                results[label].append(run_tree(tree, work, label, args.seed_db))
                print(label, results[label][-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {label: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for label, rows in results.items()}
    lines = [
        "# The cost of issue 20's bounds (`bench/robustness.py`)",
        "",
        f"Medians of {args.rounds} alternating rounds, this machine, the same run; before = `{args.base}`.",
        "",
        "| measure | before | after | after / before |",
        "|---|---|---|---|",
    ]
    for key, name, unit in (("check_s", "`kb check --no-cache` (whole KB, -j 2)", "s"),
                            ("page_ms", f"`GET /answers/{SLUG}` (page cache)", "ms"),
                            ("was_ms", f"`GET /answers/{SLUG}?was=…` (after Run again)", "ms")):
        b, a = med["before"][key], med["after"][key]
        lines.append(f"| {name} | {b:.3g} {unit} | {a:.3g} {unit} | {a / b:.3g} |")
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "robustness.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
