# gradfleet: `make demo` and `make test` do all the set-up; both are safe to run again.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DATA   := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test lint format protos bench bench-recovery bench-load bench-scaling clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	@echo "==> creating the virtual environment in $(VENV) and installing gradfleet with its dev tools"
	@# A venv made without Debian's python3-venv has a python but no pip: make it again.
	$(PY) -m pip --version >/dev/null 2>&1 || python3 -m venv --clear $(VENV) \
	  || { echo 'python3 -m venv failed: on Debian, apt-get install python3-venv' >&2; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

data: $(STAMP)
	@if [ -f $(DATA)/train-images-idx3-ubyte.gz ]; then \
	  echo "==> Fashion-MNIST found in $(DATA)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "==> installing Debian's dataset-fashion-mnist"; \
	  apt-get install -y --no-install-recommends dataset-fashion-mnist >/dev/null \
	    || (apt-get update -qq && apt-get install -y --no-install-recommends dataset-fashion-mnist >/dev/null) \
	    || $(VENV)/bin/gradfleet fetch-data --dest data/fashion-mnist; \
	else \
	  echo "==> downloading Fashion-MNIST into data/fashion-mnist (checksums verified)"; \
	  $(VENV)/bin/gradfleet fetch-data --dest data/fashion-mnist; \
	fi

demo: setup
	@bash scripts/demo.sh

test: setup
	@echo "==> running the test suite"
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

protos: $(STAMP)
	$(PY) protos/generate.py

bench: setup
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/e2e.py

bench-recovery: setup
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/recovery.py

bench-load: setup
	$(PY) bench/load.py

bench-scaling: setup
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/scaling.py

clean:
	rm -rf $(VENV) state/demo .pytest_cache
