"""Benchmark 3: lookup at scale, 1,000 and 10,000 synthetic answers.

`generate(directory, n)` writes answer files with realistic front matter (a question as title,
aliases, a summary, tags, related slugs, sources) and a Markdown body of realistic length (the
real answers' indexed prose is ~1,500 words): words drawn from the real answers' word
frequencies mixed with a Zipf-distributed tail of made-up words (a bigger knowledge base has a
bigger vocabulary), in sentences, paragraphs, headings and `$…$` formulas. No snippets.

Each size is measured in a fresh process (`python -m bench.scale measure DIR BUILDS PASSES`):
`create_app` (KB_RUN_MISSING false, fresh database) with its phases timed where they are called
(loading, parsing, YAML, index build, documents, digests), the process's RSS before and
after, `/api/search` latency through Flask's test client and the index's lexical stage
(`SearchIndex.candidates`) directly, and the index build again on fresh databases.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import PYTHON, env, log, med_spread, median, percentile, table, verdict  # noqa: E402

SIZES = (1000, 10000)
SEED = 5
# Past this projected cost of what load_answers does beyond parsing (its `related` check lists
# the directory once per answer: quadratic), `measure` does not wait for create_app as it is: it
# builds the app with a load_answers that lists the directory once (bench-side) so that memory
# and request latency can still be reported, and reports the projected cost beside it.
SCAN_BUDGET_S = 30.0

SYLLABLES = ("ka ri to mo ne su la vi de po ra ti ko mi na lu se ve do pa ru te".split())
TEMPLATES = ("Why does {a} {b} the {c}?", "How does {a} affect {b} {c}?", "What is the {a} of {b} {c}?",
             "When should I use {a} instead of {b}?", "Why is {a} {b} better than {c}?",
             "How do I compute {a} {b} for {c}?", "Does {a} change the {b} of {c}?",
             "What happens to {a} when {b} {c}?")
WORD_RE = re.compile(r"[A-Za-z][a-z]+")


def _corpus():
    """Word frequencies of the real answers' indexed prose, and their tags."""
    from kb.format.answer import load_answers
    from kb.search.index import STOP_WORDS
    from kb.search.lookup import clean_body

    answers, _ = load_answers([ROOT / "answers"])
    counts: dict[str, int] = {}
    for answer in answers.values():
        for word in WORD_RE.findall(clean_body(answer.body)):
            counts[word] = counts.get(word, 0) + 1
    words = sorted(counts, key=lambda w: -counts[w])
    content = [w for w in words if w.lower() not in STOP_WORDS and len(w) > 3]
    tags = sorted({t for a in answers.values() for t in a.tags})
    return words, np.array([counts[w] for w in words], float), content, tags


