"""Lookup: the answers (and the section of each) that best answer a learner's question.

Two stages. The lexical stage (`kb.search.index.SearchIndex.candidates`, FTS5 BM25 over the answers'
questions and tags) finds answers that share the question's words; the semantic stage compares the question's embedding
(`kb.search.embeddings`) with an embedding of every answer's title, each alias, its summary and each
section of its body, so a question worded without the answer's vocabulary still finds it.

Each answer gets a few features (best similarity to one of its questions, to its summary, to one
of its sections, how far it is behind the best answer, its BM25 score relative to the best
BM25 score of the query, how strong that is, and the log-probability a softmax regression
trained on all the answers' texts gives it, `kb.search.classifier`); a logistic model over them
ranks, and a second one, over the rank score and the best similarity, gives the score: a
calibrated probability, in [0, 1], that the answer is the one asked for; a third, over the top
scores and margins, says whether the first result is confidently the one asked for. The weights
(`weights.json`) were fitted on the dev split of `tests/lookup_eval/` with `python -m
kb.search.fit` (never on the test split); see docs/search.md.

A result names the section that matched best, so a link goes straight to it
(`/answers/<slug>#<anchor>`); the anchor is the id `kb.render.markdown` gives that heading.
"""
from __future__ import annotations

import copy
import dataclasses
import html
import json
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from markdown.extensions.toc import slugify, unique

from kb.format.answer import Answer, Remembered, split_lines
from kb.format.blocks import Fence, Prose, blocks

from .classifier import Classifier, train_classifier, uniform
from .embeddings import DIMENSION, Embedder, EmbeddingCache
from .index import SearchIndex, fields_digest
from .mapped import VectorFiles

log = logging.getLogger(__name__)
HEADING_RE = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
LINK_RE = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
INLINE_MARKS_RE = re.compile(r"`+|\*+|(?<!\w)_+|_+(?!\w)|<[^>]+>")
# What `clean_body` keeps of a body.
LATEX_COMMAND_RE = re.compile(r"\\([A-Za-z]+)")
LINK_TARGET_RE = re.compile(r"\]\([^)\s]*\)")
COMMENT_RE = re.compile(r"#\s?(.*)$", re.M)
STRING_RE = re.compile(r"([\"'])((?:\\.|(?!\1).)*)\1")

# LaTeX commands that only lay out a formula; other commands are kept as words (\sigma -> sigma).
LATEX_LAYOUT = frozenset("""
frac dfrac tfrac left right cdot cdots ldots dots qquad quad mathrm mathbf mathit mathcal
operatorname text textrm textbf big Big bigg Bigg lVert rVert lvert rvert odot times top
over sqrt begin end limits nolimits displaystyle hat tilde bar vec partial nabla le leq ge geq
ne neq approx equiv sim propto to rightarrow leftarrow Rightarrow mapsto in notin infty
""".split())

WEIGHTS_FILE = Path(__file__).with_name("weights.json")


