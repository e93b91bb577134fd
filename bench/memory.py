"""Memory per gunicorn worker: the README's plain command (each worker loads its own model)
against `deploy/gunicorn.conf.py` (the model loaded once in the master, before the fork), with 2
and 4 workers, over the real answers and over 10,000 synthetic real-sized ones, measured in the
same run (issue 21, item 2).

    python -m bench.memory [--sizes real 10000] [--workers 2 4] [--shapes plain config]
                           [--db DB] [--answers answers] [--out bench/memory-results.md]

Run it from the repository's root with the project's interpreter (`.venv/bin/python -m
bench.memory`), so that the servers import this checkout's `kb` and `service`. It needs nothing
prepared:

- `real`: the answers in `--answers` (default `answers/`). Their embeddings come from `--db`
  if given (`kb index`, `kb check` or the tests' `real-answers.sqlite3`), otherwise from a fresh
  `python -m kb index --db <tmp>/kb.sqlite3 <answers>` (the model embeds every text: ~1 min).
- `N` (a number): N synthetic answers of the real answers' size (`bench.scale.generate`, no code
  snippets) with random unit vectors stored as their embeddings (`bench.lookup.seed_random_vectors`:
  the model never embeds them). Both are cached under `.kb/bench-memory/` (gitignored) and
  reused while bench/scale.py, kb/search/lookup.py and the model's cache key are unchanged.

Each measurement starts gunicorn on a copy of the database with KB_RUN_MISSING=off (no snippet
runs; evidence is not needed to measure memory), waits for /healthz, then sends searches until
every worker has answered at least `READY_ANSWERS` of them with `"ready": true` (its semantic
state built, the model run on questions); which worker answered a request is read from the
server's end of its connection (/proc/net/tcp and the workers' file descriptors). Per worker,
from /proc/PID/smaps_rollup: RSS, PSS (shared pages divided among their sharers), Private_Dirty
(pages only this worker has written: what each extra worker really costs) and Shared (clean +
dirty pages it shares). The JSON rows printed at the end also carry, for the first worker, its
largest private mappings (from /proc/PID/smaps: a big NumPy array is a mapping of its own).
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".kb" / "bench-memory"
QUESTIONS = ["why is relu better than sigmoid", "my cost becomes nan", "why average dW over m",
             "what does batch norm do at test time", "why scale attention by sqrt dk", "what is dropout for",
             "why do gradients vanish", "how does adam correct its bias"]
SHAPES = ("plain", "config")
READY_ANSWERS = 3  # ready searches each worker must answer before it is measured
DEADLINE_S = 1200  # for a server to start and every worker to answer READY_ANSWERS searches
DIMENSION = 384


def log(message: str) -> None:
    print(f"[memory {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def size(text: str) -> str:
    """An argparse type: `real` or a number of synthetic answers."""
    if text == "real":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a size is 'real' or a number of synthetic answers, not {text!r}")
    return str(int(text))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rollup(pid: int) -> dict[str, int]:
    """kB fields of /proc/PID/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields


def largest_private(pid: int, count: int = 8) -> list[dict]:
    """The process's mappings with the most private dirty memory (/proc/PID/smaps), MiB."""
    mappings: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
            start, end = (int(x, 16) for x in head[0].split("-"))
            current = {"mapping": head[5] if len(head) > 5 else "[anonymous]", "size_mib": (end - start) / 2**20}
            mappings.append(current)
        elif current is not None and head[0] in ("Private_Dirty:", "Rss:"):
            current[head[0][:-1].lower() + "_mib"] = int(head[1]) / 1024
    mappings.sort(key=lambda m: -m.get("private_dirty_mib", 0))
    return [{k: round(v, 1) if isinstance(v, float) else v for k, v in m.items()} for m in mappings[:count]]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == pid and "gunicorn" in (entry / "cmdline").read_text():
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile
                continue
    return sorted(found)


