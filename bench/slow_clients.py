"""Slow clients against the gunicorn command of docs/service.md, direct and behind nginx (deploy/).

Both serve the same few answers from a database built by `kb check`. For each, normal GETs run
back to back for a while alone, then while SLOW connections send their request headers one line
a second (a connection the server drops is reopened at once, as a slowloris does). Reported:
GET latency p50/p99, GETs completed and GETs that got no answer within GET_TIMEOUT, and the
ratio of the loaded p99s. Writes bench/slow_clients.md.

    .venv/bin/python bench/slow_clients.py [--slow 50] [--seconds 15]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, ROOT, env, log, percentile, table  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from helpers import SlowClients  # noqa: E402  (the same probe the deployment test uses)

GET_TIMEOUT = 10.0
PATHS = ["/answers/softmax", "/api/answers/relu-vs-sigmoid", "/api/search?q=softmax+overflow", "/"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gets(port: int, seconds: float, paths: list[str]) -> dict:
    """GETs back to back for `seconds`: latencies (ms) of the answered ones, and the failures."""
    latencies, failures = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        path = paths[(len(latencies) + failures) % len(paths)]
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=GET_TIMEOUT)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            ok = response.status == 200
        except OSError:
            ok = False
        finally:
            connection.close()
        if ok:
            latencies.append((time.monotonic() - started) * 1000)
        else:
            failures += 1
    return {"answered": len(latencies), "failed": failures,
            "p50_ms": round(percentile(latencies, 50), 2) if latencies else None,
            "p99_ms": round(percentile(latencies, 99), 2) if latencies else None}


def wait_up(port: int, process: subprocess.Popen, within: float = 120) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not come up")


def measure(name: str, port: int, slow: int, seconds: float, paths: list[str]) -> dict:
    log(f"{name}: {seconds / 3:g} s of GETs alone")
    alone = gets(port, seconds / 3, paths)
    log(f"{name}: {seconds:g} s of GETs beside {slow} slow connections")
    clients = SlowClients(port, slow)
    clients.start()
    try:
        loaded = gets(port, seconds, paths)
    finally:
        clients.stop.set()
        clients.join(10)
    return {"alone": alone, "slow": loaded, "reopened": clients.reopened}


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=50, help="slow connections (default 50)")
    parser.add_argument("--seconds", type=float, default=15, help="seconds of GETs beside them (default 15)")
    args = parser.parse_args()
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        print("nginx is not installed (apt-get install nginx)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="kb-slowbench-"))
    processes = []
    try:
        answers = ROOT / "answers"
        db = work / "kb.sqlite3"
        log("building the evidence database with kb check (as CI does)")
        subprocess.run([PYTHON, "-m", "kb", "check", str(answers), "--db", str(db)], cwd=ROOT, env=env(),
                       capture_output=True)
        settings = env(KB_ANSWERS=str(answers), KB_DB=str(db))
        paths = PATHS

        direct_port, proxy_port, upstream_port = free_port(), free_port(), free_port()
        direct = subprocess.Popen(  # docs/service.md's production command, alone
            [PYTHON, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "8", "-b", f"127.0.0.1:{direct_port}",
             "--no-control-socket", "service:create_app()"], cwd=ROOT, env=settings, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(direct)
        proxied = subprocess.Popen([str(ROOT / "deploy" / "serve-local.sh"), str(proxy_port)], cwd=ROOT,
                                   env={**settings, "KB_UPSTREAM_PORT": str(upstream_port), "PYTHON": PYTHON},
                                   start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(proxied)
        wait_up(direct_port, direct)
        wait_up(proxy_port, proxied)

        results = {"slow_connections": args.slow, "seconds": args.seconds, "get_timeout_s": GET_TIMEOUT,
                   "direct": measure("gunicorn alone", direct_port, args.slow, args.seconds, paths),
                   "nginx": measure("behind nginx", proxy_port, args.slow, args.seconds, paths)}
    finally:
        for process in processes:
            stop(process)
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    for label, key in (("gunicorn alone (README command)", "direct"), ("gunicorn behind nginx (deploy/)", "nginx")):
        r = results[key]
        rows.append([label, r["alone"]["p50_ms"], r["alone"]["p99_ms"], r["slow"]["p50_ms"], r["slow"]["p99_ms"],
                     r["slow"]["answered"], r["slow"]["failed"], r["reopened"]])
    direct_p99, nginx_p99 = results["direct"]["slow"]["p99_ms"], results["nginx"]["slow"]["p99_ms"]
    ratio = direct_p99 / nginx_p99 if direct_p99 and nginx_p99 else None
    text = "\n".join([
        "# Slow clients: gunicorn alone vs behind nginx\n",
        f"{args.slow} connections send request headers one line a second (reopened when dropped) while one",
        f"client GETs pages, JSON and search back to back for {args.seconds:g} s (alone: {args.seconds / 3:g} s); a GET",
        f"unanswered after {GET_TIMEOUT:g} s counts as failed and is not in the percentiles. `bench/slow_clients.py`.\n",
        table(["server", "alone p50 ms", "alone p99 ms", "slow p50 ms", "slow p99 ms", "GETs answered",
               "GETs failed", "slow conns dropped"], rows),
        "",
        f"Loaded p99, direct / behind nginx: {ratio:.1f}x" if ratio else
        f"Loaded p99, direct / behind nginx: no ratio, gunicorn alone answered "
        f"{results['direct']['slow']['answered']} GETs to nginx's {results['nginx']['slow']['answered']}",
        "", "```json", json.dumps(results, indent=1), "```", ""])
    (ROOT / "bench" / "slow_clients.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