@dataclass(frozen=True)
class Weights:
    """The fitted constants (`kb/search/weights.json`, written by `kb.search.fit`, dev split only).

    `weights`: the ranking model's intercept, then one weight per feature of `features`.
    `calibration`: the score's intercept, the weight of the ranking logit, of the best similarity.
    `confident`: the confidence rule's intercept and weights over `CONFIDENCE_FEATURES` (the top
    score, its margin over the second, the best similarity, the margin between the first two
    ranking logits, and how far the first answer is ahead of every other in its best section's
    similarity, in its best similarity, and in how many of its texts are close to the question,
    see `confidence_row`), a logistic model of "the first answer is the one asked for"; confident
    when it reaches `thresholds["confident"]`. When not confident,
    two answers "fit" when both reach `thresholds["two"]` and the second's score is within
    `thresholds["two_gap"]` of the first. Nothing under `thresholds["shown"]` is shown to a learner.
    """

    features: tuple[str, ...]
    weights: tuple[float, ...]
    calibration: tuple[float, ...]
    confident: tuple[float, ...]
    thresholds: dict[str, float]
    dev_hash: str = ""
    fitted: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str] = WEIGHTS_FILE) -> Weights:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if (data.get("version") != WEIGHTS_VERSION or tuple(data["features"]) != FEATURES
                or len(data["confident"]) != 1 + len(CONFIDENCE_FEATURES)):
            raise ValueError(f"{path}: weights for version {data.get('version')} and features {data.get('features')}, "
                             f"this lookup needs version {WEIGHTS_VERSION} and {FEATURES}: fit again (python -m kb.search.fit)")
        return cls(tuple(data["features"]), tuple(data["weights"]), tuple(data["calibration"]),
                   tuple(data["confident"]), dict(data["thresholds"]), data.get("dev_hash", ""), data.get("fitted", {}))

    def to_json(self) -> str:
        return json.dumps({"version": WEIGHTS_VERSION, "features": list(self.features), "weights": list(self.weights),
                           "calibration": list(self.calibration), "confidence_features": list(CONFIDENCE_FEATURES),
                           "confident": list(self.confident), "thresholds": self.thresholds,
                           "dev_hash": self.dev_hash, "fitted": self.fitted}, indent=1) + "\n"


WEIGHTS_VERSION = 4   # 3: the confidence rule's section_margin, similarity_margin, close_margin; 4: classifier
FEATURES = ("question", "summary", "section", "behind", "bm25", "bm25_strength", "classifier")
CONFIDENCE_FEATURES = ("score", "margin", "similarity", "logit_margin", "section_margin", "similarity_margin",
                       "close_margin")
CLOSE = 0.5                # a text "close" to the question: cosine similarity at least this (close_margin)
LEXICAL_CANDIDATES = 30    # answers the lexical stage proposes
SHORTLIST = 300            # beyond this many answers, the semantic stage compares these text by text
QUERY_CACHE = 4096         # question embeddings kept (LRU, on the normalised text)


@dataclass(frozen=True)
class Section:
    anchor: str   # the heading's id on the answer's page ("" for text before the first heading)
    title: str
    text: str     # what is embedded: the heading and the section's words


def _heading_text(markdown: str) -> str:
    """A heading's text as the renderer's table of contents sees it (links and marks dropped)."""
    return html.unescape(INLINE_MARKS_RE.sub("", LINK_RE.sub(r"\1", markdown))).strip()


