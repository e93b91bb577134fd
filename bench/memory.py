"""Memory per gunicorn worker: the README's plain command (each worker loads its own model)
against `deploy/gunicorn.conf.py` (the model loaded once in the master, before the fork), with 2
and 4 workers, measured in the same run.

    .venv/bin/python bench/memory.py --db DB [--answers answers] [--workers 2 4] [--out bench/memory-results.md]

DB should hold the answers' evidence and embeddings (`kb check` and one start of the service, or
the tests' `real-answers.sqlite3`): the servers are started with KB_RUN_MISSING=off and then
asked enough searches that every worker has run the model. Per worker, from
/proc/PID/smaps_rollup: RSS, PSS (shared pages divided among their sharers), Private_Dirty
(pages only this worker has written: what each extra worker really costs) and Shared (clean +
dirty pages it shares).
"""
from __future__ import annotations

import argparse
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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ["why is relu better than sigmoid", "my cost becomes nan", "why average dW over m",
             "what does batch norm do at test time", "why scale attention by sqrt dk", "what is dropout for",
             "why do gradients vanish", "how does adam correct its bias"]


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


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid and "gunicorn" in (entry / "cmdline").read_text():
                found.append(int(entry.name))
    return found


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
    server = subprocess.Popen([*command, "service:create_app()"], cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=open(work / "log", "w"))
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=5).read()
                break
            except OSError:
                time.sleep(0.5)
        for round_ in range(6 * workers):  # every worker gets some (connections spread over them)
            question = QUESTIONS[round_ % len(QUESTIONS)]
            urllib.request.urlopen(f"{base}/api/search?q={question.replace(' ', '+')}", timeout=600).read()
        time.sleep(1)
        pids = children(server.pid)
        per = [rollup(pid) for pid in pids]
        master = rollup(server.pid)
        mean = {k: sum(p[k] for p in per) / len(per) / 1024 for k in ("Rss", "Pss", "Private_Dirty")}
        mean["Shared"] = sum(p["Shared_Clean"] + p["Shared_Dirty"] for p in per) / len(per) / 1024
        return {"shape": shape, "workers": len(pids), "master_rss_mib": master["Rss"] / 1024,
                **{f"{k.lower()}_mib": round(v, 1) for k, v in mean.items()},
                "total_pss_mib": round(sum(p["Pss"] for p in per) / 1024 + master["Pss"] / 1024, 1)}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--answers", type=Path, default=ROOT / "answers")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "memory-results.md")
    args = parser.parse_args()
    rows = [measure(shape, n, args.db, args.answers) for n in args.workers for shape in ("plain", "config")]
    lines = ["# Memory per gunicorn worker", "",
             f"`python bench/memory.py` ({len(list(args.answers.glob('*.md')))} answers). plain: the README's old "
             "`gunicorn -w N -k gthread --threads 8`; config: `gunicorn -c deploy/gunicorn.conf.py` (model loaded "
             "in the master before the fork). Means per worker, MiB, from /proc/PID/smaps_rollup.", "",
             "| workers | shape | RSS | PSS | Private_Dirty | Shared | master RSS | PSS of all (master + workers) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['shape']} | {r['rss_mib']} | {r['pss_mib']} | {r['private_dirty_mib']} | "
                     f"{round(r['shared_mib'], 1)} | {round(r['master_rss_mib'], 1)} | {r['total_pss_mib']} |")
    lines.append("")
    for n in args.workers:
        plain, config = (next(r for r in rows if r["workers"] == n and r["shape"] == s) for s in ("plain", "config"))
        lines.append(f"- {n} workers: private dirty per worker {config['private_dirty_mib'] / plain['private_dirty_mib']:.2f}x "
                     f"of plain's; PSS of all processes {config['total_pss_mib'] / plain['total_pss_mib']:.2f}x.")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
