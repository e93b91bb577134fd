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

run: setup
	$(PY) -m kb check

test: setup
	$(PY) -m pytest -n auto

check: setup
	$(PY) -m kb check

clean:
	rm -rf $(VENV) .kb
