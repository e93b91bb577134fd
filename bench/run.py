"""`make bench`: every benchmark of bench/, then bench/results.md and bench/results.png.

1. runner overhead (bench/overhead.py, in a fresh process), 2. serving under wrk
(bench/serving.py), 3. lookup at scale (bench/scale.py), 4. incremental work
(bench/incremental.py), 5. lookup (bench/lookup.py), 6. `kb audit` cold and warm
(bench/audit.py). Run order: 4 first (its first `kb check` makes the database that 2
serves), then 2, 1, 3, 5, 6. Every figure is a ratio or a latency measured in this run on this
machine; the tables are printed on stdout as well.

`python bench/run.py --report` renders results.md and the plot again from bench/results.json
(every measurement of the last run) without measuring.

Environment: BENCH_REPEATS (whole-KB repeats of benchmark 1, default 3), BENCH_WRK_ROUNDS
(10 s wrk runs per server and path, in ABBA… order, default 3), BENCH_SIZES (default "1000,10000").
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

from bench.common import PYTHON, SNIPPET_ENV, env, log, median, percentile  # noqa: E402

os.environ.update(SNIPPET_ENV)

from bench import audit, incremental, lookup, overhead, scale, search_mix, serving  # noqa: E402

RESULTS = ROOT / "bench" / "results.md"
PLOT = ROOT / "bench" / "results.png"
RAW = ROOT / "bench" / "results.json"  # every measurement, for `python bench/run.py --report`


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    memory = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    versions = {}
    for package in ("numpy", "flask", "gunicorn", "matplotlib", "nbclient", "ipykernel"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "?"
    wrk = subprocess.run([shutil.which("wrk") or "wrk", "-v"], capture_output=True, text=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "kb", "service", "answers"], capture_output=True,
                           text=True, cwd=ROOT).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory / 2**20, "os": platform.platform(),
            "python": platform.python_version(), "versions": versions,
            "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "?",
            "commit": commit + (" with uncommitted changes in kb/, service/ or answers/" if dirty else ""),
            "load": os.getloadavg()}


def _log_axes(ax, sizes) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("answers")


def plot(r1: dict, r2: dict, r3: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    fig.suptitle("kb benchmarks (medians; bars: min–max over repeats)")

    ax = axes[0][0]
    modes = overhead.MODES
    meds = [median(r1["totals"][m]) for m in modes]
    err = [[meds[i] - min(r1["totals"][m]) for i, m in enumerate(modes)],
           [max(r1["totals"][m]) - meds[i] for i, m in enumerate(modes)]]
    bars = ax.bar(["exec\n(no isolation)", "kb runner", "fresh python\nper answer", "Jupyter kernel\nper answer"],
                  meds, yerr=err, capsize=4, color=["#999999", "#2b7bba", "#e3a33b", "#c4443b"])
    for bar, m in zip(bars, modes, strict=True):
        ax.annotate(f"{median(r1['ratio_exec'][m]):.2f}× exec", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_ylim(0, max(max(r1["totals"][m]) for m in modes) * 1.12)
    ax.set_ylabel("seconds")
    ax.set_title(f"1. Checking all {r1['n']} answers, one after the other")

    ax = axes[0][1]
    names = list(serving.PATHS)
    x = range(len(names))
    for offset, which, color in ((-0.2, "service", "#2b7bba"), (0.2, "floor", "#999999")):
        values = [[run["rps"] for run in r2["results"][n][which]] for n in names]
        meds = [median(v) for v in values]
        err = [[m - min(v) for m, v in zip(meds, values, strict=True)], [max(v) - m for m, v in zip(meds, values, strict=True)]]
        ax.bar([i + offset for i in x], meds, width=0.4, yerr=err, capsize=4, color=color,
               label="kb service" if which == "service" else "Flask floor (same bytes)")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("requests/s")
    ax.set_title("2. Serving (wrk -t2 -c32 -d10s; gunicorn -w 2 -k gthread --threads 8)")
    ax.legend(fontsize=8)

    sizes = sorted(r3)
    ax = axes[1][0]
    builds = [r3[n]["build_s"] for n in sizes]
    ax.errorbar(sizes, [median(b) for b in builds],
                yerr=[[median(b) - min(b) for b in builds], [max(b) - median(b) for b in builds]],
                marker="o", capsize=4, label="SearchIndex.rebuild")
    ax.plot(sizes, [r3[n]["create_s"] for n in sizes], marker="D", label="create_app (all of it)")
    ax.plot(sizes, [r3[n]["phases"]["parse"] for n in sizes], marker="s", label="parsing the files")
    ax.plot(sizes, [r3[n]["phases"]["yaml"] for n in sizes], marker="^", label="of which YAML")
    ax.axhline(5, ls="--", color="gray", lw=1)
    ax.text(sizes[0], 5.3, "target: build < 5 s at 10,000", fontsize=8, color="gray")
    _log_axes(ax, sizes)
    ax.set_ylabel("seconds")
    ax.set_title("3a. Starting the service over N answers")
    ax.legend(fontsize=8, loc="lower right")

    ax = axes[1][1]
    for key, label, source in (("search_ms", "SearchIndex.candidates", lambda n: r3[n]),
                               ("api_ms", "GET /api/search (test client)", lambda n: r3[n])):
        ax.plot(sizes, [percentile(source(n)[key], 50) for n in sizes], marker="o", label=f"{label} p50")
        ax.plot(sizes, [percentile(source(n)[key], 99) for n in sizes], marker="o", ls=":", label=f"{label} p99")
    ax.axhline(2, ls="--", color="gray", lw=1)
    ax.text(sizes[0], 2.2, "target: p50 < 2 ms at 10,000", fontsize=8, color="gray")
    _log_axes(ax, sizes)
    ax.set_ylabel("ms")
    ax.set_title("3b. Search latency in-process")
    ax.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def measure_all() -> dict:
    started = time.monotonic()
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    rounds = int(os.environ.get("BENCH_WRK_ROUNDS", "3"))
    sizes = tuple(int(s) for s in os.environ.get("BENCH_SIZES", "1000,10000").split(","))
    serving.ensure_wrk()
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="kb-bench-"))
    try:
        r4 = incremental.run(work)
        log("serving: gunicorn + wrk")
        r2 = serving.run(work / "checked.sqlite3", rounds=rounds)
        log(f"overhead: {repeats} repeats of the whole knowledge base in 4 modes (a few minutes)")
        out = work / "overhead.json"
        subprocess.run([PYTHON, "-m", "bench.overhead", str(out), str(repeats)], cwd=ROOT, env=env(), check=True)
        r1 = json.loads(out.read_text())
        r3 = scale.run(sizes)
        log("lookup: quality on the test split, latency, memory, start-up")
        r5 = lookup.run(tuple(n for n in sizes if n >= 10_000) or (max(sizes),))
        log("search mix: /api/search under wrk, Zipf over the evaluation set's questions, against the floor")
        r6 = search_mix.run(rounds=max(1, rounds - 1))
        r7 = audit.run(work)
        r7.pop("cold", None)  # every check's audit: not kept in results.json
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["minutes"] = (time.monotonic() - started) / 60
    info["date"] = f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
    raw = {"machine": info, "overhead": r1, "serving": r2, "scale": r3, "incremental": r4, "lookup": r5,
           "search_mix": r6, "audit": r7}
    RAW.write_text(json.dumps(raw), encoding="utf-8")
    return raw


def main() -> int:
    if sys.argv[1:] == ["--report"]:  # render results.md and the plot again from results.json
        raw = json.loads(RAW.read_text(encoding="utf-8"))
    else:
        raw = measure_all()
    info, r1, r2, r4 = raw["machine"], raw["overhead"], raw["serving"], raw["incremental"]
    r3 = {int(k): v for k, v in raw["scale"].items()}

    sections, targets = [], {}
    reports = [(overhead.report, r1), (serving.report, r2), (scale.report, r3), (incremental.report, r4)]
    if "lookup" in raw:
        reports.append((lookup.report, raw["lookup"]))
    if "search_mix" in raw:
        reports.append((search_mix.report, raw["search_mix"]))
    if "audit" in raw:
        reports.append((audit.report, raw["audit"]))
    for report, result in reports:
        text, met = report(result)
        sections.append(text)
        targets.update({k: v for k, v in met.items() if not k.startswith("_")})
    plot(r1, r2, r3)
    minutes = info["minutes"]
    v = info["versions"]
    head = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (which installs `bench/requirements.txt` into `.venv` and runs "
        f"`.venv/bin/python bench/run.py`) on {info['date']} UTC in {minutes:.1f} min, "
        f"at commit {info['commit']}.",
        "",
        f"Machine: {info['cores']} cores ({info['cpu']}), {info['memory_gib']:.0f} GiB, {info['os']}; shared and noisy "
        f"(load average at the start {info['load'][0]:.1f}), so every comparison is a ratio of figures measured in "
        f"the same run, reported as the median with its spread. Python {info['python']}, NumPy {v['numpy']}, "
        f"matplotlib {v['matplotlib']}, Flask {v['flask']}, gunicorn {v['gunicorn']}, nbclient {v['nbclient']}, "
        f"ipykernel {v['ipykernel']}, {info['wrk']}.",
        "",
        "Targets (issue 5):",
        "",
        "| target | |",
        "|---|---|",
        *[f"| {name} | {'met' if ok else '**not met**'} |" for name, ok in targets.items()],
        "",
        f"![Benchmarks]({PLOT.name})",
        "",
    ]
    text = "\n".join(head + sections)
    RESULTS.write_text(text + "\n", encoding="utf-8")
    print(text)
    log(f"wrote {RESULTS.relative_to(ROOT)}, {PLOT.relative_to(ROOT)} and {RAW.relative_to(ROOT)} "
        f"(measured in {minutes:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