def connection_owner(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of the processes holds the server's end of the connection from client_port."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == server_port and int(fields[2].split(":")[1], 16) == client_port:
            inode = fields[9]
            break
    if inode is None or inode == "0":
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def search(port: int, question: str, pids: list[int]) -> tuple[int | None, bool]:
    """(the worker that answered, whether its answer was `ready`), on a connection of its own;
    the worker still holds the connection (keep-alive) when it is looked up."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request("GET", f"/api/search?q={quote_plus(question)}")
        response = connection.getresponse()
        body = response.read()
        owner = connection_owner(port, connection.sock.getsockname()[1], pids)
        return owner, response.status == 200 and json.loads(body)["ready"] is True
    finally:
        connection.close()


def wait_until_every_worker_is_ready(port: int, server: subprocess.Popen, workers: int, deadline: float) -> dict[int, int]:
    """Send searches, a few at once, until each worker has answered READY_ANSWERS of them with
    `ready` true; return how many each answered so."""
    while True:
        probe = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            probe.request("GET", "/healthz")
            probe.getresponse().read()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.5)
        finally:
            probe.close()
    ready: dict[int, int] = {}
    sent = 0
    with ThreadPoolExecutor(2 * workers) as pool:
        while True:
            pids = children(server.pid)
            if len(pids) == workers and all(ready.get(pid, 0) >= READY_ANSWERS for pid in pids):
                return {pid: ready[pid] for pid in pids}
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"not every worker answered {READY_ANSWERS} ready searches in time: {ready}, "
                                   f"workers {pids}")
            questions = [QUESTIONS[(sent + k) % len(QUESTIONS)] for k in range(2 * workers)]
            sent += len(questions)
            for owner, is_ready in pool.map(partial(search, port, pids=pids), questions):
                if owner is not None and is_ready:
                    ready[owner] = ready.get(owner, 0) + 1


def measure(shape: str, workers: int, db: Path, answers: Path) -> dict:
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="kb-mem-"))
    copy = work / "kb.sqlite3"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    env = {**os.environ, "KB_ANSWERS": str(answers), "KB_DB": str(copy), "KB_RUN_MISSING": "off",
           "KB_WORKERS": str(workers), "TMPDIR": str(work)}
    if shape == "config":
        command = [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "-b", f"127.0.0.1:{port}"]
    else:  # the README's command before deploy/gunicorn.conf.py
        command = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", "gthread", "--threads", "8",
                   "-b", f"127.0.0.1:{port}", "--no-control-socket"]
    started = time.monotonic()
    with open(work / "log", "w") as server_log:
        server = subprocess.Popen([*command, "service:create_app()"], cwd=ROOT, env=env, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=server_log)
    try:
        answered = wait_until_every_worker_is_ready(port, server, workers, started + DEADLINE_S)
        ready_s = time.monotonic() - started
        time.sleep(1)
        pids = sorted(answered)
        per = [rollup(pid) for pid in pids]
        master = rollup(server.pid)
        mean = {k: sum(p[k] for p in per) / len(per) / 1024 for k in ("Rss", "Pss", "Private_Dirty")}
        mean["Shared"] = sum(p["Shared_Clean"] + p["Shared_Dirty"] for p in per) / len(per) / 1024
        return {"shape": shape, "workers": len(pids), "master_rss_mib": round(master["Rss"] / 1024, 1),
                **{f"{k.lower()}_mib": round(v, 1) for k, v in mean.items()},
                "total_pss_mib": round(sum(p["Pss"] for p in per) / 1024 + master["Pss"] / 1024, 1),
                "anonymous_mib": round(sum(p["Anonymous"] for p in per) / len(per) / 1024, 1),
                "ready_searches": list(answered.values()), "ready_s": round(ready_s, 1),
                "largest_private_first_worker": largest_private(pids[0])}
    except Exception:
        log(f"server log ({work / 'log'}):\n" + (work / "log").read_text()[-3000:])
        raise
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
        shutil.rmtree(work, ignore_errors=True)


def real_database(answers: Path, work: Path) -> Path:
    """A database holding the answers' embeddings: `kb index` into a fresh file (the model runs)."""
    db = work / "kb.sqlite3"
    log(f"embedding the answers of {answers} into {db} (python -m kb index)")
    done = subprocess.run([sys.executable, "-m", "kb", "index", "--db", str(db), str(answers)], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"kb index failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return db


def synthetic(n: int) -> tuple[Path, Path]:
    """(folder, database) of n synthetic answers with random stored vectors, cached in CACHE."""
    from bench import lookup, scale
    from kb.format.answer import load_answers
    from kb.search.embeddings import MODEL_KEY

    folder, db, marker = CACHE / f"answers-{n}", CACHE / f"synthetic-{n}.sqlite3", CACHE / f"synthetic-{n}.json"
    recipe = {"n": n, "model_key": MODEL_KEY,
              **{name: hashlib.sha256((ROOT / name).read_bytes()).hexdigest()
                 for name in ("bench/scale.py", "bench/lookup.py", "kb/search/lookup.py")}}
    if marker.is_file() and json.loads(marker.read_text()) == recipe and folder.is_dir() and db.is_file():
        log(f"{n} synthetic answers: cached in {folder}")
        return folder, db
    marker.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    for stale in CACHE.glob(f"synthetic-{n}.sqlite3*"):
        stale.unlink()
    log(f"{n} synthetic answers: generating them in {folder}")
    scale.generate(folder, n)
    answers, errors = load_answers([folder])
    if errors or len(answers) != n:
        raise RuntimeError(f"{len(answers)} synthetic answers of {n} loaded: {errors[:3]}")
    log(f"{n} synthetic answers: storing random vectors in {db}")
    lookup.seed_random_vectors(db, answers.values())
    marker.write_text(json.dumps(recipe, indent=1) + "\n")
    return folder, db


def texts(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT count(*) FROM embeddings").fetchone()[0]


def report(sets: list[dict], rows: list[dict]) -> str:
    described = "; ".join(
        f"{s['label']}: {s['texts']:,} texts embedded, a vectors matrix of {s['texts'] * DIMENSION * 4 / 2**20:.0f} MiB "
        f"(float32 x {DIMENSION})" for s in sets)
    lines = ["# Memory per gunicorn worker", "",
             "`python -m bench.memory` (issue 21, item 2). Answers: the real ones in `answers/`, and synthetic "
             "ones of the real answers' size (`bench.scale.generate`: no code snippets) with random vectors stored "
             f"as their embeddings. {described}. plain: the README's old "
             "`gunicorn -w N -k gthread --threads 8`; config: `gunicorn -c deploy/gunicorn.conf.py` (model loaded "
             "in the master before the fork). Servers started with KB_RUN_MISSING=off, measured after every worker "
             f"answered {READY_ANSWERS}+ searches with its semantic state ready. Means per worker, MiB, from "
             "/proc/PID/smaps_rollup.", "",
             "| answers | workers | shape | RSS | PSS | Private_Dirty | Shared | master RSS | PSS of all (master + workers) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['answers']} | {r['workers']} | {r['shape']} | {r['rss_mib']} | {r['pss_mib']} | "
                     f"{r['private_dirty_mib']} | {round(r['shared_mib'], 1)} | {r['master_rss_mib']} | "
                     f"{r['total_pss_mib']} |")
    lines.append("")
    for s in sets:
        for n in sorted({r["workers"] for r in rows if r["answers"] == s["label"]}):
            shapes = {r["shape"]: r for r in rows if r["answers"] == s["label"] and r["workers"] == n}
            if len(shapes) == 2:
                plain, config = shapes["plain"], shapes["config"]
                lines.append(f"- {s['label']}, {n} workers: private dirty per worker "
                             f"{config['private_dirty_mib'] / plain['private_dirty_mib']:.2f}x of plain's; "
                             f"PSS of all processes {config['total_pss_mib'] / plain['total_pss_mib']:.2f}x.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=size, nargs="+", default=["real", "10000"],
                        help="'real' (the answers in --answers) and/or numbers of synthetic answers (default: real 10000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--shapes", choices=SHAPES, nargs="+", default=list(SHAPES))
    parser.add_argument("--db", type=Path, help="a database holding the real answers' embeddings "
                                                "(default: made with `kb index` in a temporary directory)")
    parser.add_argument("--answers", type=Path, default=ROOT / "answers")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "memory-results.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kb-mem-db-"))
    started = time.monotonic()
    try:
        sets, rows = [], []
        for chosen in args.sizes:
            if chosen == "real":
                folder = args.answers.resolve()
                db = args.db.resolve() if args.db else real_database(folder, work)
                label = f"{len(list(folder.glob('*.md'))):,} real"
            else:
                folder, db = synthetic(int(chosen))
                label = f"{int(chosen):,} synthetic"
            sets.append({"label": label, "texts": texts(db)})
            for n in args.workers:
                for shape in args.shapes:
                    log(f"{label} answers, {n} workers, {shape}")
                    row = {"answers": label, **measure(shape, n, db, folder)}
                    log(f"  private dirty {row['private_dirty_mib']} MiB per worker, PSS of all {row['total_pss_mib']} "
                        f"MiB, every worker ready after {row['ready_s']} s")
                    rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(sets, rows)
    args.out.write_text(text)
    print(text)
    print(json.dumps(rows, indent=1))
    log(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
