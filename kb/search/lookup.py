"""Lookup: the answers (and the section of each) that best answer a learner's question.

Two stages. The lexical stage (`kb.search.index.SearchIndex.candidates`, FTS5 BM25 over the answers'
questions and tags) finds answers that share the question's words; the semantic stage compares the question's embedding
(`kb.search.embeddings`) with an embedding of every answer's title, each alias, its summary and each
section of its body, so a question worded without the answer's vocabulary still finds it.

Each answer gets a few features (best similarity to one of its questions, to its summary, to one
of its sections, how far it is behind the best answer, and its BM25 score relative to the best
BM25 score of the query, and how strong that is); a logistic model over them ranks, and a second
one, over the rank score and the best similarity, gives the score: a calibrated probability, in
[0, 1], that the answer is the one asked for. The weights and the `CONFIDENT` threshold were fitted on the dev split of `tests/lookup_eval/` with
`bench/lookup_fit.py` (never on the test split); see docs/search.md.

A result names the section that matched best, so a link goes straight to it
(`/answers/<slug>#<anchor>`); the anchor is the id `kb.render.markdown` gives that heading.
"""
from __future__ import annotations

import html
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from markdown.extensions.toc import slugify, unique

from kb.format.answer import Answer, split_lines
from kb.format.blocks import Fence, Prose, blocks

from .embeddings import Embedder, EmbeddingCache
from .index import SearchIndex

log = logging.getLogger(__name__)
READY_WAIT = 300.0  # seconds a search waits for the first embedding (a fresh database, on a slow machine)
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

# Fitted by `bench/lookup_fit.py` on the dev split (592 questions over 51 answers: tests/lookup_eval
# dev and tests/lookup_cases.py; 34 out of scope), cross-fitted (a question is never scored against
# an alias cut from it). The ranking model: intercept, then one weight per feature of `FEATURES`.
FEATURES = ("question", "summary", "section", "behind", "bm25", "bm25_strength")
WEIGHTS = (-6.954, 2.475, 2.935, 3.739, -19.958, 5.145, -0.413)
# The score: intercept, weight of the ranking logit, weight of the best similarity.
CALIBRATION = (-3.246, 1.049, 5.476)
# The best result's score at or above which the response is confident. On dev: 4.7% of the
# in-scope questions fall below it, and 91.2% of the out-of-scope ones.
CONFIDENT = 0.20
LEXICAL_CANDIDATES = 30    # answers the lexical stage proposes
SHORTLIST = 300            # beyond this many answers, the semantic stage compares these text by text


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


@dataclass
class _State:
    entries: list[_Answer]             # by slug
    texts: list[str]                   # every embedded text; an answer's texts are contiguous
    vectors: npt.NDArray[np.float32]   # [texts x 384], unit vectors
    owner: npt.NDArray[np.int64]       # the answer (index into entries) of each text
    kind: npt.NDArray[np.int8]         # 0 a question (title or alias), 1 the summary, 2 a section
    section: list[Section | None]      # the Section of each text (None unless kind 2)
    position: dict[str, int]           # slug -> index into entries
    start: npt.NDArray[np.intp] = field(init=False)         # each answer's first text
    end: npt.NDArray[np.intp] = field(init=False)           # and the end of its texts
    centroids: npt.NDArray[np.float32] = field(init=False)  # each answer's texts' mean direction, for the shortlist

    def __post_init__(self) -> None:
        n = len(self.entries)
        self.start = np.searchsorted(self.owner, np.arange(n), side="left")
        self.end = np.searchsorted(self.owner, np.arange(n), side="right")
        self.centroids = np.zeros((n, self.vectors.shape[1]), np.float32)
        if n:
            sums = np.add.reduceat(self.vectors, self.start, axis=0)
            self.centroids = sums / np.clip(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12, None)


EMPTY = _State([], [], np.zeros((0, 384), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int8), [], {})


