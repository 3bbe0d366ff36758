# WhyRec: `make run` opens the dashboard, `make test` runs the suite. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
DEMO ?= demo
DATA ?= $(DEMO)/data
MODEL ?= $(DEMO)/model
PORT ?= 8501

.PHONY: run test lint bench demo-data demo-model clean

$(STAMP): requirements.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(DATA)/events.csv: | $(STAMP)
	$(PY) -m data generate --out $(DATA)

demo-data: $(STAMP) $(DATA)/events.csv

run: demo-data
	WHYREC_DATA=$(DATA) WHYREC_MODEL=$(MODEL) $(PY) -m streamlit run app.py --server.port $(PORT) --server.headless true

test: $(DEV_STAMP)
	$(PY) -m pytest

lint: $(DEV_STAMP)
	$(PY) -m ruff check .

bench: $(DEV_STAMP) demo-data
	$(PY) -m bench.features

clean:
	rm -rf $(DEMO) .pytest_cache test-artifacts
