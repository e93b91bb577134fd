"""Cold start and edits of the search (issue 19, item 1): how long until the first search answers
on a fresh database, until search is by meaning, and until an edit is searchable, at the real
answers and at 10,000 synthetic ones (their vectors seeded at random, as bench/lookup.py does: the
cost of a rebuild does not depend on their values), through `Library.refresh` as the service
does. Each against a baseline in the same run: the full, non-incremental build of the same answers.

    .venv/bin/python -m bench.search_rebuild [N]     # N synthetic answers (default 10000)
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kb.format.answer import load_answers
from kb.library import Library
from kb.search.embeddings import shared_embedder
from kb.search.index import SearchIndex
from kb.search.lookup import Lookup

from .common import ROOT


def edit(path: Path, n: int) -> None:
    """Prose added at the end: the last section's text changes (one text to embed)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(f"\nEdited, time {n}.\n")


def real(work: Path) -> dict:
    answers = work / "answers"
    shutil.copytree(ROOT / "answers", answers)
    db = work / "fresh.sqlite3"
    out: dict = {}
    start = time.perf_counter()
    library = Library(answers, db, embed_in_background=True)
    out["create_s"] = time.perf_counter() - start
    start = time.perf_counter()
    found = library.lookup("my cost becomes nan", 5)
    out["first_search_s"] = time.perf_counter() - start
    out["first_search_ready"] = found["ready"]
    assert library.lookup_engine.wait(timeout=3600)
    out["semantic_ready_s"] = time.perf_counter() - start + out["first_search_s"]
    out["cold_embedded"] = library.lookup_engine.status.embedded
    edits = []
    for n in range(3):
        edit(answers / "gradient-averaging.md", n)
        start = time.perf_counter()
        library.refresh(force=True)
        returned = time.perf_counter() - start
        assert library.lookup_engine.wait(timeout=600)
        edits.append({"refresh_s": returned, "searchable_s": time.perf_counter() - start})
    out["edits"] = edits
    out["edit_embedded_last"] = library.lookup_engine.status.embedded - out["cold_embedded"]
    library.close()
    return out


def synthetic(work: Path, n: int) -> dict:
    """As the service does: a `Library` over the folder; each edit is one `refresh` (what the
    once-a-second change check on a request calls), then the background rebuild it starts. The
    baseline in the same run: a full build of the same answers by a fresh `Lookup`."""
    from bench import lookup as lookup_bench
    from bench import scale

    folder = work / f"answers-{n}"
    scale.generate(folder, n)
    answers, _ = load_answers([folder])
    db = work / f"synthetic-{n}.sqlite3"
    lookup_bench.seed_random_vectors(db, answers.values())
    start = time.perf_counter()
    full = Lookup(SearchIndex(db), db, shared_embedder())
    full.rebuild(answers.values())
    full_s = time.perf_counter() - start
    library = Library(folder, db, embed_in_background=True)
    assert library.lookup_engine is not None and library.lookup_engine.wait(timeout=3600)
    edits = []
    for k in range(3):
        path = folder / sorted(p.name for p in folder.glob("*.md"))[k]
        edit(path, k)
        start = time.perf_counter()
        library.refresh(force=True)
        returned = time.perf_counter() - start
        assert library.lookup_engine.wait(timeout=600)
        edits.append({"refresh_s": returned, "searchable_s": time.perf_counter() - start})
    sectioned = library.lookup_engine.status.sectioned
    library.close()
    return {"answers": n, "full_build_s": full_s, "edits": edits, "sectioned": sectioned}


def run(n: int = 10_000) -> dict:
    work = Path(tempfile.mkdtemp(prefix="kb-bench-rebuild-"))
    try:
        return {"real": real(work), "synthetic": synthetic(work, n)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(r: dict) -> str:
    real, syn = r["real"], r["synthetic"]
    worst = max(e["searchable_s"] for e in real["edits"])
    syn_worst = max(e["searchable_s"] for e in syn["edits"])
    return "\n".join([
        "## Search cold start and edits (issue 19)", "",
        f"Fresh database, real answers: `Library` ready in {real['create_s']:.2f} s; first search answered in "
        f"{real['first_search_s'] * 1000:.0f} ms (ready: {real['first_search_ready']}, by words); search by meaning "
        f"after {real['semantic_ready_s']:.1f} s ({real['cold_embedded']} texts embedded in the background).",
        f"An edit (prose appended to an answer): `refresh` returned in {max(e['refresh_s'] for e in real['edits']) * 1000:.0f} ms at "
        f"most, searchable after {worst:.2f} s at most ({real['edit_embedded_last']} texts embedded over 3 edits).",
        f"{syn['answers']:,} synthetic answers: full build {syn['full_build_s']:.1f} s; an edit: `refresh` returned in "
        f"{max(e['refresh_s'] for e in syn['edits']):.2f} s at most, searchable after {syn_worst:.2f} s at most "
        f"(answers sectioned in all: {syn['sectioned']:,} = the first build + 1 per edit).", ""])


if __name__ == "__main__":
    result = run(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
    print(report(result))
    (ROOT / "bench" / "search-rebuild-results.json").write_text(json.dumps(result, indent=1, default=float))
