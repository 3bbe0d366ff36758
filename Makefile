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
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1

.PHONY: run test lint bench demo clean FORCE

$(STAMP): requirements.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(DEV_STAMP): $(STAMP) requirements-dev.txt requirements-dist.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The demo shop and its model are built once, then reused; they are rebuilt when the shop's generator, the
# behaviour features (a model trained on other features is refused when it loads) or the training options change.
# --epochs 15 is where early stopping ends the demo's stage 1 today (best epoch 12, docs/first-run.md): the same
# model, with a bound on the build that the progress page counts against.
DEMO_TRAIN := --no-id-embedding --lexical-text --epochs 15

$(DEMO)/data/events.csv: data/synthetic.py | $(STAMP)
	$(PY) -m data generate --out $(DEMO)/data

# The training options, in a file rewritten only when they change.
$(DEMO)/.train-options: FORCE
	@mkdir -p $(DEMO) && echo '$(DEMO_TRAIN)' | cmp -s - $@ || echo '$(DEMO_TRAIN)' > $@

# The model is trained in $(TRAINING) and moved to $(DEMO)/model once whole, so the dashboard never opens a
# half-trained one. An interrupted build (Ctrl-C) resumes where it stopped; a change to what the model is built
# from starts the training afresh (the stamp's recipe clears what an earlier build left).
# Meanwhile the best stage-1 checkpoint is copied to $(PREVIEW) after 20 s of stage 1, and `make run`'s dashboard
# serves it under a banner until the model is in place.
TRAINING := $(DEMO)/model-training
PREVIEW := $(DEMO)/model-preview
$(DEMO)/.training-inputs: $(DEMO)/data/events.csv data/features.py model/recommender.py model/train.py $(DEMO)/.train-options
	rm -rf $(TRAINING) $(PREVIEW)
	touch $@

$(DEMO)/model/config.json: $(DEMO)/.training-inputs | $(STAMP)
	$(PY) -m model train --data $(DEMO)/data --out $(TRAINING) --resume --progress-file $(DEMO)/model.progress.json \
		--preview $(PREVIEW) $(DEMO_TRAIN)
	rm -rf $(DEMO)/model $(PREVIEW) && mv $(TRAINING) $(DEMO)/model

# The Insights page's default sample, computed once beside the model so that the page's first visit is instant.
# The int8 query encoder (model.quantize) is derived here too, into the encoder cache, for the same reason.
$(DEMO)/model/insights.json: $(DEMO)/model/config.json explain/insights.py | $(STAMP)
	$(PY) -m model quantize --model $(DEMO)/model
	$(PY) -m explain insights --model $(DEMO)/model --data $(DEMO)/data --out $@

# The explanations of the users the dashboard opens on and a seeded sample, each one's top 10, computed once into
# the explanation cache (explain/cache.py: $$WHYREC_CACHE, else $(DEMO)/explanation-cache) so that their first visit
# is instant. After the Insights sample: the pages come first. Redone (quickly: what is cached is read, not computed)
# when the code that computes an explanation changes, since the cache keys by it.
PRECOMPUTED := $(DEMO)/.explanations-precomputed
$(PRECOMPUTED): $(DEMO)/model/insights.json $(wildcard data/*.py model/*.py explain/*.py) | $(STAMP)
	$(PY) -m explain precompute --model $(DEMO)/model --data $(DEMO)/data --sample 20 --k 10 --checks 3
	touch $@

demo: $(STAMP) $(DEMO)/data/events.csv $(DEMO)/model/config.json $(DEMO)/model/insights.json $(PRECOMPUTED)

# The background build's make, named so that `make -n run` (which runs every line that names $(MAKE)) only prints.
BUILD = $(MAKE)
SERVE := $(PY) -m streamlit run app.py --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

ifeq ($(MODEL),$(DEMO)/model)
# A demo model to build (first run, or a changed recipe) trains in the background while the dashboard starts; its
# pages show the training's progress and turn into the dashboard when the model is in place, and the Insights
# page's sample and the cached explanations are computed after it. Ctrl-C stops both, and the next `make run`
# resumes the training.
run: $(STAMP) $(DEMO)/data/events.csv $(DEMO)/.training-inputs
	@trainer=; \
	if [ ! $(DEMO)/model/config.json -nt $(DEMO)/.training-inputs ] || [ ! -f $(DEMO)/model/insights.json ] \
			|| [ ! -f $(PRECOMPUTED) ]; then \
		[ $(DEMO)/model/config.json -nt $(DEMO)/.training-inputs ] || rm -rf $(DEMO)/model; \
		echo "building the demo in the background (output: $(DEMO)/training.log)"; \
		$(BUILD) --no-print-directory $(PRECOMPUTED) > $(DEMO)/training.log 2>&1 & trainer=$$!; \
	fi; \
	trap '[ -z "$$trainer" ] || kill -TERM $$trainer 2>/dev/null; wait' EXIT INT TERM; \
	WHYREC_DATA=$(DATA) WHYREC_MODEL=$(MODEL) $(SERVE)
else
# Your own model (make run MODEL=... DATA=...): nothing of the demo is built.
run: $(STAMP)
	WHYREC_DATA=$(DATA) WHYREC_MODEL=$(MODEL) $(SERVE)
endif

test: $(DEV_STAMP)
	$(PY) -m pytest

lint: $(DEV_STAMP)
	$(PY) -m ruff check .

bench: $(DEV_STAMP) demo
	$(PY) -m bench.features
	$(PY) -m bench.latency --model $(DEMO)/model
	$(PY) -m bench.quality
	$(PY) -m bench.explain --model $(DEMO)/model
	$(PY) -m bench.explain_truth --model $(DEMO)/model --data $(DEMO)/data
	$(PY) -m bench.realtime --demo-model $(DEMO)/model

clean:
	rm -rf $(DEMO) .pytest_cache test-artifacts
