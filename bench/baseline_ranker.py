"""The service's lexical ranker from before the hybrid lookup, kept as a baseline ("today's ranker").

It was `SearchIndex.search` over a whole-answer FTS5 table (`search_fts`) in kb/search/index.py
until the lookup replaced it; the service no longer called it, yet every index rebuild paid for
cleaning and indexing every body. It lives here now, built in memory for the benchmark that
compares it with the lookup (bench/lookup.py). The query rules are the index's own
(`match_expression`), the body text the lookup's (`clean_body`).
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from kb.format.answer import Answer
from kb.search.index import PAD_ROWS_PER_ANSWER, QUESTION_BOOST, TOKENIZE, match_expression
from kb.search.lookup import clean_body

COLUMNS = ("title", "aliases", "summary", "tags", "body")       # then slug, UNINDEXED
# BM25 weight per column: a word said 30 times in the body would count as much as one in the
# title unless the body's weight is small.
WEIGHTS = (2.0, 2.0, 1.0, 1.0, 0.3)
QUESTION_WEIGHTS = (1.0, 1.0, 0.0, 0.0, 0.0)


class WholeAnswerRanker:
    """BM25 over the whole answer (title and aliases weighted most) plus BM25 over its questions."""

    def __init__(self, answers: Iterable[Answer], db_path: str = ":memory:") -> None:
        self.db = sqlite3.connect(db_path, check_same_thread=False)
        self.db.execute(f"CREATE VIRTUAL TABLE search_fts USING fts5({', '.join(COLUMNS)}, slug UNINDEXED, "
                        f"tokenize = '{TOKENIZE}')")
        insert = f"INSERT INTO search_fts VALUES ({', '.join('?' * (len(COLUMNS) + 1))})"
        rows = [(a.title, "\n".join(a.aliases), a.summary, "\n".join(a.tags), clean_body(a.body), a.slug)
                for a in answers]
        self.db.executemany(insert, rows)
        self.db.executemany(insert, [("",) * len(COLUMNS) + (None,)] * (PAD_ROWS_PER_ANSWER * len(rows)))
        self.db.execute("INSERT INTO search_fts (search_fts) VALUES ('optimize')")
        self.db.commit()

    def search(self, query: str, limit: int = 5) -> list[dict[str, Any]]:
        """The best answers for free text, best first: [{"slug", "title", "summary", "score"}]."""
        expression = match_expression(query)
        if expression is None or limit <= 0:
            return []
        whole, questions = ", ".join(map(str, WEIGHTS)), ", ".join(map(str, QUESTION_WEIGHTS))
        sql = ("SELECT f.slug, f.title, f.summary, best.score FROM "
               f"(SELECT rowid, -bm25(search_fts, {whole}) - {QUESTION_BOOST} * bm25(search_fts, {questions})"
               " AS score FROM search_fts WHERE search_fts MATCH ? ORDER BY score DESC LIMIT ?) AS best "
               "JOIN search_fts AS f ON f.rowid = best.rowid WHERE f.slug IS NOT NULL ORDER BY best.score DESC, f.slug")
        return [{"slug": slug, "title": title, "summary": summary, "score": score}
                for slug, title, summary, score in self.db.execute(sql, (expression, limit))]
