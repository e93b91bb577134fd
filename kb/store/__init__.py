"""What the SQLite file holds: the evidence record, its cache, and the search gaps.

- `evidence`: the evidence record (TypedDicts), its cache key, status and public JSON shape.
- `database`: one SQLite file (WAL, corrupt-file recovery, cross-process lock); the search
  index (`kb.search`) keeps its tables in the same file.
- `cache`: `Store`, the evidence cache keyed by the answer's cache key, figures apart.
- `gaps`: questions learners asked that had no confident answer (`kb gaps`).
"""