def generate(directory: Path, n: int, seed: int = SEED) -> None:
    rng = np.random.default_rng(seed)
    words, counts, content, real_tags = _corpus()
    made_up = sorted({"".join(rng.choice(SYLLABLES, rng.integers(2, 5))) for _ in range(40000)} - set(words))
    made_up = [str(w) for w in rng.permutation(made_up)]  # Zipf ranks in random, not alphabetical, order
    vocabulary = words + made_up
    weights = np.concatenate([0.85 * counts / counts.sum(),
                              0.15 * (w := 1 / np.arange(1, len(made_up) + 1) ** 1.05) / w.sum()])
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    content_pool = content[:3000] + made_up[:2000]
    tag_pool = real_tags + [f"{a}-{b}" for a, b in zip(rng.choice(content[:400], 60), rng.choice(content[:400], 60), strict=True)]
    tag_pool = sorted({t.lower() for t in tag_pool})

    def draw(k: int) -> list[str]:
        return [vocabulary[i] for i in np.searchsorted(cdf, rng.random(k))]

    def question() -> str:
        a, b, c = (content_pool[i] for i in rng.integers(0, len(content_pool), 3))
        return TEMPLATES[rng.integers(len(TEMPLATES))].format(a=a, b=b, c=c)

    def sentence(k: int) -> str:
        tokens = draw(k)
        if rng.random() < 0.15:
            tokens.insert(int(rng.integers(len(tokens))), f"$\\frac{{\\partial {tokens[0][0]}}}{{\\partial w_{{{k}}}}}$")
        tokens[0] = tokens[0].capitalize()
        return " ".join(tokens) + "."

    directory.mkdir(parents=True, exist_ok=True)
    slugs = [f"{content_pool[int(rng.integers(len(content_pool)))].lower()}-{i}" for i in range(n)]
    slugs = [re.sub(r"[^a-z0-9-]", "", s) for s in slugs]
    for i, slug in enumerate(slugs):
        total = int(np.clip(rng.lognormal(math.log(1300), 0.35), 300, 4000))
        paragraphs, written = [], 0
        while written < total:
            if rng.random() < 0.15:
                paragraphs.append("## " + " ".join(draw(int(rng.integers(2, 6)))).capitalize())
            sentences = [sentence(int(rng.integers(6, 26))) for _ in range(int(rng.integers(3, 8)))]
            written += sum(s.count(" ") + 1 for s in sentences)
            paragraphs.append(" ".join(sentences))
        related = sorted({slugs[j] for j in rng.integers(0, n, int(rng.integers(0, 8))) if j != i})
        meta = {
            "title": question(),
            "summary": " ".join(sentence(int(rng.integers(15, 40))) for _ in range(int(rng.integers(1, 3)))),
            "aliases": [question() for _ in range(int(rng.integers(0, 7)))],
            "tags": sorted({str(t) for t in rng.choice(tag_pool, int(rng.integers(1, 5)))}),
            "related": related,
            "sources": [f"Lecture {int(rng.integers(1, 40))}, week {int(rng.integers(1, 5))}"
                        for _ in range(int(rng.integers(0, 3)))],
        }
        front = yaml.safe_dump({k: v for k, v in meta.items() if v}, allow_unicode=True, sort_keys=False, width=100)
        (directory / f"{slug}.md").write_text(f"---\n{front}---\n\n" + "\n\n".join(paragraphs) + "\n",
                                             encoding="utf-8")


def queries(directory: Path, count: int = 100, seed: int = SEED) -> list[str]:
    """Half the titles of random answers with a word dropped, half 2–5 random words of them."""
    from kb.format.answer import parse_answer

    rng = np.random.default_rng(seed + 1)
    files = sorted(directory.glob("*.md"))
    out = ["why average dW"]
    for k in range(count):
        answer = parse_answer(files[int(rng.integers(len(files)))])
        words = answer.title.rstrip("?").split()
        if k % 2 == 0:
            words.pop(int(rng.integers(len(words))))
            out.append(" ".join(words))
        else:
            pool = WORD_RE.findall(answer.summary + " " + answer.title)
            out.append(" ".join(rng.choice(pool, int(rng.integers(2, 6)))))
    return out


def _rss_kib() -> dict:
    status = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) for key in ("VmRSS", "VmHWM")}


def _latencies(call, items, passes: int = 3) -> list[float]:
    for item in items[:10]:
        call(item)
    samples = []
    for _ in range(passes):
        for item in items:
            started = time.perf_counter()
            call(item)
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def _load_overhead(directory: Path) -> tuple[float, float]:
    """(seconds per call, seconds per answer) that kb.format.answer.load_answers spends beyond parsing,
    from loading 20 and then 40 files of the directory (load_answers accepts files): a `related`
    check that lists the directory once per answer shows up per answer, one listing per call
    shows up per call."""
    from kb.format.answer import load_answers, parse_answer

    files = sorted(directory.glob("*.md"))[:40]
    extra = {}
    for count in (20, 40):
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            for path in files[:count]:
                parse_answer(path)
            parse_s = time.perf_counter() - started
            started = time.perf_counter()
            load_answers(files[:count])
            best = min(best, time.perf_counter() - started - parse_s)
        extra[count] = best
    per_answer = max((extra[40] - extra[20]) / 20, 0.0)
    return max(extra[20] - 20 * per_answer, 0.0), per_answer


def _linear_load_answers(paths, parse=None):
    """kb.format.answer.load_answers with the directory scanned once instead of once per answer."""
    from kb.format import answer as kb_answer

    parse = parse or kb_answer.parse_answer
    answers, errors, siblings = {}, [], {}
    for path in kb_answer.answer_paths(paths):
        try:
            answer = parse(path)
        except kb_answer.FormatError as exc:
            errors.append(exc)
            continue
        if path.parent not in siblings:
            siblings[path.parent] = {p.stem for p in path.parent.glob("*.md")}
        missing = [s for s in answer.related if s not in siblings[path.parent] or s == answer.slug]
        if missing:
            errors.append(kb_answer.FormatError(answer.path, answer.key_lines["related"],
                                                f"related slug {missing[0]!r} is not another answer"))
            continue
        answers[answer.slug] = answer
    return answers, errors


