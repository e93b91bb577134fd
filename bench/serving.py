"""Benchmark 2: serving under wrk, the service against a canned-bytes Flask floor.

Both run under the gunicorn command of docs/service.md (`-w 2 -k gthread --threads 8`) on loopback; the
service with KB_ANSWERS=answers and KB_DB a copy of a database that already holds every
answer's evidence, the floor (bench/floor_app.py) with the bytes the service returned for the
same paths. Each path is measured with `wrk -t2 -c32 -d10s --latency` in ABBA order
(service, floor, floor, service, ...) after a short warm-up of both.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from .common import PYTHON, ROOT, env, log, med_spread, median, table, verdict

PATHS = {
    "cached answer page": "/answers/gradient-averaging",
    "answer JSON": "/api/answers/gradient-averaging",
    "search JSON": "/api/search?q=why+average+dW",
}
GUNICORN = str(Path(PYTHON).parent / "gunicorn")
WRK_ARGS = ["-t2", "-c32", "-d10s", "--latency"]


def ensure_wrk() -> str:
    """wrk's path, installing Debian's package when it is missing (as .ci/run does for chromium)."""
    found = shutil.which("wrk")
    if found:
        return found
    log("installing wrk (apt-get install wrk)")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=apt_env)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True,
                   env=apt_env, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed and could not be installed")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One gunicorn with docs/service.md's flags, started and stopped by us (its pid only)."""

    def __init__(self, target: str, extra_env: dict, logfile: Path):
        self.port = free_port()
        self.log = open(logfile, "wb")
        self.process = subprocess.Popen(
            [GUNICORN, "-w", "2", "-k", "gthread", "--threads", "8", "-b", f"127.0.0.1:{self.port}", target],
            cwd=ROOT, env=env(**extra_env), stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: see {self.log.name}")
            try:
                with urllib.request.urlopen(self.base + path, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"gunicorn on {self.base} not ready in {timeout} s")

    def get(self, path: str) -> tuple[int, bytes, str]:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return response.status, response.read(), response.headers.get("Content-Type")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * UNITS[unit]


def parse_wrk(output: str) -> dict:
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+(?:us|ms|s))\s*$", output, re.M))
    requests = re.search(r"^\s*(\d+) requests in", output, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {"rps": float(re.search(r"Requests/sec:\s*([\d.]+)", output).group(1)),
            "p50": _ms(latency["50"]) if "50" in latency else None,
            "p99": _ms(latency["99"]) if "99" in latency else None,
            "requests": int(requests.group(1)) if requests else 0,
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(map(int, errors.groups())) if errors else 0}


def wrk(wrk_path: str, url: str, args=WRK_ARGS) -> dict:
    out = subprocess.run([wrk_path, *args, url], capture_output=True, text=True, check=True)
    return parse_wrk(out.stdout)


def run(db_seed: Path, rounds: int = 2) -> dict:
    """`db_seed`: a database that already holds the evidence of answers/ (copied, never written)."""
    wrk_path = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="kb-bench-serve-"))
    db = work / "kb.sqlite3"
    shutil.copyfile(db_seed, db)
    # As docs/deploying.md says: prepare the database with `kb check` (everything cached: nothing runs).
    check = subprocess.run([PYTHON, "-m", "kb", "check", "--db", str(db), "answers"], cwd=ROOT, env=env(),
                           capture_output=True, text=True)
    ran = [line for line in check.stdout.splitlines() if line.startswith("[") and not line.rstrip().endswith("cached")]
    if check.returncode != 0:
        raise RuntimeError(f"kb check failed:\n{check.stdout}\n{check.stderr}")
    servers = {}
    try:
        servers["service"] = Server("service:create_app()", {"KB_ANSWERS": "answers", "KB_DB": str(db)},
                                    work / "service.log")
        servers["service"].wait_ready("/healthz")
        pages, sizes = {}, {}
        for name, path in PATHS.items():
            status, body, content_type = servers["service"].get(path)
            if status != 200:
                raise RuntimeError(f"{path}: HTTP {status}")
            pages[path] = {"body": base64.b64encode(body).decode(), "content_type": content_type}
            sizes[name] = len(body)
        if not json.loads(base64.b64decode(pages[PATHS["search JSON"]]["body"]))["results"]:
            raise RuntimeError("the search benchmark query finds nothing")
        (work / "floor.json").write_text(json.dumps(pages))
        servers["floor"] = Server("bench.floor_app:create_app()", {"BENCH_FLOOR_PAGES": str(work / "floor.json")},
                                  work / "floor.log")
        servers["floor"].wait_ready(PATHS["cached answer page"])
        for path in PATHS.values():  # same bytes, both 200 (wrk sends no If-None-Match)
            service, floor = servers["service"].get(path), servers["floor"].get(path)
            if service[:2] != floor[:2]:
                raise RuntimeError(f"the floor does not return the service's bytes for {path}")

        results = {name: {"service": [], "floor": []} for name in PATHS}
        for name, path in PATHS.items():
            for which in ("service", "floor"):  # fills both workers' caches, connections, code paths
                wrk(wrk_path, servers[which].base + path, ["-t2", "-c32", "-d2s"])
            order = []
            for i in range(rounds):
                order += ["service", "floor"] if i % 2 == 0 else ["floor", "service"]
            for which in order:
                log(f"serving: wrk {' '.join(WRK_ARGS)} {which} {path}")
                results[name][which].append(wrk(wrk_path, servers[which].base + path))
        in_process = _in_process(db, work / "floor.json")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"results": results, "sizes": sizes, "rounds": rounds, "prepare_ran": len(ran), "in_process": in_process,
            "prepare_out": check.stdout.strip().splitlines()[-1]}


