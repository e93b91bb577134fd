# Every answer's snippets run in `kb audit` (a wrong claim fails there at file.md:line), and the
# notebook test runs them again; `pytest answers` runs them as test items too. The audit and
# `kb index` keep their results in .kb/kb.sqlite3 by content (evidence, audits, the answers'
# vectors), where the tests' real-answers database starts from: a second run redoes none of it.
# Two commands matter: `make run` (serve the knowledge base) and `make test` (everything CI runs).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup run test check bench soak deploy-local clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

# Runs answers that have no cached evidence, builds the search index, serves http://127.0.0.1:$(PORT)
# (`make run PORT=8000` where 5000 is taken, e.g. by macOS's AirPlay receiver).
PORT ?= 5000
run: setup
	$(PY) -m flask --app service run --host 127.0.0.1 --port $(PORT)

# Bytecode is written (to the gitignored __pycache__/) even where the shell sets PYTHONDONTWRITEBYTECODE:
# the suite starts ~200 Python processes, and each would compile the project's modules and the
# tests pytest rewrites again (~4.5 s of every xdist worker's start).
test: export PYTHONDONTWRITEBYTECODE =
test: setup
	$(PY) -m mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(PY) -m kb audit --quiet
	$(PY) -m kb index
	$(PY) -m pytest -n auto --durations=10 tests

# Benchmarks against baselines measured in the same run; writes bench/results.md and a plot.
bench: setup
	$(PY) -m pip install --disable-pip-version-check -q -r bench/requirements.txt
	$(PY) bench/run.py

# The load-with-faults test for longer than `make test` runs it.
soak: setup
	KB_SOAK_SECONDS=$${KB_SOAK_SECONDS:-60} $(PY) -m pytest tests/test_load.py -q -n 0 -p no:logging -s

# gunicorn behind nginx on loopback, as deployed (deploy/, docs/deploying.md); needs Debian's nginx.
deploy-local: setup
	deploy/serve-local.sh $${PORT:-8080}

check: setup
	$(PY) -m kb check

clean:
	rm -rf $(VENV) .kb
