"""Lookup: a learner's free-text question to the answers that answer it, best first.

- `index`: `SearchIndex`, the FTS5 index of the answers' questions and tags (the lexical stage,
  `candidates`), and the tables the static export's `search.js` ranks with.
- `embeddings`: the pinned MiniLM model (onnxruntime) and the embedding cache in SQLite.
- `lookup`: `Lookup`, which ranks the lexical candidates and every answer's embedded sections
  together and calibrates the score (the "is this confident?" threshold).
"""