def _in_process(db: Path, floor_pages: Path) -> dict:
    """Per-request time of each path through Flask's test client, no HTTP server: the app's own work."""
    import time as _time

    from service import create_app

    from .floor_app import create_app as create_floor

    os.environ["BENCH_FLOOR_PAGES"] = str(floor_pages)
    apps = {"service": create_app({"KB_ANSWERS": str(ROOT / "answers"), "KB_DB": str(db)}), "floor": create_floor()}
    out = {}
    for name, path in PATHS.items():
        for which, application in apps.items():
            client = application.test_client()
            client.get(path)
            samples = []
            deadline = _time.perf_counter() + 1.0
            while _time.perf_counter() < deadline or len(samples) < 20:
                started = _time.perf_counter()
                assert client.get(path).status_code == 200
                samples.append((_time.perf_counter() - started) * 1000)
            out.setdefault(name, {})[which] = median(samples)
    apps["service"].extensions["kb"].close()
    return out


def _why(r: dict, ratio: float) -> str:
    """What the service's own extra work per request predicts for service ÷ floor, against the measurement."""
    name = "cached answer page"
    service, floor = r["in_process"][name]["service"], r["in_process"][name]["floor"]
    floor_rps = median([x["rps"] for x in r["results"][name]["floor"]])
    per_request = 2 / floor_rps * 1000  # ms of the 2 cores per request at the floor's rate (wrk included)
    expected = per_request / (per_request + max(service - floor, 0))
    ratios = [s["rps"] / f["rps"] for s, f in zip(r["results"][name]["service"], r["results"][name]["floor"], strict=True)]
    return (f"Why: without HTTP the service's cached page costs {service:.3f} ms per request against {floor:.3f} ms "
            f"for the floor (table below: the change check, the evidence stamp look-up, the security headers, the "
            f"ETag and conditional handling). At the floor's {floor_rps:.0f} requests/s the 2 cores spend "
            f"{per_request:.2f} ms per request (wrk included), so that difference alone predicts ~{expected:.0%} of "
            f"the floor; the measured {ratio:.0%} (runs {min(ratios):.0%}–{max(ratios):.0%}) is "
            + ("within the run-to-run noise of that prediction." if min(ratios) <= 0.7 <= max(ratios) or
               max(ratios) >= expected * 0.9 else "below it: more than the app's own work is at play."))