class Timers:
    """Wrap functions where they are looked up, adding up the time spent in each."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, owner, attribute: str, name: str) -> None:
        inner = getattr(owner, attribute)
        self.seconds[name] = 0.0

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        setattr(owner, attribute, timed)


def measure(directory: Path, builds: int, passes: int) -> dict:
    """In a fresh process: create_app over the directory, timed phase by phase, then lookups."""
    import kb.format.answer
    import kb.library
    import kb.search.index
    from kb.search.index import SearchIndex, match_expression
    from service import create_app

    n = len(list(directory.glob("*.md")))
    per_call_s, per_answer_s = _load_overhead(directory)
    patched = per_answer_s * n > SCAN_BUDGET_S
    if patched:
        kb.library.load_answers = _linear_load_answers
    qs = queries(directory)  # before the timers: it parses files too
    # Synthetic texts are not embedded (an hour at 10,000): random vectors are cached for them
    # first (without loading the model), see bench/lookup.py; the RSS after create_app includes
    # the model and the vectors.
    scratch = tempfile.TemporaryDirectory()
    from bench.lookup import seed_random_vectors
    seed_random_vectors(Path(scratch.name) / "kb.sqlite3", load_answers_for_seeding(directory))
    timers = Timers()
    timers.wrap(kb.library, "load_answers", "load_answers")
    timers.wrap(kb.library, "parse_answer", "parse")  # what the Library calls for each file it (re)parses
    timers.wrap(yaml, "compose", "yaml")
    timers.wrap(yaml, "safe_load", "yaml")
    timers.wrap(yaml, "load", "yaml")
    timers.wrap(SearchIndex, "rebuild", "index build")
    timers.wrap(kb.search.index, "document", "document")
    timers.wrap(kb.search.index, "digest", "digests")
    before = _rss_kib()
    with scratch as tmp:
        started = time.perf_counter()
        application = create_app({"KB_ANSWERS": str(directory), "KB_DB": str(Path(tmp) / "kb.sqlite3"),
                                  "KB_RUN_MISSING": False})
        create_s = time.perf_counter() - started
        after = _rss_kib()
        phases = dict(timers.seconds)
        library = application.extensions["kb"].library
        client = application.test_client()
        statuses = set()

        def get(q):
            statuses.add(client.get("/api/search", query_string={"q": q}).status_code)

        api_ms = _latencies(get, qs, passes)
        search_ms = _latencies(lambda q: library.index.candidates(q, 30), qs, passes)  # the lexical stage
        count = "SELECT count(*) FROM search_short WHERE search_short MATCH ? AND slug IS NOT NULL"
        matches = [library.index.connection().execute(count, (e,)).fetchone()[0]
                   for e in map(match_expression, qs) if e is not None]
        # The change check a request triggers at most once a second: list and stat every file.
        files_ms = median(_latencies(lambda _: library._files(), [None] * 5, passes=1))
        db_mb = (Path(tmp) / "kb.sqlite3").stat().st_size / 2**20
        build_s = [phases["index build"]]
        answers = list(library.answers.values())
        for k in range(builds - 1):  # the same build again on fresh databases
            index = SearchIndex(Path(tmp) / f"again-{k}.sqlite3")
            started = time.perf_counter()
            index.rebuild(answers)
            build_s.append(time.perf_counter() - started)
        library.close()
    return {"n": n, "patched": patched, "create_s": create_s, "phases": phases, "load_per_answer_ms": per_answer_s * 1000,
            "load_per_call_ms": per_call_s * 1000, "load_projected_s": per_call_s + per_answer_s * n, "rss_before_kib": before["VmRSS"], "rss_after_kib": after["VmRSS"],
            "hwm_kib": after["VmHWM"], "api_ms": api_ms, "search_ms": search_ms, "statuses": sorted(statuses),
            "matches": median(matches), "files_ms": files_ms, "db_mb": db_mb, "build_s": build_s,
            "answers": len(answers), "corpus_mb": sum(p.stat().st_size for p in directory.glob("*.md")) / 2**20}


def load_answers_for_seeding(directory: Path):
    from kb.format.answer import parse_answer

    return [parse_answer(path) for path in sorted(directory.glob("*.md"))]


def run(sizes=SIZES) -> dict:
    work = Path(tempfile.mkdtemp(prefix="kb-bench-scale-"))
    results = {}
    try:
        for n in sizes:
            directory = work / f"answers-{n}"
            log(f"scale: generating {n} answers")
            started = time.perf_counter()
            generate(directory, n)
            generate_s = time.perf_counter() - started
            builds = passes = 3 if n <= 2000 else 2  # the big size's runs take seconds each
            log(f"scale: {n} answers: create_app, index builds, memory, search latency")
            out = subprocess.run([PYTHON, "-m", "bench.scale", "measure", str(directory), str(builds), str(passes)],
                                 capture_output=True, text=True, env=env(), cwd=ROOT, timeout=900)
            if out.returncode != 0:
                raise RuntimeError(f"bench.scale measure failed:\n{out.stderr[-3000:]}")
            results[n] = {**json.loads(out.stdout), "generate_s": generate_s, "passes": passes}
            if results[n]["statuses"] != [200] or results[n]["answers"] != n:
                raise RuntimeError(f"scale {n}: statuses {results[n]['statuses']}, {results[n]['answers']} answers")
            shutil.rmtree(directory, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def report(results: dict) -> tuple[str, dict]:
    sizes = sorted(results)
    rows = []
    for n in sizes:
        r = results[n]
        rows.append([f"{n:,}", f"{r['corpus_mb']:.0f}", med_spread(r["build_s"], "{:.2f}"), f"{r['db_mb']:.0f}",
                     f"{r['matches']:,.0f}",
                     f"{percentile(r['search_ms'], 50):.2f} / {percentile(r['search_ms'], 99):.2f}",
                     f"{percentile(r['api_ms'], 50):.2f} / {percentile(r['api_ms'], 99):.2f}",
                     f"{r['rss_after_kib'] / 1024:.0f} (+{(r['rss_after_kib'] - r['rss_before_kib']) / 1024:.0f})",
                     f"{r['create_s']:.1f}" + (" \\*" if r["patched"] else "")])
    lines = [
        "## 3. Scale of lookup: synthetic knowledge bases",
        "",
        "Synthetic answers, no snippets: a question as title, 0–6 aliases, a summary, 1–4 tags, 0–7 "
        "related slugs, sources, and a body of ~1,300 words (log-normal, 300–4,000) drawn from the real "
        "answers' word frequencies plus a Zipf tail of made-up words, with headings and formulas. Each size "
        "is measured in a fresh process. Index build: `SearchIndex.rebuild` on a fresh database, the one "
        "inside `create_app` and again (median, min–max of 3 builds at 1,000, 2 at 10,000). Search: 101 "
        "queries (titles with a word dropped, random words, `why average dW`), 3 passes at 1,000, 2 at "
        "10,000, p50 / p99; the lexical stage `SearchIndex.candidates` directly and `GET /api/search` through Flask's test client "
        "(`KB_RUN_MISSING` false; requests also run the service's once-a-second change check). Memory: VmRSS "
        "after `create_app` (its increase over the process after its imports).",
        "",
        table(["answers", "corpus, MB", "index build, s", "DB, MB", "answers matched per query (median)",
               "candidates(), ms p50 / p99", "/api/search, ms p50 / p99", "RSS after create_app, MB",
               "create_app, s"], rows),
        "",
    ]
    big, small = results[sizes[-1]], results[sizes[0]]
    size_ratio = sizes[-1] / sizes[0]
    build_ratio = median(big["build_s"]) / median(small["build_s"])
    search_ratio = percentile(big["search_ms"], 50) / percentile(small["search_ms"], 50)
    api_ratio = percentile(big["api_ms"], 50) / percentile(small["api_ms"], 50)
    at = f"{sizes[-1]:,}"
    targets = {
        f"index build at {at} < 5 s": median(big["build_s"]) < 5,
        f"search p50 at {at} < 2 ms in-process (/api/search)": percentile(big["api_ms"], 50) < 2,
        "index build grows no worse than linearly": build_ratio <= size_ratio * 1.15,
    }
    lines += [
        "| target | measured | |",
        "|---|---|---|",
        f"| index build at {at} under 5 s | {median(big['build_s']):.2f} s | "
        f"{verdict(targets[f'index build at {at} < 5 s'])} |",
        f"| search p50 at {at} under 2 ms in-process | `/api/search` {percentile(big['api_ms'], 50):.2f} ms, "
        f"`candidates()` {percentile(big['search_ms'], 50):.2f} ms | "
        f"{verdict(targets[f'search p50 at {at} < 2 ms in-process (/api/search)'])} |",
        f"| build no worse than linear | ×{build_ratio:.1f} build time for ×{size_ratio:.0f} answers | "
        f"{verdict(targets['index build grows no worse than linearly'])} |",
        f"| query latency flat-ish | p50 ×{search_ratio:.1f} (`candidates()`), ×{api_ratio:.1f} (`/api/search`) "
        f"for ×{size_ratio:.0f} answers | {'**no**' if search_ratio > 3 else 'yes'} |",
        "",
        "Search time follows the number of answers a query matches: the query's words are OR-ed, so common "
        f"words match most answers (median {big['matches']:,.0f} of {at} per query here), and every match is "
        "scored before the best 30 are kept (kb/search/index.py `SearchIndex.candidates`).",
        "",
        "Where `create_app`'s time goes, in seconds, timed where each function is called during `create_app` "
        "(nested: YAML is part of parsing, parsing part of loading; the answers' documents and digests are part "
        "of the index build). \"Beyond parsing\" is what `load_answers` did besides parsing (the `related` "
        "check). The last column is the change check a request triggers at most once a second "
        "(`Library._files`: list and stat every answer file).",
        "",
    ]
    rows = []
    for n in sizes:
        r = results[n]
        p = r["phases"]
        rows.append([f"{n:,}", f"{r['create_s']:.1f}" + (" \\*" if r["patched"] else ""),
                     f"{p['load_answers']:.1f}", f"{p['parse']:.1f}", f"{p['yaml']:.1f}",
                     (f"{r['load_projected_s']:.1f} projected \\*" if r["patched"] else
                      f"{p['load_answers'] - p['parse']:.2f}"),
                     f"{p['index build']:.2f}", f"{p['document']:.2f}", f"{p['digests']:.2f}",
                     f"{r['create_s'] - p['load_answers'] - p['index build']:.2f}", f"{r['files_ms']:.1f}"])
    lines += [
        table(["answers", "create_app", "load_answers", "parsing", "YAML", "beyond parsing",
               "index build", "document", "digests", "rest", "change check, ms"], rows),
        "",
    ]
    def beyond(n):  # seconds load_answers spends beyond parsing, measured, or projected when patched
        r = results[n]
        return r["load_projected_s"] if r["patched"] else r["phases"]["load_answers"] - r["phases"]["parse"]

    small_each, big_each = beyond(sizes[0]) / sizes[0], beyond(sizes[-1]) / sizes[-1]
    growth = big_each / max(small_each, 1e-9)
    if beyond(sizes[-1]) > 0.5 * big["phases"]["parse"] and growth > size_ratio / 3:
        lines += [
            "`kb.format.answer.load_answers` grows quadratically: beyond parsing it spends "
            f"{small_each * 1000:.2f} ms per answer at {sizes[0]:,} and {big_each * 1000:.2f} ms at {at} "
            f"(×{growth:.0f}): its `related` check lists the whole directory once per answer. At {at} answers that "
            f"is ~{beyond(sizes[-1]):.0f} s against {big['phases']['parse']:.1f} s for parsing every file, paid "
            "again on every reload.",
            "",
        ]
    if big["phases"]["yaml"] > 0.5 * big["phases"]["parse"]:
        lines += [
            f"Parsing is mostly YAML ({big['phases']['yaml']:.1f} of {big['phases']['parse']:.1f} s at {at}; "
            "kb/format/answer.py `_front_matter`).",
            "",
        ]
    patched = [n for n in sizes if results[n]["patched"]]
    if patched:
        lines += [
            f"\\* At {', '.join(f'{n:,}' for n in patched)} answers the projected cost beyond parsing exceeds the "
            f"bench's budget of {SCAN_BUDGET_S:.0f} s, so `create_app` was measured with `kb.library.load_answers` "
            "replaced by the same function listing the directory once (`bench/scale.py` `_linear_load_answers`); "
            "the service's own `create_app` takes that time plus the projected cost.",
            "",
        ]
    return "\n".join(lines), targets


if __name__ == "__main__":
    kind, directory = sys.argv[1], Path(sys.argv[2])
    if kind == "measure":
        print(json.dumps(measure(directory, int(sys.argv[3]), int(sys.argv[4]))))
    elif kind == "generate":
        generate(directory, int(sys.argv[3]))
