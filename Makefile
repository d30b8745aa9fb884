# BioVerse: `make demo` installs everything and runs the main job; `make test` runs the tests.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo install test test-unit test-integration bench lint clean checkov

demo: install
	$(BIN)/bioverse demo

install: $(VENV)/.installed

# torch first, pinned: the CPU wheel on this kind of machine; an unpinned torch pulls CUDA.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $@

test: install
	$(BIN)/python -m pytest --durations=30 tests/unit tests/integration

test-unit: install
	$(BIN)/python -m pytest tests/unit

test-integration: install
	$(BIN)/python -m pytest tests/integration

bench: install
	$(BIN)/python benchmarks/dp_overhead.py
	$(BIN)/python benchmarks/federation_wall.py
	$(BIN)/python benchmarks/serving_risk.py
	$(BIN)/python benchmarks/api_predictions.py
	$(BIN)/python benchmarks/bulk_scoring.py
	$(BIN)/python benchmarks/feature_lookup.py
	$(BIN)/python benchmarks/validation_report.py
	$(BIN)/python benchmarks/vision_training.py
	$(BIN)/python benchmarks/vision_serving.py
	$(BIN)/python benchmarks/quality_vs_epsilon.py

# ruff (rules in pyproject.toml) and the import layering (import-linter); CI runs both first.
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# checkov (the deployables' security scan, tests/integration/test_deployables_scan.py) pins packages
# that conflict with the project's constraints: it gets a virtual environment of its own, inside .venv.
CHECKOV_VENV ?= $(VENV)/checkov
checkov: $(CHECKOV_VENV)/.installed

$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q checkov==3.3.30
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
