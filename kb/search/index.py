"""The index: SQLite FTS5 over each answer's questions (title, aliases) and tags, porter
stemming, BM25 with column weights. It is the lexical stage of the lookup (`kb.search.lookup`)
and the source of the tables the static export's `search.js` ranks with (`static_tables`).

The index lives in the same SQLite file as the evidence cache (`kb.store.cache.Store`), in its own
tables: `search_short` (one row per answer, plus empty padding rows, see `PAD_ROWS_PER_ANSWER`),
`search_docs` (each answer's row and a digest of its indexed fields) and `search_meta` (the
schema it was built with). Like the rest of that file it is derived from `answers/` and can be
deleted at any time.

`rebuild` re-indexes only the answers whose indexed fields changed (an edit re-indexes one row,
not the knowledge base), and is safe when several processes call it at once on the same file, as
gunicorn workers do at start-up: the update is one `BEGIN IMMEDIATE` transaction that compares
the digests again once it holds the write lock, so the second worker finds the work done;
readers never see a half-built index.

`candidates` takes free text as a learner types it. It never hands that text to FTS5's query
syntax: the text is split into words, English function words are dropped, a few synonyms and
British/American spellings are added, each term is quoted and the terms are OR-ed, so an answer
that matches only some of them still ranks. The score is BM25 over the row (title and aliases
weighted most) plus BM25 over its questions alone. Prefix queries (`"init"*`) are left out: they
cost a look-up or two. (The whole-answer ranker that came before the hybrid lookup is kept as a
baseline in `bench/baseline_ranker.py`.)
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from kb.format.answer import Answer, Remembered
from kb.store.database import Database

log = logging.getLogger(__name__)

# Bump when what is indexed, or how, changes: the next `rebuild` then rebuilds.
INDEX_VERSION = "3"  # 3: the whole-answer table `search_fts` is gone

# Each answer's questions and tags: the posting lists hold a few words per answer instead of a
# whole body, so at 10,000 answers a query costs a millisecond or two instead of tens. The
# semantic stage of the lookup reads the summaries and the bodies (by section).
COLUMNS = ("title", "aliases", "tags")       # then slug, UNINDEXED
# BM25 weight per column (FTS5 adds the weighted hits of a term over the columns before BM25
# saturates them).
WEIGHTS = (2.0, 2.0, 1.0)
# The answer's questions (title and aliases) are also scored on their own and added, so a query
# that reads like one of the questions wins even against an answer that uses its words more.
QUESTION_WEIGHTS = (1.0, 1.0, 0.0)
QUESTION_BOOST = 0.5
# FTS5's bm25() takes a word's IDF as log((N - n + 0.5) / (n + 0.5)), floored at 1e-6: a word in
# half the rows or more counts for nothing, which in a small knowledge base silences "sigmoid" or
# "relu" (in most answers about activations). Empty padding rows (slug NULL, they match nothing)
# make N five times the number of answers, so every word that is not in every answer keeps a
# weight. Measured on tests/lookup_cases.py when it held 87 phrasings over 18 answers (with the
# whole-answer ranker of then): top-1 0.69 without padding, 0.87 with it.
PAD_ROWS_PER_ANSWER = 4
TOKENIZE = "porter unicode61 remove_diacritics 2"
FTS_SQL = (f"CREATE VIRTUAL TABLE search_short USING fts5({', '.join(COLUMNS)}, slug UNINDEXED, "
           f"tokenize = '{TOKENIZE}')")
DOCS_SQL = "CREATE TABLE search_docs (slug TEXT PRIMARY KEY, digest TEXT NOT NULL, row INTEGER NOT NULL)"
META_SQL = "CREATE TABLE IF NOT EXISTS search_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
INSERT_SQL = (f"INSERT INTO search_short ({', '.join(COLUMNS)}, slug) "
              f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})")
MAX_LEXICAL_TERMS = 12  # of a long post, the words the lexical stage looks for (its opening ones)
# What the stored index was built with: any change and the next `rebuild` starts from scratch.
SCHEMA_ID = json.dumps([INDEX_VERSION, FTS_SQL, DOCS_SQL, PAD_ROWS_PER_ANSWER])
BULK_FRACTION = 0.2  # re-indexing more than this share of the rows ends with an FTS5 'optimize'


MAX_QUERY_CHARS = 2000  # of a query, the part that is read (a pasted essay is cut short)
MAX_TERMS = 32          # words of a query that are searched for
MAX_TERM_CHARS = 40     # longer "words" are not words

# Words that say nothing about which answer is meant, kept as a short explicit list ("not",
# "without" carry no meaning for a bag-of-words match either). Not "he": He initialisation.
STOP_WORDS = frozenset("""
a about after again all also am an and any are as at be because been before being between both
but by can could did do does doing done during each either else for from get gets getting got
had has have having her here hers him his how i if in into is it its itself just let lets
may me might mine more most much must my no nor not of off on once only or other our ours out
over own really she should so some such than that the their theirs them then there these
they this those though through to too under until up upon us very vs versus was we were what
whats when where whether which while who whom whose why will with within without would yes yet
you your yours s t d ll re ve don doesn didn isn aren wasn weren won wouldn shouldn couldn
please thanks thank hi hello anyone someone explain explanation understand question
""".split())

WORD_RE = re.compile(r"[^\W_]+")          # letters and digits, as FTS5's unicode61 sees words
# British and American spellings of words a learner may type either way; -ise/-ize is by rule.
SPELLINGS = {
    "center": "centre", "centers": "centres", "centered": "centred", "centering": "centring",
    "behavior": "behaviour", "behaviors": "behaviours", "modeling": "modelling",
    "modeled": "modelled", "labeled": "labelled", "labeling": "labelling", "gray": "grey",
}
SPELLINGS.update({v: k for k, v in SPELLINGS.items()})
# Words a learner uses for what the answers call otherwise: word(s) -> terms also searched for.
SYNONYMS = {
    ("hyperbolic", "tangent"): ["tanh"],
    ("rectified", "linear"): ["relu"], ("rectifier",): ["relu"], ("rectifiers",): ["relu"],
    ("logistic", "function"): ["sigmoid"], ("logistic", "activation"): ["sigmoid"],
    ("neuron",): ["unit"], ("neurons",): ["units"], ("net",): ["network"], ("nets",): ["networks"],
    ("nn",): ["neural", "network"], ("backprop",): ["backpropagation"],
    ("init",): ["initialization"], ("lr",): ["learning", "rate"],
    ("xavier",): ["glorot"], ("glorot",): ["xavier"], ("dead",): ["dying", "die"],
}
IZE_RE = re.compile(r"^(\w{3,}?)(i|y)([sz])(e|ed|es|ing|ation|ations|er|ers)$")


# ---------------------------------------------------------------------------------------------
# Queries and documents


def document(answer: Answer) -> tuple[str, ...]:
    """The row indexed for an answer: the columns of `COLUMNS`, then the slug."""
    return (answer.title, "\n".join(answer.aliases), "\n".join(answer.tags), answer.slug)


def digest(answer: Answer) -> str:
    """A digest of what is indexed of an answer: equal digests, nothing to re-index. Bump
    `INDEX_VERSION` when what is indexed changes."""
    return fields_digest(answer.slug, answer.title, answer.aliases, answer.tags)


def fields_digest(*fields: str | Sequence[str]) -> str:
    """blake2b of the fields, each text length-prefixed and each list prefixed by its length, so
    no two different sets of fields share the bytes hashed."""
    h = hashlib.blake2b(digest_size=16)

    def put(text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    for part in fields:
        if isinstance(part, str):
            put(part)
        else:
            h.update(len(part).to_bytes(8, "little"))
            for item in part:
                put(item)
    return h.hexdigest()


def _spellings(word: str) -> list[str]:
    """The word and its other spelling (centered/centred, normalize/normalise...)."""
    out = [word]
    if word in SPELLINGS:
        out.append(SPELLINGS[word])
    match = IZE_RE.match(word)
    if match:
        stem, vowel, letter, ending = match.groups()
        out.append(f"{stem}{vowel}{'s' if letter == 'z' else 'z'}{ending}")
    return out


def query_terms(query: object) -> list[str]:
    """The words of a free-text query worth searching for, lowercased, with synonyms, in order."""
    if not isinstance(query, str):
        query = "" if query is None else str(query)
    words = WORD_RE.findall(query[:MAX_QUERY_CHARS].casefold())
    terms: list[str] = []

    def add(word: str) -> None:
        if (word not in STOP_WORDS and len(word) <= MAX_TERM_CHARS and word not in terms
                and len(terms) < MAX_TERMS):
            terms.append(word)

    for i, word in enumerate(words):
        add(word)
        for key in ((word,), tuple(words[i:i + 2])):
            for synonym in SYNONYMS.get(key, ()):
                add(synonym)
    return terms


def match_expression(query: object) -> str | None:
    """A safe FTS5 query for free text: each term quoted (plus spelling variants), OR-ed.

    Every term is a quoted FTS5 string, so nothing the learner types (quotes, parentheses,
    AND/OR/NOT/NEAR, *, -, ^, column filters) is read as query syntax. None if no term is left.
    """
    phrases = []
    for term in query_terms(query):
        for spelling in _spellings(term):
            phrase = '"' + spelling.replace('"', '""') + '"'
            if phrase not in phrases:
                phrases.append(phrase)
    return " OR ".join(phrases) or None


# ---------------------------------------------------------------------------------------------
# The index


class SearchIndex:
    """The FTS5 index of the answers, in the SQLite file at `db_path` (shared with `Store`)."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.database = Database(db_path)
        self.connection = self.database.connection
        self._digests = Remembered(digest)
        if not self._schema_current(self.connection()):
            with self.database.write() as db:
                self._ensure_schema(db)

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str) -> str | None:
        try:
            row = db.execute("SELECT value FROM search_meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:        # no such table: a new file
            return None
        return row[0] if row else None

    def _schema_current(self, db: sqlite3.Connection) -> bool:
        return self._meta(db, "schema") == SCHEMA_ID

    def _ensure_schema(self, db: sqlite3.Connection) -> None:
        """Inside a write transaction: (re)create the tables if they are missing or outdated."""
        if self._schema_current(db):
            return
        db.execute(META_SQL)
        db.execute("DROP TABLE IF EXISTS search_fts")  # the whole-answer table of index versions 1-2
        db.execute("DROP TABLE IF EXISTS search_docs")
        db.execute("DROP TABLE IF EXISTS search_short")
        db.execute(FTS_SQL)
        db.execute(DOCS_SQL)
        db.execute("DELETE FROM search_meta")
        db.execute("INSERT INTO search_meta VALUES ('schema', ?)", (SCHEMA_ID,))
        db.execute("INSERT INTO search_meta VALUES ('padding', '0')")

    @staticmethod
    def _indexed(db: sqlite3.Connection) -> dict[str, str]:
        try:
            return dict(db.execute("SELECT slug, digest FROM search_docs"))
        except sqlite3.OperationalError:        # no such table: a new or outdated file
            return {}

    def rebuild(self, answers: Iterable[Answer]) -> bool:
        """Make the index hold exactly these answers; True if anything had to change.

        Only answers added, edited (in an indexed field) or removed since the last call are
        re-indexed. Several processes may call this at once on the same file: the first to get
        the write lock does the work, the others then find it done and return False.
        """
        wanted = {answer.slug: answer for answer in answers}
        digests = self._digests(wanted.values())
        db = self.connection()
        if self._schema_current(db) and self._indexed(db) == digests:
            return False
        with self.database.write():
            self._ensure_schema(db)
            indexed = self._indexed(db)
            if indexed == digests:                  # another process did it meanwhile
                return False
            stale = [slug for slug, old in indexed.items() if digests.get(slug) != old]
            fresh = sorted(slug for slug, new in digests.items() if indexed.get(slug) != new)
            for slug in stale:
                db.execute("DELETE FROM search_short WHERE rowid = (SELECT row FROM search_docs WHERE slug = ?)", (slug,))
                db.execute("DELETE FROM search_docs WHERE slug = ?", (slug,))
            for slug in fresh:
                row = db.execute(INSERT_SQL, document(wanted[slug])).lastrowid
                db.execute("INSERT INTO search_docs VALUES (?, ?, ?)", (slug, digests[slug], row))
            self._pad(db, PAD_ROWS_PER_ANSWER * len(digests))
            if len(stale) + len(fresh) > BULK_FRACTION * max(len(digests), 1):
                db.execute("INSERT INTO search_short (search_short) VALUES ('optimize')")
        return True

    def _pad(self, db: sqlite3.Connection, wanted: int) -> None:
        """Keep `wanted` empty padding rows (see `PAD_ROWS_PER_ANSWER`)."""
        have = int(self._meta(db, "padding") or 0)
        if wanted > have:
            db.executemany(INSERT_SQL, [("",) * len(COLUMNS) + (None,)] * (wanted - have))
        elif wanted < have:
            db.execute("DELETE FROM search_short WHERE rowid IN "
                       "(SELECT rowid FROM search_short WHERE slug IS NULL LIMIT ?)", (have - wanted,))
        db.execute("INSERT OR REPLACE INTO search_meta VALUES ('padding', ?)", (str(wanted),))

    def _ranked(self, table: str, weights: tuple[float, ...], question_weights: tuple[float, ...], columns: str,
                expression: str, limit: int) -> list[tuple[Any, ...]]:
        """`columns` and the score of the best `limit` rows of `table` for an FTS5 expression.

        The score is BM25 over the row plus `QUESTION_BOOST` times BM25 over its questions, both
        negated (FTS5's bm25() is better when lower). Every match is scored from the index alone
        and only the best few rows' stored columns are read: reading title and summary for every
        match was 5x the cost at 1,000 answers. Padding rows are empty (slug NULL): they match no
        query.
        """
        whole, questions = ", ".join(map(str, weights)), ", ".join(map(str, question_weights))
        sql = (f"SELECT {columns}, best.score FROM "
               f"(SELECT rowid, -bm25({table}, {whole}) - {QUESTION_BOOST} * bm25({table}, {questions})"
               f" AS score FROM {table} WHERE {table} MATCH ? ORDER BY score DESC LIMIT ?) AS best "
               f"JOIN {table} AS f ON f.rowid = best.rowid WHERE f.slug IS NOT NULL ORDER BY best.score DESC, f.slug")
        try:
            rows: list[tuple[Any, ...]] = self.connection().execute(sql, (expression, limit)).fetchall()
            return rows
        except sqlite3.Error:
            log.exception("search failed for the FTS5 query %r", expression[:200])
            return []

    def candidates(self, query: str, limit: int = 30) -> list[tuple[str, float]]:
        """The lexical stage of `kb.search.lookup`: [(slug, score)] of the best BM25 matches, best first.

        Only the first `MAX_LEXICAL_TERMS` words of the query are looked for: the semantic stage
        carries recall. Never raises, whatever the query; one without a searchable word gives [].
        """
        expression = match_expression(" ".join(query_terms(query)[:MAX_LEXICAL_TERMS]))
        if expression is None or limit <= 0:
            return []
        return [(slug, score) for slug, score in
                self._ranked("search_short", WEIGHTS, QUESTION_WEIGHTS, "f.slug", expression, limit)]

    def static_tables(self) -> dict[str, Any]:
        """What the static export's search (service/static/search.js) needs to rank exactly as
        `candidates` does, read from this index: the query rules (stop words, synonyms, spellings,
        limits), the weights, and per answer the stemmed terms of each short field as FTS5 counted
        them (search.js stems the query's words with FTS5's Porter rules).
        """
        db = self.connection()
        db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.search_short_terms USING fts5vocab(main, search_short, instance)")
        slugs = dict(db.execute("SELECT rowid, slug FROM search_short WHERE slug IS NOT NULL"))
        terms: dict[str, dict[str, list[int]]] = {slug: {} for slug in slugs.values()}
        lengths = {slug: [0] * len(COLUMNS) for slug in slugs.values()}
        for term, row, column, _ in db.execute("SELECT term, doc, col, offset FROM temp.search_short_terms"):
            slug = slugs.get(row)
            if slug is None:
                continue
            c = COLUMNS.index(column)
            counts = terms[slug].setdefault(term, [0] * len(COLUMNS))
            counts[c] += 1
            lengths[slug][c] += 1
        rows = db.execute("SELECT count(*) FROM search_short").fetchone()[0]
        return {
            "stop_words": sorted(STOP_WORDS), "synonyms": [[list(k), v] for k, v in SYNONYMS.items()],
            "spellings": SPELLINGS, "ize": IZE_RE.pattern, "max_query_chars": MAX_QUERY_CHARS,
            "max_terms": MAX_TERMS, "max_term_chars": MAX_TERM_CHARS, "max_lexical_terms": MAX_LEXICAL_TERMS,
            "weights": WEIGHTS, "question_weights": QUESTION_WEIGHTS, "question_boost": QUESTION_BOOST,
            "rows": rows,
            "answers": {slug: {"terms": terms[slug], "lengths": lengths[slug]} for slug in sorted(terms)},
        }

    def count(self) -> int:
        """The number of answers in the index."""
        try:
            count: int = self.connection().execute("SELECT count(*) FROM search_docs").fetchone()[0]
            return count
        except sqlite3.OperationalError:
            return 0
