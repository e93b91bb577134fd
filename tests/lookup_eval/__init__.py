"""The lookup evaluation set's data; the loader is `kb.search.evaluation` (re-exported here, so
`import lookup_eval` under pytest reads the same code as the fit and the benchmarks)."""
from kb.search.evaluation import (  # noqa: F401
    HERE,
    KEYS,
    NEW_SLUGS,
    OUT_OF_SCOPE,
    SPLITS,
    Entry,
    EvalSetError,
    known_slugs,
    load,
    resplit,
    source_address,
    split_of,
    thread_of,
)
