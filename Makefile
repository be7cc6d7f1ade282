# Set-up and entry points. Both targets create .venv on first use and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint data

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Full Fashion-MNIST from Debian's package (the offline image benchmark); best effort.
data:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || \
	  ( (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
	    echo "note: could not install Debian's dataset-fashion-mnist (needs root); Fashion-MNIST runs will ask for the files" )

demo: $(STAMP)
	$(BIN)/e2abl-bench --suite demo --out results/demo

lint: $(STAMP)
	$(BIN)/ruff check e2abl_lightning tests
	$(BIN)/ruff format --check e2abl_lightning tests

test: $(STAMP) data lint
	@start=$$(date +%s); $(BIN)/python -m pytest -q; rc=$$?; \
	  echo "make test: pytest took $$(( $$(date +%s) - start )) s"; exit $$rc