def clean_body(markdown: str) -> str:
    """The words of an answer's body: prose, words from formulas, code comments and strings.

    Formulas keep their symbols' names (`\\sigma` becomes `sigma`, `\\varepsilon` `epsilon`)
    but lose layout commands (`\\frac`, `\\left`...). Of a code fence only the comments and
    string literals are kept (the claims of `check(...)`, plot titles): identifiers such as `np`,
    `dZ`, `rng` would make every answer look alike. (Measured: keeping all code, none, or only
    comments and strings changes the look-up rate by about one phrasing in 80.)
    """
    def code(text: str) -> str:
        return "\n".join(COMMENT_RE.findall(text) + [s[1] for s in STRING_RE.findall(text)]) + "\n"

    def command(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in LATEX_LAYOUT:
            return " "
        return f" {name[3:] if name.startswith('var') else name} "

    text = "\n".join("\n".join(block.lines) if isinstance(block, Prose) else code("\n".join(block.code))
                     for block in blocks(split_lines(markdown)))
    text = LATEX_COMMAND_RE.sub(command, text)       # backslashes are in formulas, in prose
    return LINK_TARGET_RE.sub("]", text)


def sections(answer: Answer) -> list[Section]:
    """The answer's body cut at its headings (ATX headings outside code fences), in order."""
    found: list[tuple[str, str, list[str]]] = []
    used: set[str] = set()
    anchor, title, lines = "", answer.title, []
    for block in blocks(split_lines(answer.body)):  # the one fence lexer: no heading inside code
        if isinstance(block, Fence):
            lines += [block.fence + block.info, *block.code, *([block.fence] if block.closed else [])]
            continue
        for line in block.lines:
            heading = HEADING_RE.match(line)
            if heading:
                if anchor or any(x.strip() for x in lines):
                    found.append((anchor, title, lines))
                title = _heading_text(heading[2])
                anchor, lines = unique(slugify(title, "-"), used), []  # as the renderer's toc does
            else:
                lines.append(line)
    if anchor or any(x.strip() for x in lines):
        found.append((anchor, title, lines))
    return [Section(a, t, f"{t}\n{' '.join(clean_body(chr(10).join(body)).split())}") for a, t, body in found]


@dataclass
class _Answer:
    slug: str
    title: str
    summary: str


@dataclass(frozen=True)
class _Units:
    """What one answer contributes to the semantic stage: its texts, their kinds, sections, vectors."""

    entry: _Answer
    texts: tuple[str, ...]
    kind: tuple[int, ...]                      # 0 a question (title or alias), 1 the summary, 2 a section
    section: tuple[Section | None, ...]
    vectors: npt.NDArray[np.floating] | None = None   # a view of the state's mapped matrix once published
    centroid: npt.NDArray[np.float32] | None = None   # the texts' mean direction, for the shortlist


def digest(answer: Answer) -> str:
    """A digest of what the semantic stage embeds of an answer (its questions, summary and body, as
    written): equal digests, nothing to re-section or embed. (`kb.search.index.digest` covers only
    what the lexical stage indexes.)"""
    return fields_digest(answer.slug, answer.title, answer.summary, answer.body, *answer.aliases)


def _forgotten(unit: _Units) -> dict[str, Any]:
    """What a unit keeps of its texts once they have vectors: only how many there are (and each
    section's anchor and title). At 10,000 answers their words are ~90 MiB per process."""
    return {"texts": ("",) * len(unit.texts),
            "section": tuple(s if s is None else Section(s.anchor, s.title, "") for s in unit.section)}


def _units(answer: Answer) -> _Units:
    parts = [(0, answer.title, None), *((0, alias, None) for alias in answer.aliases),
             (1, answer.summary, None), *((2, s.text, s) for s in sections(answer))]
    return _Units(_Answer(answer.slug, answer.title, answer.summary), tuple(t for _, t, _ in parts),
                  tuple(k for k, _, _ in parts), tuple(p for _, _, p in parts))


@dataclass
class _State:
    entries: list[_Answer]             # by slug
    vectors: npt.NDArray[np.floating]  # [texts x 384] unit vectors: float16, mapped (kb.search.mapped)
    owner: npt.NDArray[np.int64]       # the answer (index into entries) of each text
    kind: npt.NDArray[np.int8]         # 0 a question (title or alias), 1 the summary, 2 a section
    section: list[Section | None]      # the Section of each text (None unless kind 2)
    position: dict[str, int]           # slug -> index into entries
    centroids: npt.NDArray[np.float32]  # [answers x 384]: each answer's texts' mean direction, for the shortlist
    generation: int = 0                # which publication this is (a key of cached responses)
    classifier: Classifier | None = None   # trained on this state's vectors (`kb.search.classifier`)
    key: str = ""                      # the name of its vectors' file: equal keys, equal texts
    start: npt.NDArray[np.intp] = field(init=False)         # each answer's first text
    end: npt.NDArray[np.intp] = field(init=False)           # and the end of its texts

    def __post_init__(self) -> None:
        n = len(self.entries)
        self.start = np.searchsorted(self.owner, np.arange(n), side="left")
        self.end = np.searchsorted(self.owner, np.arange(n), side="right")

    @classmethod
    def of(cls, units: list[_Units], matrix: npt.NDArray[np.floating]) -> _State:
        """The state over these answers' units, in this order, whose texts' vectors are `matrix`'s rows."""
        entries: list[_Answer] = []
        owner: list[int] = []
        kind: list[int] = []
        section: list[Section | None] = []
        for i, unit in enumerate(units):
            assert unit.centroid is not None
            entries.append(unit.entry)
            owner += [i] * len(unit.texts)
            kind += unit.kind
            section += unit.section
        centroids = (np.stack([unit.centroid for unit in units if unit.centroid is not None]) if units
                     else np.zeros((0, DIMENSION), np.float32))
        return cls(entries, matrix, np.array(owner, np.int64), np.array(kind, np.int8), section,
                   {e.slug: i for i, e in enumerate(entries)}, centroids)


EMPTY = _State([], np.zeros((0, DIMENSION), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int8), [], {},
               np.zeros((0, DIMENSION), np.float32))


@dataclass
class RebuildStatus:
    """What the background worker has done, for `/healthz`-like reports, tests and benchmarks."""

    submitted: int = 0       # generations handed to the worker
    finished: int = 0        # the last generation it finished (successfully or not)
    ready: bool = False      # a semantic state is published (searches use it)
    embedded: int = 0        # texts the model embedded over this lookup's life
    sectioned: int = 0       # answers cut into sections over this lookup's life
    failures: int = 0        # rebuilds that raised (logged; searches carry on)
    last_error: str = ""


class Lookup:
    """Hybrid lookup over the answers given to `rebuild` or `submit`; thread-safe for searching.

    `submit` never blocks: a single-flight background worker brings the semantic stage in step
    (only answers whose digest changed are re-sectioned and embedded) and publishes a new state in
    one assignment; a newer submission supersedes an older one still waiting. Until a first state
    is published, searches answer from the lexical stage alone, never confident. A rebuild that
    fails is logged, and searches go on with what was there before.
    """

    def __init__(self, index: SearchIndex, db_path: str | os.PathLike[str], embedder: Embedder,
                 weights: Weights | None = None) -> None:
        self.index = index
        self.embedder = embedder
        self.weights = weights or default_weights()
        self.cache = EmbeddingCache(db_path, embedder)
        self.files = VectorFiles(db_path)
        self.state = EMPTY
        self.status = RebuildStatus()
        self._units: dict[str, tuple[str, _Units]] = {}   # slug -> (digest, units with vectors)
        self._digests = Remembered(digest)
        self._known: dict[str, _Answer] = {}              # the latest submitted answers, for the lexical fallback
        self._building = threading.Lock()                 # one rebuild at a time
        self._worker = threading.Condition()
        self._pending: tuple[int, list[Answer]] | None = None
        self._running = False
        self._queries: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        # Whole responses per state and normalised question (a state is never changed, only replaced).
        self._responses: OrderedDict[tuple[int, int, str, int], dict[str, Any]] = OrderedDict()
        self._queries_lock = threading.Lock()
        # The lexical stage runs while the model embeds the question (both release the GIL):
        # at 10,000 answers that takes its ~2 ms off every look-up.
        self._lexical = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kb-lexical")

    @property
    def ready(self) -> bool:
        """Whether searches use the semantic stage (a first rebuild has been published)."""
        return self.status.ready

    # -- building ------------------------------------------------------------------------------

    def _prepared(self, answer: Answer, key: str) -> tuple[str, _Units]:
        known = self._units.get(answer.slug)
        if known is not None and known[0] == key:
            return known
        self.status.sectioned += 1
        return key, _units(answer)

    def rebuild(self, answers: Iterable[Answer]) -> int:
        """Bring the lexical index and the semantic stage in step with `answers`, now; return how
        many texts were embedded. Only answers whose digest changed are sectioned and embedded
        again (and only texts never embedded before: a restart embeds nothing)."""
        answers = sorted(answers, key=lambda a: a.slug)
        self._known = {a.slug: _Answer(a.slug, a.title, a.summary) for a in answers}
        with self._building:
            return self._rebuild(answers)

    def _rebuild(self, answers: list[Answer]) -> int:
        started = time.monotonic()
        self.index.rebuild(answers)
        digests = self._digests(answers)
        prepared = {a.slug: self._prepared(a, digests[a.slug]) for a in answers}
        units = [unit for _, unit in prepared.values()]
        name = self.files.key(key for key, _ in prepared.values())
        rows = sum(len(unit.texts) for unit in units)
        matrix = self.files.load(name, rows) if rows else np.zeros((0, DIMENSION), np.float16)
        embedded = 0
        if matrix is None:
            # Workers starting together take turns: the first writes the file, the others map it.
            with self.cache.database.exclusive("vectors"):
                matrix = self.files.load(name, rows)
                if matrix is None:
                    matrix, embedded = self._write_vectors(name, units)
        offset, plain = 0, np.asarray(matrix)   # views of a plain array: a memmap's slicing is slower
        for slug, (key, unit) in prepared.items():  # each answer's rows of the mapped matrix
            rows_of = plain[offset:offset + len(unit.texts)]
            prepared[slug] = (key, dataclasses.replace(unit, vectors=rows_of) if unit.vectors is not None else
                              dataclasses.replace(unit, vectors=rows_of, centroid=mean_direction(rows_of), **_forgotten(unit)))
            offset += len(unit.texts)
        self._units = prepared
        state = _State.of([unit for _, unit in prepared.values()], matrix)
        state.generation, state.key = self.state.generation + 1, name
        # A change that leaves every searched text as it was (a touched file, a draft) trains nothing.
        state.classifier = (self.state.classifier if self.state.key == name else
                            train_classifier(plain, state.owner, len(state.entries)))
        self.state = state
        self.status.ready = True
        self.status.embedded += embedded
        if embedded:
            log.info("search ready: %d texts embedded in %.1f s", embedded, time.monotonic() - started)
        return embedded

    def _write_vectors(self, name: str, units: list[_Units]) -> tuple[npt.NDArray[np.floating], int]:
        """The state's file, from the vectors held (unchanged answers) and the store's (the changed
        ones, embedding what it lacks); (the mapped matrix, how many texts were embedded)."""
        fetched, embedded = self.cache.fetch([t for unit in units if unit.vectors is None for t in unit.texts])
        parts, offset = [], 0
        for unit in units:
            if unit.vectors is None:
                parts.append(fetched[offset:offset + len(unit.texts)])
                offset += len(unit.texts)
            else:
                parts.append(unit.vectors)
        return self.files.store(name, parts), embedded

    def submit(self, answers: Iterable[Answer]) -> int:
        """Rebuild off the caller's thread (single flight; the newest submission wins); return
        its generation, for `wait`. Never blocks on embedding."""
        answers = sorted(answers, key=lambda a: a.slug)
        with self._worker:
            self._known = {a.slug: _Answer(a.slug, a.title, a.summary) for a in answers}
            self.status.submitted += 1
            self._pending = (self.status.submitted, answers)
            if not self._running:
                self._running = True
                threading.Thread(target=self._work, name="kb-embed", daemon=True).start()
            return self.status.submitted

    def _work(self) -> None:
        while True:
            with self._worker:
                if self._pending is None:
                    self._running = False
                    self._worker.notify_all()
                    return
                generation, answers = self._pending
                self._pending = None
            try:
                with self._building:
                    self._rebuild(answers)
                self.status.last_error = ""
            except Exception as exc:  # logged; searches go on with the state there was
                self.status.failures += 1
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("search rebuild failed; searches use %s", "the previous state" if self.ready
                              else "the lexical stage until the next rebuild")
            finally:
                with self._worker:
                    self.status.finished = generation
                    self._worker.notify_all()

    def wait(self, generation: int | None = None, timeout: float | None = None) -> bool:
        """Block until the worker has finished `generation` (default: the last submitted); True if
        it has. For tests, the static export and `KB_RUN_MISSING=wait`, never for a request."""
        with self._worker:
            wanted = self.status.submitted if generation is None else generation
            return self._worker.wait_for(lambda: self.status.finished >= wanted, timeout)

    # -- searching -----------------------------------------------------------------------------

    def question(self, text: str) -> npt.NDArray[np.float32]:
        """The question's embedding, from a bounded LRU cache keyed on its normalised text."""
        key = normalised(text)
        with self._queries_lock:
            vector = self._queries.get(key)
            if vector is not None:
                self._queries.move_to_end(key)
                return vector
        vector = self.embedder.query(key)
        with self._queries_lock:
            self._queries[key] = vector
            if len(self._queries) > QUERY_CACHE:
                self._queries.popitem(last=False)
        return vector

    def slugs(self, chosen: Iterable[int], state: _State | None = None) -> list[str]:
        """The slugs of the answers `features` considered (its first value)."""
        entries = (state or self.state).entries
        return [entries[int(i)].slug for i in chosen]

    def features(self, query: str, state: _State | None = None, question: npt.NDArray[np.float32] | None = None
                 ) -> tuple[np.ndarray, npt.NDArray[np.float64], tuple[np.ndarray, np.ndarray, npt.NDArray[np.float32]]]:
        """The answers considered (indices into entries, ascending), their feature matrix
        [answers x FEATURES], and for the search: their texts' rows, offsets and similarities.
        `question`: the query's embedding when the caller has it (the evaluation keeps its own).

        Beyond `SHORTLIST` answers, only the `SHORTLIST` whose texts' mean direction is nearest
        the question, and the lexical stage's candidates, are compared text by text.
        """
        state = state or self.state
        n = len(state.entries)
        pending = self._lexical.submit(self.index.candidates, query, LEXICAL_CANDIDATES)
        question = self.question(query) if question is None else question
        hits = pending.result()
        found = {state.position[slug]: score for slug, score in hits if slug in state.position}
        if n <= SHORTLIST:
            chosen = np.arange(n)
        else:
            near = np.argpartition(-dot(state.centroids, question), SHORTLIST)[:SHORTLIST]
            chosen = np.union1d(near, np.fromiter(found, np.int64, len(found)))
        counts = state.end[chosen] - state.start[chosen]
        offsets = np.r_[0, np.cumsum(counts)]
        rows = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts) + np.repeat(state.start[chosen], counts)
        similarity = dot(state.vectors[rows] if n > SHORTLIST else state.vectors, question)
        kinds = state.kind[rows]
        best = np.stack([np.maximum.reduceat(np.where(kinds == k, similarity, -2.0), offsets[:-1]) for k in range(3)])
        best[2] = np.where(best[2] < -1.5, best[1], best[2])      # an answer without a body
        overall = best.max(axis=0)
        lexical, strength = np.zeros(len(chosen)), np.zeros(len(chosen))
        learnt = (state.classifier.log_probabilities(question)[chosen] if state.classifier is not None
                  else np.full(len(chosen), uniform(n)))
        for i, answer in enumerate(map(int, chosen)):
            if answer in found:
                lexical[i] = found[answer] / hits[0][1]          # relative to the query's best
                strength[i] = math.log1p(max(found[answer], 0.0))
        matrix = np.stack([best[0], best[1], best[2], overall.max() - overall, lexical, strength, learnt], axis=1)
        return chosen, matrix, (rows, offsets, similarity)

    def lookup(self, query: object, limit: int = 5) -> dict[str, Any]:
        """{"confident", "fit", "ready", "shown", "results": [{slug, title, summary, score, section}]},
        best first.

        `fit` is "one" (confident: the first answer is the one asked for), "two" (two neighbours
        fit about equally: the learner picks) or "none". `shown` is how many of the results a
        learner's page shows (none near zero). `ready` is false while the semantic stage is being
        built: the results then come from the lexical stage alone and are never confident.
        Never raises, whatever the query; never waits for a rebuild.
        """
        if not isinstance(query, str):
            query = "" if query is None else str(query)
        # Lone surrogates (which no UTF-8 request carries) would stop the tokenizer.
        query = query.encode("utf-8", "replace").decode("utf-8").strip()
        state, ready = self.state, self.ready
        nothing: dict[str, Any] = {"confident": False, "fit": "none", "ready": ready, "shown": 0, "results": []}
        if not query or limit <= 0:
            return nothing
        if not ready:
            return self._lexical_only(query, limit)
        if not state.entries:
            return nothing
        key = (state.generation, id(self.weights), " ".join(query.split()).lower(), limit)
        with self._queries_lock:
            cached = self._responses.get(key)
            if cached is not None:
                self._responses.move_to_end(key)
                return copy.deepcopy(cached)
        found = self._search(query, limit, state)
        with self._queries_lock:
            self._responses[key] = copy.deepcopy(found)
            if len(self._responses) > QUERY_CACHE:
                self._responses.popitem(last=False)
        return found

    def _search(self, query: str, limit: int, state: _State) -> dict[str, Any]:
        chosen, matrix, (rows, offsets, similarity) = self.features(query, state)
        logits = ranking(matrix, self.weights.weights)
        scores = probability(matrix, self.weights)
        order = np.lexsort((np.arange(len(scores)), -scores))
        fit, shown = verdict(scores[order], logits[order], matrix[order], close_texts(offsets, similarity)[order],
                             self.weights)
        results = []
        for i in order[:limit]:
            entry = state.entries[chosen[i]]
            span = slice(offsets[i], offsets[i + 1])
            own = np.flatnonzero(state.kind[rows[span]] == 2)
            part = (state.section[rows[span][own[np.argmax(similarity[span][own])]]] if own.size
                    else Section("", entry.title, ""))
            results.append({"slug": entry.slug, "title": entry.title, "summary": entry.summary,
                            "score": round(float(scores[i]), 4),
                            "section": {"anchor": part.anchor, "title": part.title}})
        return {"confident": fit == "one", "fit": fit, "ready": True, "shown": min(shown, len(results)),
                "results": results}

    def _lexical_only(self, query: str, limit: int) -> dict[str, Any]:
        """While the semantic stage is built: the lexical stage's answers, never confident. Their
        score is BM25 relative to the best, halved: not calibrated, and below any confident one."""
        known = self._known
        hits = [(slug, score) for slug, score in self.index.candidates(query, max(limit, 3)) if slug in known]
        results = [{"slug": slug, "title": known[slug].title, "summary": known[slug].summary,
                    "score": round(0.5 * max(score, 0.0) / max(hits[0][1], 1e-9), 4),
                    "section": {"anchor": "", "title": known[slug].title}} for slug, score in hits[:limit]]
        return {"confident": False, "fit": "none", "ready": False, "shown": min(3, len(results)), "results": results}


