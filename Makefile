# Two commands do all set-up on a fresh machine:
#   make quickstart   fit, condition, sample, print summary statistics, save a pairplot
#   make test         run the test suite
#   make docs         build the documentation site (runs the examples) into docs/_build/html
# Both create .venv (Python >= 3.10) and install what they need into it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch: the range in pyproject.toml. TORCH_SPEC picks the build; the default is the small CPU
# build where the package index has it, else any release in the range.
TORCH_SPEC ?= torch==2.13.0

.PHONY: quickstart test docs bench-seed clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" || $(PY) -m pip install -q "torch>=2.2,<3"
	$(PY) -m pip install -q -e ".[test,plot]"
	touch $@

quickstart: $(VENV)/.installed
	$(PY) examples/quickstart.py

# one test process per core (pytest-xdist), one torch thread each (tests/conftest.py)
TEST_WORKERS ?= auto
test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

# warnings are errors; every example in examples/ but the two long ones runs during the build
docs: $(VENV)/.docs-installed
	rm -rf docs/_build docs/auto_examples docs/generated
	cd docs && $(abspath $(PY)) -m sphinx -b html -W --keep-going . _build/html

bench-seed: $(VENV)/.installed
	$(PY) benchmarks/seed_task.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info docs/_build docs/auto_examples docs/generated
