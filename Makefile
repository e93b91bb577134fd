# Two commands matter: `make run` (serve the knowledge base) and `make test` (everything CI runs).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: setup run test check clean

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

# Runs answers that have no cached evidence, builds the search index, serves http://127.0.0.1:5000
run: setup
	$(PY) -m flask --app service run --host 127.0.0.1 --port 5000

test: setup
	$(PY) -m pytest -n auto

check: setup
	$(PY) -m kb check

clean:
	rm -rf $(VENV) .kb