def report(r: dict) -> tuple[str, dict]:
    rows, targets, bad, noisy = [], {}, [], []
    for name, path in PATHS.items():
        service, floor = r["results"][name]["service"], r["results"][name]["floor"]
        for runs in (service, floor):
            bad += [f"{name}: {x['non2xx']} non-2xx, {x['socket_errors']} socket errors"
                    for x in runs if x["non2xx"] or x["socket_errors"]]
        ratios = [s["rps"] / f["rps"] for s, f in zip(service, floor, strict=True)]
        for which, runs in (("service", service), ("floor", floor)):
            rows.append([f"`{path}`" if which == "service" else "", which,
                         med_spread([x["rps"] for x in runs], "{:.0f}"),
                         med_spread([x["p50"] for x in runs], "{:.2f}"),
                         med_spread([x["p99"] for x in runs], "{:.2f}"),
                         f"{r['sizes'][name]:,}" if which == "service" else "same bytes",
                         med_spread(ratios, "{:.0%}") if which == "service" else ""])
        targets[name] = median(ratios)
        if len(ratios) > 1 and max(ratios) > 1.3 * min(ratios):
            noisy.append(f"{name} {min(ratios):.0%}–{max(ratios):.0%}")
    text = [
        "## 2. Serving: requests/s and latency under wrk",
        "",
        f"`wrk {' '.join(WRK_ARGS)}` on loopback against `gunicorn -w 2 -k gthread --threads 8` "
        "(docs/service.md's command) serving `service:create_app()` with `KB_ANSWERS=answers` and `KB_DB` a "
        f"temporary copy of a database holding every answer's evidence (prepared with `python -m kb check "
        f"--db …`: {r['prepare_ran']} answer(s) ran, the rest cached), versus the same gunicorn command "
        "serving `bench/floor_app.py`, a minimal Flask view that returns the bytes the service returned "
        f"for the same path. {r['rounds']} runs of 10 s per server and path, ABBA order after a 2 s warm-up of "
        "each; medians (min–max). wrk and the server share the machine's 2 cores. "
        + ("Every response was 2xx (wrk reported no non-2xx responses and no socket errors)."
           if not bad else "**Errors**: " + "; ".join(bad)),
        "",
        table(["path", "server", "requests/s", "p50, ms", "p99, ms", "body bytes", "service ÷ floor (req/s)"], rows),
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| cached answer page ≥ 70% of the floor | {targets['cached answer page']:.0%} | "
        f"{verdict(targets['cached answer page'] >= 0.7)} |",
        f"| (not targeted) answer JSON, search JSON | {targets['answer JSON']:.0%}, {targets['search JSON']:.0%} | |",
        "",
        *([] if targets["cached answer page"] >= 0.7 else [_why(r, targets["cached answer page"]), ""]),
        *([] if not noisy else [
            "Noisy: service ÷ floor varied from run to run by more than 30% for " + "; ".join(noisy)
            + " (pairs taken in ABBA order); the medians are reported.", ""]),
        "The app's own work per request, without HTTP (Flask test client, median over ≥1 s):",
        "",
        table(["path", "service, ms", "floor, ms", "service − floor, ms"],
              [[f"`{path}`", f"{r['in_process'][name]['service']:.3f}", f"{r['in_process'][name]['floor']:.3f}",
                f"{r['in_process'][name]['service'] - r['in_process'][name]['floor']:.3f}"]
               for name, path in PATHS.items()]),
        "",
    ]
    return "\n".join(text), {"cached page ≥ 70% of floor": targets["cached answer page"] >= 0.7, **{
        f"_{k}": v for k, v in targets.items()}}
