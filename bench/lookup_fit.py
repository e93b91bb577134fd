"""Fit the lookup's weights on the dev split and write kb/search/weights.json: `kb.search.fit`.

    .venv/bin/python bench/lookup_fit.py            # the same as: .venv/bin/python -m kb.search.fit
    .venv/bin/python bench/lookup_fit.py --report   # the figures of the current weights, dev and test
"""
from kb.search.fit import main

if __name__ == "__main__":
    raise SystemExit(main())
