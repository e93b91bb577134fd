"""Search throughput on a realistic mix (issue 19, item 8): /api/search under wrk, Zipf over the
evaluation set's distinct questions, against a minimal Flask view returning the same bytes.

Both run under the README's gunicorn command (`-w 2 -k gthread --threads 8`) on loopback; the
service over `answers/` and a database that already holds every text's vector (`kb index`), so it
embeds nothing at start; the floor (bench/floor_app.py) with the bytes the service returned for each
of the same URLs. wrk picks each request's question from a Zipf distribution (s = 1.1) over the
questions (a few are asked often, most rarely: the question-embedding cache sees hits and misses
as a real site would). Rounds run in ABBA order (service, floor, floor, service) after a warm-up.
In-process, the same mix's look-up time as served (question-embedding LRU and response cache) against
every question embedded and ranked afresh.

    .venv/bin/python -m bench.search_mix            # prints the table; needs wrk (apt-get install wrk)
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np

from kb.search import evaluation

from .common import PYTHON, ROOT, env, log, median, table
from .serving import Server, ensure_wrk, parse_wrk

QUESTIONS = 600
ZIPF_S = 1.1
# Two loads: saturation (32 connections, twice the service's 16 threads: requests queue, which is
# what req/s measures) and the latency a learner sees while the site is busy but not overloaded
# (8 connections, each sending its next request as soon as the last is answered).
LOADS = {"saturated": ["-t2", "-c32", "-d10s", "--latency"], "busy": ["-t2", "-c8", "-d10s", "--latency"]}
SEED_DB = ROOT / ".kb" / "bench-lookup.sqlite3"   # kb.search.fit's cache: every text's vector

LUA = """
local paths = {%(paths)s}
local cumulative = {%(cumulative)s}
math.randomseed(%(seed)d)
request = function()
  local r = math.random()
  local lo, hi = 1, #cumulative
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cumulative[mid] < r then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", paths[lo])
end
"""


def questions(n: int = QUESTIONS) -> list[str]:
    """n distinct questions of the evaluation set (dev, test and own phrasings), first lines only
    (a URL carries a search box's question, not a whole post), in a fixed shuffled order."""
    seen, out = set(), []
    for split in ("dev", "test"):
        for question, _ in evaluation.entries(split):
            line = " ".join(question.split("\n")[0].split())[:200]
            if line.lower() not in seen:
                seen.add(line.lower())
                out.append(line)
    np.random.default_rng(0).shuffle(out)
    return out[:n]


def zipf_weights(n: int, s: float = ZIPF_S) -> np.ndarray:
    w = 1 / np.arange(1, n + 1) ** s
    return w / w.sum()


def lua_script(paths: list[str], weights: np.ndarray, seed: int = 1) -> str:
    quoted = ",".join(json.dumps(p) for p in paths)
    cumulative = ",".join(f"{c:.8f}" for c in np.minimum(np.cumsum(weights), 1.0))
    return LUA % {"paths": quoted, "cumulative": cumulative, "seed": seed}


def in_process(questions_: list[str], weights: np.ndarray, requests: int = 3000) -> dict:
    """p50/p99 of `Lookup.lookup` over the mix in one thread: as served (the question-embedding
    LRU and the per-state response cache) against every question embedded and ranked afresh."""
    from kb.search.fit import build

    lookup = build(SEED_DB)
    picks = np.random.default_rng(2).choice(len(questions_), size=requests, p=weights)
    out = {}
    for mode in ("cache", "no cache"):
        lookup._queries.clear()
        lookup._responses.clear()
        times = []
        for i in picks:
            if mode == "no cache":      # what a look-up costs when neither cache has the question
                lookup._queries.clear()
                lookup._responses.clear()
            start = time.perf_counter()
            lookup.lookup(questions_[i], 5)
            times.append(time.perf_counter() - start)
        out[mode] = {"p50": float(np.percentile(times, 50) * 1000), "p99": float(np.percentile(times, 99) * 1000),
                     "per_s_one_thread": requests / sum(times)}
    return out


def run(rounds: int = 2) -> dict:
    wrk_path = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="kb-bench-mix-"))
    db = work / "kb.sqlite3"
    if SEED_DB.exists():
        shutil.copyfile(SEED_DB, db)
    indexed = subprocess.run([PYTHON, "-m", "kb", "index", "--db", str(db), "answers"], cwd=ROOT, env=env(),
                             capture_output=True, text=True, check=True)
    log(indexed.stdout.strip())
    chosen = questions()
    weights = zipf_weights(len(chosen))
    paths = [f"/api/search?q={urllib.parse.quote_plus(q)}" for q in chosen]
    servers: dict[str, Server] = {}
    results: dict = {"questions": len(chosen), "zipf_s": ZIPF_S, "rounds": {f"{name} {load}": [] for name in ("service", "floor") for load in LOADS}}
    try:
        servers["service"] = Server("service:create_app()", {"KB_ANSWERS": "answers", "KB_DB": str(db),
                                                             "KB_RUN_MISSING": "off"}, work / "service.log")
        servers["service"].wait_ready("/healthz")
        pages = {}
        for path in paths:                    # the floor's bytes; also proves the service is ready
            status, body, content_type = servers["service"].get(path)
            if not json.loads(body)["ready"]:
                raise RuntimeError("the service started on an indexed database should search by meaning at once")
            pages[path] = {"body": base64.b64encode(body).decode(), "content_type": content_type}
        (work / "floor.json").write_text(json.dumps(pages))
        servers["floor"] = Server("bench.floor_app:create_app()", {"BENCH_FLOOR_PAGES": str(work / "floor.json")},
                                  work / "floor.log")
        servers["floor"].wait_ready(paths[0])
        script = work / "mix.lua"
        script.write_text(lua_script(paths, weights))
        for name in ("service", "floor"):     # warm-up: the first hits fill caches
            subprocess.run([wrk_path, "-t2", "-c8", "-d3s", "-s", str(script), servers[name].base], capture_output=True)
        for _ in range(rounds):
            for load, args in LOADS.items():
                for name in ("service", "floor", "floor", "service"):
                    out = subprocess.run([wrk_path, *args, "-s", str(script), servers[name].base],
                                         capture_output=True, text=True, check=True)
                    results["rounds"][f"{name} {load}"].append(parse_wrk(out.stdout))
    finally:
        for server in servers.values():
            server.stop()
    results["in_process"] = in_process(chosen, weights)
    shutil.rmtree(work, ignore_errors=True)
    return results