class Lookup:
    """Hybrid lookup over the answers given to `rebuild`; thread-safe for searching."""

    def __init__(self, index: SearchIndex, db_path: str | os.PathLike[str], embedder: Embedder) -> None:
        self.index = index
        self.embedder = embedder
        self.cache = EmbeddingCache(db_path, embedder)
        self.state = EMPTY
        self._rebuilding = threading.Lock()  # one rebuild at a time; the last to get the lock wins
        self._ready = threading.Event()      # set once the first rebuild has finished
        # The lexical stage runs while the model embeds the question (both release the GIL):
        # at 10,000 answers that takes its ~2 ms off every look-up.
        self._lexical = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kb-lexical")

    def rebuild(self, answers: Iterable[Answer]) -> None:
        """Bring the lexical index and the embeddings in step with `answers`: only texts never
        embedded before are embedded (a restart embeds nothing, an edit only what it changed)."""
        with self._rebuilding:
            self._rebuild(sorted(answers, key=lambda a: a.slug))
        self._ready.set()

    def rebuild_in_background(self, answers: Iterable[Answer]) -> threading.Thread:
        """`rebuild` off the start-up path: a fresh database embeds every text once (tens of
        seconds), and the service should answer meanwhile. Searches wait until it is done."""
        answers = list(answers)
        self.index.rebuild(answers)  # the lexical stage is ready at once (and cheap)
        thread = threading.Thread(target=self.rebuild, args=(answers,), name="kb-embed", daemon=True)
        thread.start()
        return thread

    def _rebuild(self, answers: list[Answer]) -> None:
        started, embedded = time.monotonic(), self.embedder.calls
        self.index.rebuild(answers)
        entries, texts, owner, kind, section = [], [], [], [], []
        for i, answer in enumerate(answers):
            entries.append(_Answer(answer.slug, answer.title, answer.summary))
            units = [(0, answer.title, None), *((0, alias, None) for alias in answer.aliases),
                     (1, answer.summary, None), *((2, s.text, s) for s in sections(answer))]
            for k, text, part in units:
                texts.append(text)
                owner.append(i)
                kind.append(k)
                section.append(part)
        self.state = _State(entries, texts, self.cache.vectors(texts), np.array(owner, np.int64),
                            np.array(kind, np.int8), section, {e.slug: i for i, e in enumerate(entries)})
        if self.embedder.calls != embedded:   # texts changed: forget the vectors nothing uses now
            self.cache.prune(texts)
            log.info("search ready: %d texts embedded in %.1f s", len(texts), time.monotonic() - started)

    def features(self, query: str, state: _State | None = None
                 ) -> tuple[np.ndarray, npt.NDArray[np.float64], tuple[np.ndarray, np.ndarray, npt.NDArray[np.float32]]]:
        """The answers considered (indices into entries, ascending), their feature matrix
        [answers x FEATURES], and for the search: their texts' rows, offsets and similarities.

        Beyond `SHORTLIST` answers, only the `SHORTLIST` whose texts' mean direction is nearest
        the question, and the lexical stage's candidates, are compared text by text.
        """
        state = state or self.state
        n = len(state.entries)
        pending = self._lexical.submit(self.index.candidates, query, LEXICAL_CANDIDATES)
        question = self.embedder.query(query)
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
        for i, answer in enumerate(map(int, chosen)):
            if answer in found:
                lexical[i] = found[answer] / hits[0][1]          # relative to the query's best
                strength[i] = math.log1p(max(found[answer], 0.0))
        matrix = np.stack([best[0], best[1], best[2], overall.max() - overall, lexical, strength], axis=1)
        return chosen, matrix, (rows, offsets, similarity)

    def lookup(self, query: object, limit: int = 5) -> dict[str, Any]:
        """{"confident": bool, "results": [{slug, title, summary, score, section}]}, best first.

        Never raises, whatever the query; the results are the nearest answers even when the
        best is not confident (then `confident` is false).
        """
        if not isinstance(query, str):
            query = "" if query is None else str(query)
        # Lone surrogates (which no UTF-8 request carries) would stop the tokenizer.
        query = query.encode("utf-8", "replace").decode("utf-8").strip()
        self._ready.wait(READY_WAIT)  # the first embedding of a fresh database may be under way
        state = self.state
        if not query or not state.entries or limit <= 0:
            return {"confident": False, "results": []}
        chosen, matrix, (rows, offsets, similarity) = self.features(query, state)
        scores = probability(matrix)
        limit = min(limit, len(scores))
        order = np.argpartition(-scores, limit - 1)[:limit]
        order = order[np.lexsort((order, -scores[order]))]
        results = []
        for i in order:
            entry = state.entries[chosen[i]]
            span = slice(offsets[i], offsets[i + 1])
            own = np.flatnonzero(state.kind[rows[span]] == 2)
            part = (state.section[rows[span][own[np.argmax(similarity[span][own])]]] if own.size
                    else Section("", entry.title, ""))
            results.append({"slug": entry.slug, "title": entry.title, "summary": entry.summary,
                            "score": round(float(scores[i]), 4),
                            "section": {"anchor": part.anchor, "title": part.title}})
        return {"confident": bool(results) and results[0]["score"] >= CONFIDENT, "results": results}


def dot(matrix: npt.NDArray[np.float32], vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """matrix @ vector on this thread. Not BLAS: its threads spin on after a large product and
    take the core the next question's embedding needs (measured at 10,000 answers: a look-up
    took 60 ms with BLAS's threads, 20 ms without)."""
    product: npt.NDArray[np.float32] = np.einsum("ij,j->i", matrix, vector)
    return product


def ranking(matrix: np.ndarray, weights: Sequence[float] = WEIGHTS) -> npt.NDArray[np.float64]:
    """The ranking model's logit per answer (higher is better)."""
    logits: npt.NDArray[np.float64] = weights[0] + matrix.astype(np.float64) @ np.asarray(weights[1:], dtype=np.float64)
    return logits


def probability(matrix: np.ndarray, weights: Sequence[float] = WEIGHTS,
                calibration: Sequence[float] = CALIBRATION) -> npt.NDArray[np.float64]:
    """Each answer's calibrated probability of being the one asked for: a logistic model of its
    ranking logit and its best similarity to the question (which is what tells a question the
    knowledge base does not answer: nothing in it is close)."""
    similarity = matrix[:, :3].max(axis=1).astype(np.float64)
    logits = calibration[0] + calibration[1] * ranking(matrix, weights) + calibration[2] * similarity
    probabilities: npt.NDArray[np.float64] = 1 / (1 + np.exp(-np.clip(logits, -30, 30)))
    return probabilities