def embed_answers(answers: Iterable[Answer], db_path: str | os.PathLike[str], embedder: Embedder) -> tuple[int, int]:
    """Store the vectors of the answers' texts in the database (those missing); return (embedded,
    texts). What `kb check` and `kb index` do, so a service started on the database embeds nothing."""
    texts = [t for a in answers for t in _units(a).texts]
    _, embedded = EmbeddingCache(db_path, embedder).fetch(texts)
    return embedded, len(texts)


def default_weights() -> Weights:
    """The weights file shipped with the package (read once per process)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Weights.load()
    return _DEFAULT


_DEFAULT: Weights | None = None


def normalised(question: str) -> str:
    """A question as it is embedded and cached: the model's tokenizer lowercases and splits on spaces."""
    return " ".join(question.split()).lower()


def close_texts(offsets: npt.NDArray[np.integer], similarity: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """How many of each answer's texts (`features`' offsets and similarities) are close to the
    question: cosine similarity at least `CLOSE`."""
    if len(offsets) < 2:
        return np.zeros(0)
    counts: npt.NDArray[np.float64] = np.add.reduceat((similarity >= CLOSE).astype(np.float64), offsets[:-1])
    return counts


def confidence_row(scores: npt.NDArray[np.float64], logits: npt.NDArray[np.float64], matrix: npt.NDArray[np.float64],
                   close: npt.NDArray[np.float64]) -> list[float]:
    """`CONFIDENCE_FEATURES` of a response, from its answers' scores, ranking logits, feature rows
    and close texts (`close_texts`), best first. The three margins compare the first answer with
    the best of all the others (not only the second): its best section's similarity, its best
    similarity, and log(1 + its close texts)."""
    second = float(scores[1]) if len(scores) > 1 else 0.0
    gap = float(logits[0] - logits[1]) if len(logits) > 1 else 10.0
    best = matrix[:, :3].max(axis=1)
    alone = len(scores) < 2   # no other answer: as if there were one at zero
    section = float(matrix[0, 2] - (0.0 if alone else matrix[1:, 2].max()))
    similarity = float(best[0] - (0.0 if alone else best[1:].max()))
    texts = float(np.log1p(close[0]) - (0.0 if alone else np.log1p(close[1:].max())))
    return [float(scores[0]), float(scores[0]) - second, float(best[0]), gap, section, similarity, texts]


def verdict(scores: npt.NDArray[np.float64], logits: npt.NDArray[np.float64], matrix: npt.NDArray[np.float64],
            close: npt.NDArray[np.float64], weights: Weights) -> tuple[str, int]:
    """("one" | "two" | "none", how many results a learner's page shows) from the answers' scores,
    ranking logits, feature rows (`FEATURES`) and close texts (`close_texts`), best first: the rule
    of `Weights`. The page shows the first (one), the first two (two) or nothing as an answer
    (none), and below them up to three in all, none under the near-zero floor `shown`."""
    if not len(scores):
        return "none", 0
    t = weights.thresholds
    c = weights.confident
    logit = c[0] + float(np.dot(c[1:], confidence_row(scores, logits, matrix, close)))
    above = int(np.sum(scores[:3] >= t["shown"]))
    second = float(scores[1]) if len(scores) > 1 else 0.0
    if logit >= math.log(t["confident"] / (1 - t["confident"])):
        return "one", max(above, 1)
    if second >= t["two"] and float(scores[0]) - second <= t["two_gap"]:
        return "two", max(above, 2)
    return "none", above


def mean_direction(vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """The unit vector along the sum of `vectors` (zero for none)."""
    total: npt.NDArray[np.float32] = vectors.sum(axis=0, dtype=np.float32)
    norm = float(np.linalg.norm(total))
    return total / np.float32(norm) if norm > 1e-12 else total


def dot(matrix: npt.NDArray[np.floating], vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """matrix @ vector on this thread. Not BLAS: its threads spin on after a large product and
    take the core the next question's embedding needs (measured at 10,000 answers: a look-up
    took 60 ms with BLAS's threads, 20 ms without)."""
    product: npt.NDArray[np.float32] = np.einsum("ij,j->i", matrix, vector, dtype=np.float32, casting="same_kind")
    return product


def ranking(matrix: np.ndarray, weights: Sequence[float] | None = None) -> npt.NDArray[np.float64]:
    """The ranking model's logit per answer (higher is better)."""
    weights = default_weights().weights if weights is None else weights
    logits: npt.NDArray[np.float64] = weights[0] + matrix.astype(np.float64) @ np.asarray(weights[1:], dtype=np.float64)
    return logits


def probability(matrix: np.ndarray, weights: Weights | None = None, ranking_weights: Sequence[float] | None = None,
                calibration: Sequence[float] | None = None) -> npt.NDArray[np.float64]:
    """Each answer's calibrated probability of being the one asked for: a logistic model of its
    ranking logit and its best similarity to the question (which is what tells a question the
    knowledge base does not answer: nothing in it is close)."""
    weights = weights or default_weights()
    ranking_weights = weights.weights if ranking_weights is None else ranking_weights
    calibration = weights.calibration if calibration is None else calibration
    similarity = matrix[:, :3].max(axis=1).astype(np.float64)
    logits = calibration[0] + calibration[1] * ranking(matrix, ranking_weights) + calibration[2] * similarity
    probabilities: npt.NDArray[np.float64] = 1 / (1 + np.exp(-np.clip(logits, -30, 30)))
    return probabilities