def report(r: dict) -> tuple[str, dict]:
    rows = []
    summary = {}
    for load, args in LOADS.items():
        for name in ("service", "floor"):
            runs = r["rounds"][f"{name} {load}"]
            cell = {k: median([x[k] for x in runs]) for k in ("rps", "p50", "p99")}
            cell["errors"] = sum(x["non2xx"] + x["socket_errors"] for x in runs)
            summary[f"{name} {load}"] = cell
            rows.append([f"{load} (`wrk {' '.join(args)}`)",
                         name if name == "service" else "floor (minimal Flask view, same bytes)",
                         f"{cell['rps']:.0f}", f"{cell['p50']:.1f}", f"{cell['p99']:.1f}", cell["errors"]])
    ratio = summary["service saturated"]["rps"] / summary["floor saturated"]["rps"]
    ip = r["in_process"]
    text = "\n".join([
        "## Search throughput on a Zipf mix (issue 19)", "",
        "`/api/search`, each request's question drawn from a Zipf distribution "
        f"(s = {r['zipf_s']}) over {r['questions']} distinct questions of the evaluation set; gunicorn "
        "`-w 2 -k gthread --threads 8`; medians of the rounds (ABBA). Saturated: more connections than "
        "threads, so requests queue (req/s); busy: 8 connections back to back (the latency under load).", "",
        table(["load", "server", "req/s", "p50 ms", "p99 ms", "errors"], rows), "",
        f"Service / floor, saturated: {ratio:.0%} of the floor's requests per second.", "",
        "In-process `Lookup.lookup` over the same mix (one thread): "
        f"as served (question-embedding LRU and response cache) p50 {ip['cache']['p50']:.1f} ms, p99 {ip['cache']['p99']:.1f} ms; "
        f"every question embedded and ranked afresh p50 {ip['no cache']['p50']:.1f} ms, p99 {ip['no cache']['p99']:.1f} ms "
        f"({ip['no cache']['p50'] / max(ip['cache']['p50'], 1e-9):.1f}x at p50).", ""])
    met = {"search mix: >= 1,000 req/s (saturated)": summary["service saturated"]["rps"] >= 1000,
           "search mix: p99 <= 50 ms (busy)": summary["service busy"]["p99"] <= 50}
    return text, met


if __name__ == "__main__":
    result = run(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    text, met = report(result)
    print(text)
    for name, ok in met.items():
        print(f"{name}: {'met' if ok else 'NOT met'}")
    (ROOT / "bench" / "search-mix-results.json").write_text(json.dumps(result, indent=1, default=float))
